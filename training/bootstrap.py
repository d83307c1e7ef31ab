"""Confidence intervals of AUROCs by resampling PATIENTS (not images): images of one patient are
correlated, so resampling images would make the intervals look narrower than they are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.metrics import auroc, nanmean


@dataclass(frozen=True)
class PatientIntervals:
    """95 % percentile intervals: per finding (K, 2) and of the mean AUROC (NaN where undefined)."""

    per_finding: np.ndarray
    mean: tuple[float, float]
    resamples: int
    seed: int


def _groups(patients: Sequence[str]) -> list[np.ndarray]:
    """Row indices of each patient, in order of first appearance."""
    rows: dict[str, list[int]] = {}
    for i, patient in enumerate(patients):
        rows.setdefault(patient, []).append(i)
    return [np.asarray(r) for r in rows.values()]


def patient_bootstrap(
    targets: np.ndarray,
    scores: np.ndarray,
    patients: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    min_patients_per_class: int = 2,
) -> PatientIntervals:
    """Resample patients with replacement (all images of a drawn patient come along) and take the
    percentile interval of each finding's AUROC and of their mean. A finding gets no interval when
    fewer than `min_patients_per_class` patients have it (or lack it): with one positive patient
    the resamples only vary the negatives and the interval would look falsely narrow. The mean is
    over the findings whose AUROC is defined in the full split and in the resample."""
    targets = np.asarray(targets)
    scores = np.asarray(scores, dtype=np.float64)
    groups = _groups(patients)
    n_findings = targets.shape[1]
    usable = []
    for k in range(n_findings):
        positive_patients = sum(bool(targets[g, k].any()) for g in groups)
        negative_patients = sum(bool((targets[g, k] == 0).any()) for g in groups)
        usable.append(min(positive_patients, negative_patients) >= min_patients_per_class)
    defined = [not np.isnan(auroc(targets[:, k], scores[:, k])) for k in range(n_findings)]
    rng = np.random.default_rng(seed)
    values = np.full((n_resamples, n_findings), np.nan)
    means = np.full(n_resamples, np.nan)
    for r in range(n_resamples):
        rows = np.concatenate([groups[i] for i in rng.integers(0, len(groups), size=len(groups))])
        for k in range(n_findings):
            if defined[k]:
                values[r, k] = auroc(targets[rows, k], scores[rows, k])
        means[r] = nanmean([values[r, k] for k in range(n_findings) if defined[k]])
    tail = (1.0 - confidence) / 2.0 * 100.0
    per_finding = np.full((n_findings, 2), np.nan)
    for k in range(n_findings):
        column = values[:, k][~np.isnan(values[:, k])]
        if usable[k] and len(column) >= max(10, n_resamples // 10):
            per_finding[k] = np.percentile(column, [tail, 100.0 - tail])
    finite = means[~np.isnan(means)]
    mean = (float("nan"), float("nan"))
    if len(finite) >= max(10, n_resamples // 10):
        low, high = np.percentile(finite, [tail, 100.0 - tail])
        mean = (float(low), float(high))
    return PatientIntervals(per_finding, mean, n_resamples, seed)
