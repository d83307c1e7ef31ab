"""Fitting the card's calibration and choosing thresholds, on VALIDATION predictions only; and
measuring calibration (expected calibration error, Brier score, reliability diagram) on test.

Calibration (per finding, Platt scaling on the network's logit, see `shared.calibration`):
- a finding with at least `MIN_POSITIVES` validation positives gets its own slope and intercept,
  fitted by maximum likelihood with the slope bounded to [MIN_SLOPE, MAX_SLOPE] (positive, so the
  ranking of images and the AUROC are kept; MIN_SLOPE, nearly the base rate for every image, when
  validation shows no signal for it);
- any other finding keeps the model's ranking with the median slope of the fitted findings (how
  over- or under-confident this network is in general; 1 when none was fitted) and an intercept that
  makes its mean validation probability equal its prevalence in the training split.

Thresholds (per finding, on the calibrated validation probabilities; `threshold_rule` says it in
words for the card):
- with at least `MIN_POSITIVES` validation positives: the threshold with the best F1 among those
  that flag between half and double the finding's training prevalence of the validation images;
- otherwise (or when no threshold flags such a share): the one that flags the finding's training
  prevalence of the validation images (a prevalence quantile);
- always within [THRESHOLD_MIN, THRESHOLD_MAX], never 0 or 1.
So the number of positive findings per study stays near what the labels have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import brentq, minimize

from shared.calibration import PLATT, logit, sigmoid
from shared.findings import FINDINGS
from training.metrics import binary_counts

MIN_POSITIVES = 5
MIN_SLOPE = 0.01
MAX_SLOPE = 10.0
THRESHOLD_MIN = 0.001
THRESHOLD_MAX = 0.999
RATE_BAND = (0.5, 2.0)  # flagged share of validation images, as multiples of training prevalence
ECE_BINS = 10
ROUND = 4


def threshold_rule() -> str:
    low, high = RATE_BAND
    return (
        f"validation split, calibrated probabilities: best F1 among thresholds flagging {low:g}x-{high:g}x the "
        f"finding's training prevalence, for findings with at least {MIN_POSITIVES} validation positives; "
        f"otherwise the threshold flagging the training prevalence (prevalence quantile); clipped to "
        f"[{THRESHOLD_MIN}, {THRESHOLD_MAX}]"
    )


def fit_platt(y: np.ndarray, raw: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood (slope, intercept) of sigmoid(a * logit(raw) + b) for 0/1 labels y,
    slope bounded to [MIN_SLOPE, MAX_SLOPE]."""
    z = logit(raw)
    y = np.asarray(y, dtype=np.float64)

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = params
        s = a * z + b
        nll = float(np.sum(np.logaddexp(0.0, s) - y * s))
        residual = sigmoid(s) - y
        return nll, np.array([np.sum(residual * z), np.sum(residual)])

    prevalence = np.clip(y.mean(), 1e-3, 1 - 1e-3)
    start = np.array([1.0, float(np.log(prevalence / (1 - prevalence)) - np.mean(z))])
    result = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=[(MIN_SLOPE, MAX_SLOPE), (None, None)])
    return float(result.x[0]), float(result.x[1])


def prior_intercept(raw: np.ndarray, slope: float, prevalence: float) -> float:
    """The intercept b with mean(sigmoid(slope * logit(raw) + b)) == prevalence."""
    z = slope * logit(raw)
    return float(brentq(lambda b: float(np.mean(sigmoid(z + b))) - prevalence, -500.0, 500.0))


def training_prevalence(train_targets: np.ndarray) -> np.ndarray:
    """Per-finding share of positives in the training split, never exactly 0 (add-half smoothing
    for a finding with no training positive)."""
    targets = np.asarray(train_targets, dtype=np.float64)
    n = len(targets)
    return np.maximum(targets.sum(axis=0), 0.5) / max(n, 1)


def fit_calibration(val_targets: np.ndarray, val_raw: np.ndarray, prevalence: np.ndarray) -> dict[str, Any]:
    """The card's `calibration` block (see the module docstring)."""
    fitted: dict[str, tuple[float, float]] = {}
    for k, label in enumerate(FINDINGS):
        y = val_targets[:, k]
        if MIN_POSITIVES <= y.sum() <= len(y) - MIN_POSITIVES:
            fitted[label] = fit_platt(y, val_raw[:, k])
    shared_slope = float(np.median([a for a, _ in fitted.values()])) if fitted else 1.0
    per_finding: dict[str, dict[str, Any]] = {}
    for k, label in enumerate(FINDINGS):
        if label in fitted:
            slope, intercept = fitted[label]
            source = "Platt scaling fitted on validation"
        else:
            slope = shared_slope
            intercept = prior_intercept(val_raw[:, k], slope, float(prevalence[k]))
            source = (f"fewer than {MIN_POSITIVES} validation positives: median fitted slope, intercept "
                      "matching the training prevalence")
        per_finding[label] = {"slope": round(slope, 6), "intercept": round(intercept, 6), "source": source}
    return {
        "method": PLATT,
        "formula": "sigmoid(slope * logit(p) + intercept), p = the network's sigmoid output",
        "fitted_on": "validation split",
        "min_positives": MIN_POSITIVES,
        "per_finding": per_finding,
    }


def _flag_rate(scores: np.ndarray, threshold: float) -> float:
    return float(np.mean(scores >= threshold))


def prevalence_threshold(scores: np.ndarray, prevalence: float) -> float:
    """A threshold flagging about `prevalence` of `scores`; when ties would flag far more (a constant
    score), just above the tied value so that they are not all flagged."""
    threshold = float(np.quantile(scores, 1.0 - prevalence, method="higher"))
    if _flag_rate(scores, threshold) > RATE_BAND[1] * prevalence:
        above = scores[scores > threshold]
        # the next float32 (the service compares float32 probabilities with float32 thresholds)
        threshold = float(above.min()) if len(above) else float(np.nextafter(np.float32(threshold), np.float32(1)))
    return threshold


def choose_threshold(y: np.ndarray, scores: np.ndarray, prevalence: float) -> tuple[float, str]:
    """One finding's threshold by the rule of the module docstring, and where it came from."""
    y = np.asarray(y).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    threshold, source = None, ""
    if y.sum() >= MIN_POSITIVES:
        best = -1.0
        low, high = RATE_BAND[0] * prevalence, RATE_BAND[1] * prevalence
        for candidate in np.unique(scores)[::-1]:  # descending: ties keep the highest threshold
            rate = _flag_rate(scores, candidate)
            if not low <= rate <= high:
                continue
            f1 = binary_counts(y, scores >= candidate).f1
            if f1 > max(best, 0.0):  # an F1 of 0 finds nothing: the prevalence rule below is better
                best, threshold = f1, float(candidate)
        if threshold is not None:
            source = f"validation best F1 ({best:.3f}) within {RATE_BAND[0]:g}x-{RATE_BAND[1]:g}x training prevalence"
    if threshold is None:
        threshold = prevalence_threshold(scores, prevalence)
        why = (f"fewer than {MIN_POSITIVES} validation positives" if y.sum() < MIN_POSITIVES
               else "no threshold in the band has F1 above 0")
        source = f"{why}: flags the training prevalence ({prevalence:.3f}) of validation"
    return float(np.clip(threshold, THRESHOLD_MIN, THRESHOLD_MAX)), source


def choose_thresholds(
    val_targets: np.ndarray, val_scores: np.ndarray, prevalence: np.ndarray
) -> tuple[dict[str, float], dict[str, str]]:
    thresholds: dict[str, float] = {}
    sources: dict[str, str] = {}
    for k, label in enumerate(FINDINGS):
        thresholds[label], sources[label] = choose_threshold(val_targets[:, k], val_scores[:, k], float(prevalence[k]))
    return thresholds, sources


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE with equal-width bins: sum over bins of (share of predictions) x |mean p - share positive|."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    index = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            total += in_bin.mean() * abs(p[in_bin].mean() - y[in_bin].mean())
    return float(total)


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))


def calibration_metrics(targets: np.ndarray, raw: np.ndarray, calibrated: np.ndarray) -> dict[str, Any]:
    """ECE and Brier score before (network outputs) and after calibration, pooled over all findings
    and images, and per finding; plus the share of extreme probabilities."""

    def summary(p: np.ndarray) -> dict[str, float]:
        return {
            "ece": round(expected_calibration_error(targets, p), ROUND),
            "brier": round(brier_score(targets, p), ROUND),
            "share_below_0.01_or_above_0.99": round(float(np.mean((p < 0.01) | (p > 0.99))), ROUND),
        }

    per_finding = {
        label: {
            "ece_before": round(expected_calibration_error(targets[:, k], raw[:, k]), ROUND),
            "ece_after": round(expected_calibration_error(targets[:, k], calibrated[:, k]), ROUND),
            "brier_before": round(brier_score(targets[:, k], raw[:, k]), ROUND),
            "brier_after": round(brier_score(targets[:, k], calibrated[:, k]), ROUND),
        }
        for k, label in enumerate(FINDINGS)
    }
    return {"bins": ECE_BINS, "before": summary(raw), "after": summary(calibrated), "per_finding": per_finding}


def positives_per_study(targets: np.ndarray, scores: np.ndarray, thresholds: dict[str, float]) -> dict[str, float]:
    """Mean number of findings per image: in the labels, and flagged at the thresholds."""
    cut = np.asarray([thresholds[label] for label in FINDINGS], dtype=np.float32)  # as the service compares
    return {
        "labels": round(float(np.asarray(targets).sum(axis=1).mean()), ROUND),
        "flagged": round(float((np.asarray(scores) >= cut).sum(axis=1).mean()), ROUND),
    }


def reliability_png(targets: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, path: Path, title: str) -> Path:
    """Reliability diagram, pooled over all findings: observed share positive against mean predicted
    probability per bin, before and after calibration, with the number of predictions per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.asarray(targets, dtype=np.float64).ravel()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(6, 7.5), dpi=100, height_ratios=[3, 1], sharex=True)
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    for name, p, style in (("network output", raw, "o--"), ("calibrated", calibrated, "s-")):
        p = np.asarray(p, dtype=np.float64).ravel()
        index = np.minimum((p * ECE_BINS).astype(int), ECE_BINS - 1)
        xs, ys, counts = [], [], []
        for b in range(ECE_BINS):
            in_bin = index == b
            counts.append(int(in_bin.sum()))
            if in_bin.any():
                xs.append(p[in_bin].mean())
                ys.append(y[in_bin].mean())
        ece = expected_calibration_error(y, p)
        top.plot(xs, ys, style, label=f"{name} (ECE {ece:.3f})")
        bottom.bar(edges[:-1] + (0.01 if name == "calibrated" else 0.0), counts, width=0.045, align="edge",
                   label=name, alpha=0.7)
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    top.set_ylabel("observed share positive")
    top.set_title(title, fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    bottom.set_yscale("log")
    bottom.set_xlabel("predicted probability (10 equal-width bins, all findings pooled)")
    bottom.set_ylabel("predictions")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path

