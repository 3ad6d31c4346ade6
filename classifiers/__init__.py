"""PII detectors behind one small interface, used by `pgproxy scan` (and meant for run-time
sampling and masking): Presidio's pattern recognizers run offline on a blank spaCy pipeline
(or an installed spaCy model), column-name hints, and custom recognizers from YAML.

    from classifiers import Classifier
    evidence = Classifier().classify(values, "contact")
"""

from classifiers.classify import ENTITY_TAGS, Classifier, EntityRule, Evidence
from classifiers.hints import name_hints

__all__ = ["ENTITY_TAGS", "Classifier", "EntityRule", "Evidence", "name_hints"]
