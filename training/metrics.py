"""Evaluation measures on top of scikit-learn: AUROC, ROC curve and precision / recall / F1 that
give NaN instead of raising where a split holds one class only, plus what scikit-learn lacks:
Youden's J threshold, a percentile bootstrap interval of the AUROC, and IoBB for localisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm

_BOOTSTRAP_CELLS = 2_000_000  # resampled rows ranked at once, so memory stays bounded on large splits


def _binary(y_true: np.ndarray) -> np.ndarray:
    y = np.asarray(y_true).astype(np.float64).ravel()
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    return y.astype(bool)


def _one_class(y: np.ndarray) -> bool:
    return bool(y.all() or not y.any())


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when the labels hold only one class."""
    y = _binary(y_true)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(s) != len(y):
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    return float("nan") if _one_class(y) else float(skm.roc_auc_score(y, s))


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates, thresholds), predicting positive when
    score >= threshold; the first point is (0, 0) at threshold +inf. Empty arrays when undefined."""
    y = _binary(y_true)
    if _one_class(y):
        empty = np.zeros(0)
        return empty, empty, empty
    fpr, tpr, thresholds = skm.roc_curve(y, np.asarray(scores, dtype=np.float64).ravel(), drop_intermediate=False)
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
    """Confusion counts and the scores at one threshold; a score with a zero denominator is NaN."""

    tp: int
    fp: int
    fn: int
    tn: int
    precision: float
    recall: float
    f1: float


def binary_counts(y_true: np.ndarray, predicted: np.ndarray) -> BinaryCounts:
    y = _binary(y_true)
    p = _binary(predicted)
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, p, labels=[False, True]).ravel())
    precision, recall, f1, _ = skm.precision_recall_fscore_support(y, p, average="binary", zero_division=np.nan)
    return BinaryCounts(tp, fp, fn, tn, float(precision), float(recall), float(f1))


def micro_scores(targets: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    """Micro-averaged (precision, recall, F1) over all findings of (N, findings) 0/1 arrays."""
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        _binary(targets).reshape(np.shape(targets)),
        _binary(predicted).reshape(np.shape(predicted)),
        average="micro",
        zero_division=np.nan,
    )
    return float(precision), float(recall), float(f1)


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
    chunk = max(1, _BOOTSTRAP_CELLS // len(y))
    values = np.concatenate(
        [
            resampled_aurocs(y, s, rng.integers(0, len(y), size=(min(chunk, n_resamples - start), len(y))))
            for start in range(0, n_resamples, chunk)
        ]
    )
    values = values[~np.isnan(values)]
    if len(values) < max(10, n_resamples // 10):
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def resampled_aurocs(y: np.ndarray, s: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The AUROC of each resample (one row of indices into y, s each), NaN where a resample holds
    one class. All rows at once, as the Mann-Whitney U over average ranks: scikit-learn scores one
    resample at a time at about 2 ms each, which made a 1000-resample interval over 14 findings
    cost half a minute."""
    labels = y[rows]
    n_pos = labels.sum(axis=1).astype(np.float64)
    n_neg = labels.shape[1] - n_pos
    rank_sums = np.where(labels, rankdata(s[rows], axis=1), 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (rank_sums - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), values, np.nan)


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
