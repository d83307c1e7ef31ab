"""Evaluation maths in NumPy: AUROC (Mann-Whitney, ties counted half), ROC curve, bootstrap
confidence intervals, Youden's J threshold, precision / recall / F1, and IoBB for localisation.

Undefined values are NaN, never an exception: a finding with no positives (or no negatives) in a
split has no AUROC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def _binary(y_true: np.ndarray) -> np.ndarray:
    y = np.asarray(y_true).astype(np.float64).ravel()
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    return y.astype(bool)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank."""
    return rankdata(values, method="average")


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when the labels hold only one class."""
    y = _binary(y_true)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(s) != len(y):
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates, thresholds), predicting positive when
    score >= threshold; the first point is (0, 0) at threshold +inf. Empty arrays when undefined."""
    y = _binary(y_true)
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        empty = np.zeros(0)
        return empty, empty, empty
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    last_of_value = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tps = np.cumsum(y_sorted)[last_of_value]
    fps = (last_of_value + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thresholds = np.r_[np.inf, s_sorted[last_of_value]]
    return fpr, tpr, thresholds


def youden_threshold(y_true: np.ndarray, scores: np.ndarray, default: float = 0.5) -> float:
    """The score threshold maximising Youden's J = sensitivity + specificity - 1 (ties: the
    highest such threshold). `default` when the labels hold only one class."""
    fpr, tpr, thresholds = roc_curve(y_true, scores)
    if len(thresholds) == 0:
        return float(default)
    j = tpr - fpr
    j[0] = -np.inf  # +inf predicts nothing positive; never an operating point
    return float(thresholds[int(np.argmax(j))])


@dataclass(frozen=True)
class BinaryCounts:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else float("nan")


def binary_counts(y_true: np.ndarray, predicted: np.ndarray) -> BinaryCounts:
    y = _binary(y_true)
    p = _binary(predicted)
    return BinaryCounts(
        tp=int(np.sum(y & p)), fp=int(np.sum(~y & p)), fn=int(np.sum(y & ~p)), tn=int(np.sum(~y & ~p))
    )


def bootstrap_auroc_ci(
    y_true: np.ndarray,
    scores: np.ndarray,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    min_per_class: int = 2,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC over resampled images (fixed seed, so the same
    inputs give the same interval). Resamples with one class only are skipped. (NaN, NaN) when the
    AUROC is undefined, when a class has fewer than `min_per_class` images (with one positive the
    resamples only vary the negatives, and the interval would look falsely narrow), or when too few
    resamples are usable."""
    y = _binary(y_true)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if np.isnan(auroc(y, s)) or min(int(y.sum()), int((~y).sum())) < min_per_class:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values: list[float] = []
    for _ in range(n_resamples):
        rows = rng.integers(0, len(y), size=len(y))
        value = auroc(y[rows], s[rows])
        if not np.isnan(value):
            values.append(value)
    if len(values) < max(10, n_resamples // 10):
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def iobb(truth: tuple[float, float, float, float], detected: tuple[float, float, float, float]) -> float:
    """Intersection over the detected box's area (Wang et al. 2017); boxes are (x, y, w, h)."""
    tx, ty, tw, th = truth
    dx, dy, dw, dh = detected
    if dw <= 0 or dh <= 0:
        return 0.0
    ix = max(0.0, min(tx + tw, dx + dw) - max(tx, dx))
    iy = max(0.0, min(ty + th, dy + dh) - max(ty, dy))
    return ix * iy / (dw * dh)


def nanmean(values: list[float]) -> float:
    """Mean of the defined values; NaN when none is defined (no warning)."""
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")
