"""One interface for PII detection: values of a column (and its name) in, Evidence out.

    classifier = Classifier()
    evidence = classifier.classify(["ada@example.com", "grace@example.org"], "contact")
    evidence.entities      # {'EMAIL_ADDRESS': 1.0}
    evidence.suggested     # frozenset({'pii', 'pii.email'})

How evidence becomes tags. Each value counts once per entity found in it, so an
entity's share is the part of the sampled (non-empty) values holding one.

- Strong entities carry their own proof (an email's domain has a public suffix, a
  card number passes Luhn, an IBAN its checksum): they suggest tags when at least
  STRONG_MIN_SHARE of the values hold one (and at least two values do), or when
  any value does and the column's name hints at them. A free-text column where
  one ticket in ten quotes an email address is PII.
- Weak entities (phone numbers, SSNs, IP addresses, dates, person-shaped names,
  …) look like many things that are not personal data: order numbers, SKUs,
  version strings, timestamps. They suggest tags only when the column's name hints
  at them and at least WEAK_MIN_SHARE of the values hold one.
- A name hint with no values at all (an empty column) suggests tags, with low
  confidence: nothing contradicts it, and the data will come.

Nothing here keeps or returns a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from presidio_analyzer import AnalyzerEngine, EntityRecognizer

from classifiers.engine import LANGUAGE, build_analyzer
from classifiers.hints import name_hints

STRONG_MIN_SHARE = 0.05
WEAK_MIN_SHARE = 0.3
HIGH_SHARE = 0.8
MAX_VALUE_CHARS = 1000  # longer values are classified by their first MAX_VALUE_CHARS characters
MIN_SCORE = 0.05  # Presidio's "very weak" patterns (0.01: any 9 alphanumerics as a licence) are noise

ENTITY_TAGS: dict[str, tuple[str, ...]] = {
    "EMAIL_ADDRESS": ("pii", "pii.email"),
    "PHONE_NUMBER": ("pii", "pii.phone"),
    "US_SSN": ("pii", "pii.ssn", "sensitive"),
    "CREDIT_CARD": ("pii", "pii.credit_card", "sensitive"),
    "IBAN_CODE": ("pii", "pii.iban", "sensitive"),
    "IP_ADDRESS": ("pii", "pii.ip_address"),
    "PERSON": ("pii", "pii.name"),
    "LOCATION": ("pii", "pii.address"),
    "DATE_OF_BIRTH": ("pii", "pii.birth_date"),
    "US_PASSPORT": ("pii", "pii.passport", "sensitive"),
    "US_DRIVER_LICENSE": ("pii", "pii.driver_license", "sensitive"),
    "US_BANK_NUMBER": ("pii", "pii.bank_account", "sensitive"),
}
STRONG_ENTITIES = frozenset({"EMAIL_ADDRESS", "CREDIT_CARD", "IBAN_CODE"})
# What a recognizer reports -> the entity whose rule and name hints apply to it.
_HINTED_AS = {"DATE_TIME": "DATE_OF_BIRTH"}


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a column's sampled values and its name say. Holds no value."""

    column: str
    sampled: int  # non-empty values classified
    entities: dict[str, float]  # entity -> share of the sampled values holding at least one
    name_hints: frozenset[str]  # entities the column's name suggests
    suggested: frozenset[str]  # tags
    confidence: str  # "high", "medium", "low", or "none" when nothing is suggested
    because: tuple[str, ...] = field(default=())  # the entities behind the suggestion

    def to_json(self) -> dict[str, object]:
        return {"entities": {k: round(v, 4) for k, v in sorted(self.entities.items())},
                "name_hint": sorted(self.name_hints), "suggested": sorted(self.suggested),
                "confidence": self.confidence, "sampled": self.sampled}


@dataclass(frozen=True, slots=True)
class EntityRule:
    """How one entity becomes tags (custom recognizers add and override these)."""

    tags: tuple[str, ...]
    strong: bool


class Classifier:
    """Presidio (offline) plus column-name hints, with custom recognizers when given.

    Loading takes a few seconds (spaCy, Presidio's patterns); build one and reuse it.
    """

    def __init__(self, recognizers: Sequence[EntityRecognizer] = (), *,
                 rules: Mapping[str, EntityRule] | None = None,
                 hint_phrases: Mapping[str, Iterable[str]] | None = None,
                 use_installed_model: bool = True) -> None:
        self.analyzer: AnalyzerEngine = build_analyzer(recognizers, use_installed_model=use_installed_model)
        self.rules: dict[str, EntityRule] = {
            entity: EntityRule(tags, entity in STRONG_ENTITIES) for entity, tags in ENTITY_TAGS.items()}
        self.rules.update(rules or {})
        self.hint_phrases = {entity: tuple(phrases) for entity, phrases in (hint_phrases or {}).items()}
        self.entities = sorted({e for r in self.analyzer.registry.recognizers for e in r.supported_entities})

    @staticmethod
    def is_strong(entity: str) -> bool:
        """Whether a built-in entity's values alone suggest tags (see the module docstring)."""
        return entity in STRONG_ENTITIES

    def entities_in(self, value: str) -> frozenset[str]:
        """The entities Presidio finds in one value (DATE_TIME and the like included)."""
        results = self.analyzer.analyze(value[:MAX_VALUE_CHARS], language=LANGUAGE, entities=self.entities,
                                        score_threshold=MIN_SCORE)
        return frozenset(result.entity_type for result in results)

    def classify(self, values: Sequence[str | None], column_name: str) -> Evidence:
        """Evidence for one column from a sample of its values (None and blank values are skipped)."""
        sampled, counts = self.count(values)
        return self.evidence(column_name, sampled, counts)

    def count(self, values: Iterable[str | None]) -> tuple[int, dict[str, int]]:
        """How many values were classified (None and blank ones are skipped), and how many of
        them hold each entity. A value repeated is classified once."""
        counts: dict[str, int] = {}
        seen: dict[str, frozenset[str]] = {}
        sampled = 0
        for value in values:
            if value is None or not value.strip():
                continue
            sampled += 1
            found = seen.get(value)
            if found is None:
                found = seen[value] = self.entities_in(value)
            for entity in found:
                counts[entity] = counts.get(entity, 0) + 1
        return sampled, counts

    def evidence(self, column_name: str, sampled: int, counts: Mapping[str, int]) -> Evidence:
        """Evidence from counts (`count`'s, or several samples' added up) and the column's name."""
        shares = {entity: count / sampled for entity, count in counts.items()} if sampled else {}
        return self.weigh(column_name, sampled, counts, shares, name_hints(column_name, self.hint_phrases))

    def weigh(self, column_name: str, sampled: int, counts: Mapping[str, int], shares: dict[str, float],
              hints: frozenset[str]) -> Evidence:
        """Turn counts and hints into suggested tags (the rules in the module docstring)."""
        tags: set[str] = set()
        because: list[str] = []
        confidence = "none"
        rank = {"none": 0, "low": 1, "medium": 2, "high": 3}
        for entity, share in sorted(shares.items()):
            key = _HINTED_AS.get(entity, entity)  # a date is a birth date only where the name says so
            rule = self.rules.get(key)
            if rule is None:
                continue
            hinted = key in hints
            if rule.strong:
                ok = (share >= STRONG_MIN_SHARE and counts[entity] >= 2) or hinted
                level = "high" if hinted or share >= HIGH_SHARE else "medium"
            else:
                ok = hinted and share >= WEAK_MIN_SHARE
                level = "high" if share >= HIGH_SHARE else "medium"
            if ok:
                tags.update(rule.tags)
                because.append(entity)
                confidence = max(confidence, level, key=rank.__getitem__)
        if sampled == 0:
            for entity in sorted(hints):
                rule = self.rules.get(entity)
                if rule is not None:
                    tags.update(rule.tags)
                    because.append(entity)
                    confidence = max(confidence, "low", key=rank.__getitem__)
        return Evidence(column_name, sampled, shares, hints, frozenset(tags), confidence, tuple(because))
