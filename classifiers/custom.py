"""Custom recognizers from a YAML file, validated like the rest of pgproxy's config::

    recognizers:
      - entity: EMPLOYEE_ID            # UPPER_SNAKE_CASE
        patterns: ['\\bEMP-\\d{6}\\b']   # regular expressions (Presidio's `regex` syntax), or
                                       # [{regex: ..., score: 0.8}]
        context: [employee, staff]     # words that, in a column's name, hint at this entity
        tags: [pii, pii.employee_id]   # what a column holding it is tagged
        strong: true                   # values alone suffice (default); false: needs a name hint
    entity_tags:                       # tags for built-in entities, replacing the defaults
      PHONE_NUMBER: [pii, pii.phone, contact]

An error raises ConfigError as ``file:line: dotted.key: problem``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import regex
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer

from classifiers.classify import ENTITY_TAGS, Classifier, EntityRule
from classifiers.engine import LANGUAGE
from pgproxy.catalog import _tags
from pgproxy.config import _At, _Loader, read_yaml

_ENTITY = re.compile(r"[A-Z][A-Z0-9_]*")
# The flags Presidio's registry compiles patterns with.
_FLAGS = regex.DOTALL | regex.MULTILINE | regex.IGNORECASE


@dataclass(frozen=True, slots=True)
class CustomRecognizers:
    """A validated recognizers file: Presidio recognizers, tag rules and name-hint phrases."""

    source: Path
    recognizers: tuple[EntityRecognizer, ...]
    rules: dict[str, EntityRule]
    hint_phrases: dict[str, tuple[str, ...]]

    def classifier(self, *, use_installed_model: bool = True) -> Classifier:
        return Classifier(self.recognizers, rules=self.rules, hint_phrases=self.hint_phrases,
                          use_installed_model=use_installed_model)


def load_recognizers(path: Path) -> CustomRecognizers:
    """Read and validate a recognizers file; raise ConfigError naming file, line and key."""
    root = read_yaml(path, "recognizers file", "a mapping with 'recognizers' and/or 'entity_tags'")
    loader = _Loader(path)
    found = loader.mapping(_At(root, "", root.start_mark.line + 1), ("recognizers", "entity_tags"))
    recognizers: list[EntityRecognizer] = []
    rules: dict[str, EntityRule] = {}
    phrases: dict[str, tuple[str, ...]] = {}
    seen: dict[str, int] = {}
    for item in loader.items(found["recognizers"]) if "recognizers" in found else []:
        fields = loader.mapping(item, ("entity", "patterns", "context", "tags", "strong", "score"),
                                required=("entity", "patterns", "tags"))
        entity = _entity(loader, fields["entity"])
        if entity in seen:
            loader.fail(fields["entity"], f"{entity} is defined twice (first at line {seen[entity]}); "
                                          "give one recognizer all its patterns")
        seen[entity] = fields["entity"].line
        default_score = loader.number(fields["score"], 0, inclusive=False) if "score" in fields else 0.8
        if default_score > 1:
            loader.fail(fields["score"], f"expected a score from 0 to 1, got {default_score:g}")
        patterns = [_pattern(loader, at, entity, index, default_score)
                    for index, at in enumerate(loader.items(fields["patterns"]))]
        if not patterns:
            loader.fail(fields["patterns"], "expected at least one pattern")
        context = [loader.string(at) for at in loader.items(fields["context"])] if "context" in fields else []
        recognizers.append(PatternRecognizer(supported_entity=entity, patterns=patterns, context=context,
                                             name=f"custom:{entity}", supported_language=LANGUAGE))
        strong = loader.boolean(fields["strong"]) if "strong" in fields else True
        rules[entity] = EntityRule(tuple(sorted(_tags(loader, fields["tags"]))), strong)
        phrases[entity] = tuple(context)
    if "entity_tags" in found:
        for entity, at in loader.entries(found["entity_tags"]).items():
            if entity not in ENTITY_TAGS and entity not in rules:
                loader.fail(at, f"unknown entity {entity!r}; built in: {', '.join(sorted(ENTITY_TAGS))}")
            strong = rules[entity].strong if entity in rules else Classifier.is_strong(entity)
            rules[entity] = EntityRule(tuple(sorted(_tags(loader, at))), strong)
    return CustomRecognizers(path, tuple(recognizers), rules, phrases)


def _entity(loader: _Loader, at: _At) -> str:
    name = loader.string(at)
    if not _ENTITY.fullmatch(name):
        loader.fail(at, f"invalid entity name {name!r}: use UPPER_SNAKE_CASE (e.g. EMPLOYEE_ID)")
    return name


def _pattern(loader: _Loader, at: _At, entity: str, index: int, default_score: float) -> Pattern:
    score = default_score
    if isinstance(loader.value(at), str):
        text_at = at
    else:
        fields = loader.mapping(at, ("regex", "score"), required=("regex",))
        text_at = fields["regex"]
        if "score" in fields:
            score = loader.number(fields["score"], 0, inclusive=False)
            if score > 1:
                loader.fail(fields["score"], f"expected a score from 0 to 1, got {score:g}")
    text = loader.string(text_at)
    try:
        compiled = regex.compile(text, flags=_FLAGS)
    except regex.error as exc:
        loader.fail(text_at, f"invalid regular expression: {exc}")
    if compiled.search(""):
        loader.fail(text_at, "the regular expression matches empty text, so it would match every value")
    return Pattern(name=f"{entity.lower()}_{index}", regex=text, score=score)
