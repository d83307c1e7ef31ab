"""Per-finding probability calibration stored in a bundle's card and applied wherever the model's
probabilities come out (the service's `Diagnoser` and `xray evaluate`), with NumPy only.

The card's `calibration` is `{}` (none: the network's sigmoid outputs are served as they are) or
`{"method": "platt", "per_finding": {label: {"slope": a, "intercept": b}, ...}, ...}`: the served
probability is `sigmoid(a * logit(p) + b)` where `p` is the network's output. Temperature scaling is
the special case `b = 0, a = 1 / T`. Slopes are positive, so the ranking of images (and so the
AUROC) never changes; a slope near 0 serves nearly the finding's base rate to every image: the
model showed no usable signal for it on validation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PLATT = "platt"
# Outputs are clipped to [_LOW, 1 - _HIGH] before the logit (in float64): float32 outputs reach
# down to 1e-45 and up to 1 - 6e-8, and a wider clip would tie images that the network still ranks.
_LOW = 1e-45
_HIGH = 1e-15


class CalibrationError(ValueError):
    """A card's calibration block that this code cannot apply; the message says what is wrong."""


def logit(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _LOW, 1.0 - _HIGH)
    return np.log(p) - np.log1p(-p)


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(values, dtype=np.float64)))


def platt(probabilities: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """sigmoid(slope * logit(p) + intercept), elementwise, float64."""
    return sigmoid(slope * logit(probabilities) + intercept)


def coefficients(calibration: Mapping[str, Any], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(slopes, intercepts) in label order, or None when the card has no calibration."""
    if not calibration:
        return None
    validate_calibration(calibration, labels)
    per_finding = calibration["per_finding"]
    slopes = np.asarray([float(per_finding[label]["slope"]) for label in labels])
    intercepts = np.asarray([float(per_finding[label]["intercept"]) for label in labels])
    return slopes, intercepts


def apply_calibration(raw: np.ndarray, calibration: Mapping[str, Any], labels: Sequence[str]) -> np.ndarray:
    """The served probabilities (N, K) float32 from the network's outputs (N, K)."""
    raw = np.asarray(raw, dtype=np.float32)
    fitted = coefficients(calibration, labels)
    if fitted is None:
        return raw
    slopes, intercepts = fitted
    return sigmoid(slopes * logit(raw) + intercepts).astype(np.float32)


def validate_calibration(calibration: Mapping[str, Any], labels: Sequence[str]) -> None:
    """Refuse a calibration block that is not Platt scaling with a finite, positive slope and a
    finite intercept for every label."""
    if not calibration:
        return
    if calibration.get("method") != PLATT:
        raise CalibrationError(f"calibration method {calibration.get('method')!r} is not supported; expected 'platt'")
    per_finding = calibration.get("per_finding")
    if not isinstance(per_finding, Mapping) or set(per_finding) != set(labels):
        raise CalibrationError("calibration must give a slope and an intercept for each of the findings")
    for label in labels:
        entry = per_finding[label]
        try:
            slope, intercept = float(entry["slope"]), float(entry["intercept"])
        except (KeyError, TypeError, ValueError):
            raise CalibrationError(f"calibration of {label}: needs numeric 'slope' and 'intercept'") from None
        if not (np.isfinite(slope) and np.isfinite(intercept)) or slope <= 0:
            raise CalibrationError(f"calibration of {label}: slope must be finite and > 0, intercept finite")
