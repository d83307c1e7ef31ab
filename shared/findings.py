"""The 14 ChestX-ray14 findings in one canonical order.

'No Finding' is not a class: a study has no finding when no finding passes its threshold.
"""

from __future__ import annotations

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NO_FINDING = "No Finding"

DISPLAY_NAMES: dict[str, str] = {name: name.replace("_", " ") for name in FINDINGS}

# How urgently a positive finding needs a radiologist (1.0 = most urgent). Acute, possibly
# life-threatening findings first; chronic findings last.
URGENCY: dict[str, float] = {
    "Pneumothorax": 1.0,
    "Edema": 0.9,
    "Consolidation": 0.8,
    "Pneumonia": 0.8,
    "Mass": 0.7,
    "Effusion": 0.7,
    "Cardiomegaly": 0.5,
    "Atelectasis": 0.5,
    "Infiltration": 0.5,
    "Nodule": 0.5,
    "Emphysema": 0.3,
    "Pleural_Thickening": 0.3,
    "Fibrosis": 0.2,
    "Hernia": 0.2,
}


def index_of(label: str) -> int:
    """Position of a finding in the canonical order; a clear error for an unknown label."""
    try:
        return FINDINGS.index(label)
    except ValueError:
        raise ValueError(f"unknown finding {label!r}; expected one of {', '.join(FINDINGS)}") from None


def parse_nih_labels(field: str) -> tuple[str, ...]:
    """Parse NIH's `Finding Labels` field ('Effusion|Mass', 'No Finding') into canonical labels."""
    labels = tuple(part.strip() for part in field.split("|") if part.strip())
    if labels == (NO_FINDING,):
        return ()
    for label in labels:
        index_of(label)
    return tuple(sorted(labels, key=index_of))
