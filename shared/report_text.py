"""A short plain-language summary of one study for a non-specialist, built by fixed rules from its
findings (no language model): one sentence per finding above its threshold, in words a patient
can read with the medical name in brackets, how sure the software is, and always that it is an aid,
not a diagnosis.

The probabilities are the served (calibrated) ones, so "about 40 in 100" means that, on the test
images, about 40 in 100 images given that probability had the finding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from shared.findings import DISPLAY_NAMES, FINDINGS

PLAIN_WORDS: dict[str, str] = {
    "Atelectasis": "part of a lung that is not fully filled with air",
    "Cardiomegaly": "a heart that is larger than usual",
    "Consolidation": "an area of lung filled with fluid or other material instead of air",
    "Edema": "fluid in the lungs",
    "Effusion": "fluid around the lungs",
    "Emphysema": "damage to the small air sacs of the lungs",
    "Fibrosis": "scarring of the lung tissue",
    "Hernia": "part of an organ from the belly pushing up into the chest",
    "Infiltration": "a hazy area in the lungs, as from fluid, infection or inflammation",
    "Mass": "a larger spot in the chest that needs a closer look",
    "Nodule": "a small spot in a lung that needs a closer look",
    "Pleural_Thickening": "thickening of the lining around the lungs",
    "Pneumonia": "a lung infection (pneumonia)",
    "Pneumothorax": "air between the lung and the chest wall, which can make a lung collapse",
}
# The medical name shown in brackets, where it differs from the finding's display name.
MEDICAL_TERMS: dict[str, str] = {"Effusion": "pleural effusion", "Edema": "pulmonary edema"}
# Upper bounds of the calibrated probability for each wording of how sure the software is.
CERTAINTY: tuple[tuple[float, str], ...] = (
    (0.25, "the software is not sure: it is more likely absent than present"),
    (0.5, "the software is unsure: it could go either way"),
    (0.75, "the software finds it more likely than not"),
    (1.01, "the software finds it likely"),
)
AID_NOT_DIAGNOSIS = (
    "This summary is an aid, not a diagnosis: a doctor must look at the X-ray and decide what it means."
)
NOTHING_FOUND = (
    "The software found no signs above its thresholds for any of the 14 conditions it looks for. "
    "This does not rule them out."
)
NOT_FRONTAL = (
    "The image does not look like a frontal chest X-ray ({reason}), so the software's results for it are "
    "unreliable and are not used to rank it as urgent."
)
UNTRAINED = (
    "Warning: the software that produced these results is untrained (random settings). "
    "Its results mean nothing and must be ignored."
)


class FindingLike(Protocol):
    """What the summary reads from a finding (a stored `Finding` row or a `FindingResult`)."""

    label: str
    probability: float
    positive: bool


def certainty(probability: float) -> str:
    """How sure the software is, in words, for a calibrated probability."""
    for bound, words in CERTAINTY:
        if probability < bound:
            return words
    return CERTAINTY[-1][1]


def chance_in_100(probability: float) -> str:
    """'about 35 in 100', never 0 or 100 (the software is never certain)."""
    value = min(99, max(1, round(probability * 100)))
    return f"about {value} in 100"


def finding_sentence(finding: FindingLike) -> str:
    plain = PLAIN_WORDS.get(finding.label, DISPLAY_NAMES.get(finding.label, finding.label))
    medical = MEDICAL_TERMS.get(finding.label, DISPLAY_NAMES.get(finding.label, finding.label)).lower()
    name = f"({medical})" if medical not in plain.lower() else ""
    subject = f"{plain} {name}".strip()
    return (f"The software found signs that may suggest {subject}. Estimated chance: "
            f"{chance_in_100(finding.probability)}; {certainty(finding.probability)}.")


def plain_summary(findings: Iterable[FindingLike], model_trained: bool | None = True,
                  not_frontal_reason: str | None = None) -> str:
    """The summary: the positive findings, most probable first, each with its uncertainty; or that
    nothing was found; then always AID_NOT_DIAGNOSIS. First UNTRAINED for an untrained model and
    NOT_FRONTAL for an image that is not a frontal chest X-ray (`shared.frontal`)."""
    order = {label: i for i, label in enumerate(FINDINGS)}
    positives = sorted((f for f in findings if f.positive),
                       key=lambda f: (-f.probability, order.get(f.label, len(order))))
    sentences = [UNTRAINED] if model_trained is False else []
    if not_frontal_reason:
        sentences.append(NOT_FRONTAL.format(reason=not_frontal_reason))
    sentences += [finding_sentence(f) for f in positives] or [NOTHING_FOUND]
    sentences.append(AID_NOT_DIAGNOSIS)
    return " ".join(sentences)
