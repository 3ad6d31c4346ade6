"""Presidio, built to run offline.

Presidio's defaults reach for the network twice: its spaCy engine downloads
``en_core_web_lg`` when it is missing, and its email recognizer asks tldextract,
whose default extractor fetches the Public Suffix List on first use. Here the NLP
engine loads an installed spaCy model package if there is one (then spaCy's NER
finds PERSON and LOCATION too) and otherwise ``spacy.blank("en")`` (tokens only),
and the email recognizer uses a tldextract extractor that reads only the suffix
list snapshot bundled with tldextract. Only pattern recognizers are loaded, plus,
without a model, a shape check for person names (two to four capitalized words).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Sequence
from functools import cache

import spacy
import tldextract
from presidio_analyzer import AnalyzerEngine, EntityRecognizer, LocalRecognizer, RecognizerRegistry, RecognizerResult
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    DateRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UrlRecognizer,
    UsBankRecognizer,
    UsLicenseRecognizer,
    UsPassportRecognizer,
    UsSsnRecognizer,
)

log = logging.getLogger("classifiers.engine")

LANGUAGE = "en"
# Installed model packages, best first; none is ever downloaded.
MODEL_PACKAGES = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm", "en_core_web_trf")


@cache
def offline_tld_extractor() -> tldextract.TLDExtract:
    """A tldextract extractor that never fetches: no suffix-list URLs, no cache directory, so it
    reads the snapshot bundled with the tldextract package."""
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's email recognizer, its domain check made with the bundled suffix list."""

    def validate_result(self, pattern_text: str) -> bool:
        return bool(offline_tld_extractor()(pattern_text).fqdn)


class DigitGatedPhoneRecognizer(PhoneRecognizer):
    """Presidio's phone recognizer (libphonenumber over several regions, the slowest recognizer),
    skipped for text with fewer than 7 digits, which holds no phone number it would accept."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
                ) -> list[RecognizerResult]:
        if sum(char.isdigit() for char in text) < 7:
            return []
        results: list[RecognizerResult] = super().analyze(text, entities, nlp_artifacts)  # type: ignore[arg-type]
        return results


class NoContextEnhancer(ContextAwareEnhancer):
    """Leaves scores as the recognizers gave them. A column's evidence is weighed by its name
    and by how many of its values match (classifiers.classify), not by words around a match."""

    def __init__(self) -> None:
        super().__init__(context_similarity_factor=0, min_score_with_context_similarity=0, context_prefix_count=0,
                         context_suffix_count=0)

    def enhance_using_context(self, text: str, raw_results: list[RecognizerResult], nlp_artifacts: NlpArtifacts,
                              recognizers: list[EntityRecognizer], context: list[str] | None = None
                              ) -> list[RecognizerResult]:
        return raw_results


class OfflineSpacyNlpEngine(SpacyNlpEngine):
    """Presidio's spaCy engine that loads only what is installed: the first model package of
    MODEL_PACKAGES found, else a blank English pipeline. Never downloads."""

    def __init__(self, model: str | None = None) -> None:
        super().__init__(models=[{"lang_code": LANGUAGE, "model_name": model or "blank"}])
        self.model_name: str | None = model

    def load(self) -> None:
        if self.model_name is not None:
            self.nlp = {LANGUAGE: spacy.load(self.model_name)}  # type: ignore[assignment]
        else:
            self.nlp = {LANGUAGE: spacy.blank(LANGUAGE)}  # type: ignore[assignment]


def installed_model() -> str | None:
    """The spaCy model package to use, if one is installed (looked up locally)."""
    for name in MODEL_PACKAGES:
        if importlib.util.find_spec(name) is not None:
            return name
    return None


_UPPER = "A-ZÀ-ÖØ-Þ"
_LOWER = "a-zß-öø-ÿ"
_NAME_SHAPE = re.compile(rf"\s*[{_UPPER}][{_LOWER}'\u2019-]+(?:\s+[{_UPPER}][{_LOWER}'\u2019.-]*){{1,3}}\s*")


class PersonNameShapeRecognizer(LocalRecognizer):
    """Without an NER model: a whole value of two to four capitalized words ("Ada Lovelace") is
    shaped like a person's name. Weak on its own; it counts only beside a name hint."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["PERSON"], name="PersonNameShapeRecognizer",
                         supported_language=LANGUAGE)

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
                ) -> list[RecognizerResult]:
        if "PERSON" in entities and len(text) <= 80 and _NAME_SHAPE.fullmatch(text):
            return [RecognizerResult("PERSON", 0, len(text), 0.3)]
        return []


def build_analyzer(extra: Sequence[EntityRecognizer] = (), *, model: str | None = None,
                   use_installed_model: bool = True) -> AnalyzerEngine:
    """An AnalyzerEngine with the pattern recognizers, `extra` ones (custom recognizers) and,
    when a spaCy model package is installed, spaCy's NER."""
    if model is None and use_installed_model:
        model = installed_model()
    engine = OfflineSpacyNlpEngine(model)
    recognizers: list[EntityRecognizer] = [
        OfflineEmailRecognizer(), DigitGatedPhoneRecognizer(), CreditCardRecognizer(), IbanRecognizer(),
        UsSsnRecognizer(), IpRecognizer(), UrlRecognizer(), DateRecognizer(), UsPassportRecognizer(),
        UsLicenseRecognizer(), UsBankRecognizer(), *extra,
    ]
    if model is not None:
        recognizers.append(SpacyRecognizer(supported_entities=["PERSON", "LOCATION"]))
    else:
        recognizers.append(PersonNameShapeRecognizer())
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[LANGUAGE])
    log.debug("presidio analyzer with %s", model or "a blank spaCy pipeline")
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=[LANGUAGE],
                          context_aware_enhancer=NoContextEnhancer())
