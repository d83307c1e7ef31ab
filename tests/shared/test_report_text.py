"""The plain-language summary: a plain phrase and the medical name per positive finding, most
probable first, the uncertainty in words and numbers, and always "an aid, not a diagnosis"."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from shared.findings import FINDINGS
from shared.report_text import (
    AID_NOT_DIAGNOSIS,
    NOTHING_FOUND,
    PLAIN_WORDS,
    UNTRAINED,
    certainty,
    chance_in_100,
    plain_summary,
)


@dataclass
class F:
    label: str
    probability: float
    positive: bool


def _findings(**positives: float) -> list[F]:
    return [F(label, positives.get(label, 0.02), label in positives) for label in FINDINGS]


def test_every_finding_has_plain_words() -> None:
    assert set(PLAIN_WORDS) == set(FINDINGS)


def test_positive_finding_in_plain_words_with_its_medical_name_and_uncertainty() -> None:
    text = plain_summary(_findings(Effusion=0.42))
    assert ("The software found signs that may suggest fluid around the lungs (pleural effusion). "
            "Estimated chance: about 42 in 100; the software is unsure: it could go either way.") in text
    assert text.endswith(AID_NOT_DIAGNOSIS) and "an aid, not a diagnosis" in text
    assert "Cardiomegaly" not in text and "larger than usual" not in text  # negatives are not listed


def test_most_probable_first_and_no_repeated_name() -> None:
    text = plain_summary(_findings(Nodule=0.3, Pneumothorax=0.8, Pneumonia=0.55))
    assert text.index("(pneumothorax)") < text.index("lung infection (pneumonia)") < text.index("(nodule)")
    assert "(pneumonia) (pneumonia)" not in text


def test_nothing_found_says_it_does_not_rule_out() -> None:
    text = plain_summary(_findings())
    assert text == f"{NOTHING_FOUND} {AID_NOT_DIAGNOSIS}"
    assert "does not rule them out" in text


def test_untrained_model_is_said_first() -> None:
    assert plain_summary(_findings(Mass=0.9), model_trained=False).startswith(UNTRAINED)
    assert UNTRAINED not in plain_summary(_findings(Mass=0.9), model_trained=None)


@pytest.mark.parametrize(("p", "words", "chance"), [
    (0.001, "more likely absent than present", "about 1 in 100"),
    (0.3, "could go either way", "about 30 in 100"),
    (0.6, "more likely than not", "about 60 in 100"),
    (0.999, "finds it likely", "about 99 in 100"),
])
def test_uncertainty_words_and_numbers(p: float, words: str, chance: str) -> None:
    assert words in certainty(p) and chance_in_100(p) == chance
