"""Evaluation maths against scikit-learn and hand-worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from training.metrics import (
    auroc,
    binary_counts,
    bootstrap_auroc_ci,
    iobb,
    nanmean,
    roc_curve,
    youden_threshold,
)


def _random_cases(count: int, seed: int = 7):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(3, 80))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        scores = np.round(rng.random(n), int(rng.integers(1, 4)))  # rounding makes ties
        yield y, scores


def test_auroc_matches_sklearn_with_ties() -> None:
    checked = 0
    for y, scores in _random_cases(300):
        assert auroc(y, scores) == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)
        checked += 1
    assert checked > 250


def test_auroc_known_values() -> None:
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1], [0.2, 0.9]) == 1.0
    assert auroc([0, 1], [0.9, 0.2]) == 0.0
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auroc_undefined_is_nan_not_an_error() -> None:
    assert math.isnan(auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(auroc([1, 1], [0.1, 0.2]))
    assert math.isnan(auroc([], []))
    assert all(math.isnan(v) for v in bootstrap_auroc_ci(np.zeros(5), np.arange(5.0)))
    with pytest.raises(ValueError, match="0 or 1"):
        auroc([0, 2], [0.1, 0.2])


def test_roc_curve_matches_sklearn() -> None:
    for y, scores in _random_cases(100, seed=3):
        fpr, tpr, thresholds = roc_curve(y, scores)
        sk_fpr, sk_tpr, sk_thresholds = skm.roc_curve(y, scores, drop_intermediate=False)
        np.testing.assert_allclose(fpr, sk_fpr)
        np.testing.assert_allclose(tpr, sk_tpr)
        np.testing.assert_allclose(thresholds[1:], sk_thresholds[1:])


def test_precision_recall_f1_match_sklearn() -> None:
    rng = np.random.default_rng(11)
    for _ in range(100):
        y = rng.integers(0, 2, 50)
        predicted = rng.integers(0, 2, 50)
        counts = binary_counts(y, predicted)
        assert counts.precision == pytest.approx(skm.precision_score(y, predicted, zero_division=np.nan))
        assert counts.recall == pytest.approx(skm.recall_score(y, predicted, zero_division=np.nan))
        assert counts.f1 == pytest.approx(skm.f1_score(y, predicted, zero_division=np.nan))
        assert counts.tp + counts.fp + counts.fn + counts.tn == 50


def test_precision_without_predicted_positives_is_nan() -> None:
    counts = binary_counts([1, 0, 1], [0, 0, 0])
    assert math.isnan(counts.precision)
    assert counts.recall == 0.0 and counts.f1 == 0.0


def test_youden_threshold_known_example() -> None:
    # positives 0.35, 0.8; negatives 0.1, 0.4.
    # t=0.8: TPR .5 FPR 0 (J .5); t=0.4: TPR .5 FPR .5 (J 0); t=0.35: TPR 1, FPR .5 (J .5);
    # t=0.1: J 0. Tie between 0.8 and 0.35 -> the higher threshold.
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)
    # A perfectly separable case: the lowest positive score.
    assert youden_threshold([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.9]) == pytest.approx(0.6)
    # sensitivity 2/3 + specificity 3/3 at 0.7 beats sensitivity 3/3 + specificity 1/3 at 0.2
    y = [0, 0, 0, 1, 1, 1]
    s = [0.1, 0.3, 0.5, 0.2, 0.7, 0.9]
    assert youden_threshold(y, s) == pytest.approx(0.7)
    fpr, tpr, thresholds = skm.roc_curve(y, s)
    assert thresholds[np.argmax(tpr - fpr)] == pytest.approx(0.7)


def test_youden_threshold_default_when_one_class() -> None:
    assert youden_threshold([0, 0, 0], [0.1, 0.9, 0.3], default=0.5) == 0.5


def test_bootstrap_interval_is_deterministic_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 120)
    scores = y * 0.3 + rng.random(120)
    low, high = bootstrap_auroc_ci(y, scores, n_resamples=500, seed=1)
    assert (low, high) == bootstrap_auroc_ci(y, scores, n_resamples=500, seed=1)
    assert low < auroc(y, scores) < high
    assert 0.0 <= low < high <= 1.0
    wider = bootstrap_auroc_ci(y[:30], scores[:30], n_resamples=500, seed=1)
    assert wider[1] - wider[0] > high - low


def test_iobb() -> None:
    assert iobb((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iobb((0, 0, 10, 10), (5, 5, 10, 10)) == pytest.approx(0.25)
    assert iobb((0, 0, 100, 100), (10, 10, 5, 5)) == 1.0  # detected box inside the truth
    assert iobb((0, 0, 5, 5), (0, 0, 10, 10)) == pytest.approx(0.25)
    assert iobb((0, 0, 5, 5), (50, 50, 5, 5)) == 0.0


def test_nanmean() -> None:
    assert nanmean([0.5, float("nan"), 0.7]) == pytest.approx(0.6)
    assert math.isnan(nanmean([float("nan")]))


def test_no_interval_from_a_single_positive() -> None:
    y = np.array([1] + [0] * 30)
    scores = np.linspace(0, 1, 31)
    assert not math.isnan(auroc(y, scores))
    assert all(math.isnan(v) for v in bootstrap_auroc_ci(y, scores))
    y[1] = 1
    assert not any(math.isnan(v) for v in bootstrap_auroc_ci(y, scores))
