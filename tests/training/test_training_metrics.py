"""Evaluation measures on hand-worked examples, and where they are undefined."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    auroc,
    binary_counts,
    bootstrap_auroc_ci,
    iobb,
    micro_scores,
    nanmean,
    resampled_aurocs,
    roc_curve,
    youden_threshold,
)

NAN = float("nan")


def test_auroc_known_values() -> None:
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1], [0.2, 0.9]) == 1.0
    assert auroc([0, 1], [0.9, 0.2]) == 0.0
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # positives 0.2, 0.9 against negatives 0.2, 0.1: the tied pair counts half -> 3.5 / 4
    assert auroc([0, 1, 1, 0], [0.2, 0.2, 0.9, 0.1]) == pytest.approx(0.875)


def test_auroc_undefined_is_nan_not_an_error() -> None:
    assert math.isnan(auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(auroc([1, 1], [0.1, 0.2]))
    assert math.isnan(auroc([], []))
    assert all(math.isnan(v) for v in bootstrap_auroc_ci(np.zeros(5), np.arange(5.0)))


def test_bad_labels_and_lengths_are_errors() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="0 or 1"):
        binary_counts([0, 1], [0, 3])
    with pytest.raises(ValueError, match="2 labels but 3 scores"):
        auroc([0, 1], [0.1, 0.2, 0.3])


def test_roc_curve_known_points() -> None:
    fpr, tpr, thresholds = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    # tied scores make one point, not two
    fpr, tpr, thresholds = roc_curve([0, 1, 1, 0], [0.2, 0.2, 0.9, 0.1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.2, 0.1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])


def test_roc_curve_with_one_class_is_empty() -> None:
    assert all(len(a) == 0 for a in roc_curve([1, 1, 1], [0.2, 0.5, 0.9]))


def test_binary_counts_known_values() -> None:
    counts = binary_counts([1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0, 0])
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (2, 1, 1, 3)
    assert counts.precision == counts.recall == counts.f1 == pytest.approx(2 / 3)
    counts = binary_counts([1, 0, 0, 1, 1], np.array([0.9, 0.6, 0.7, 0.1, 0.8]) >= 0.5)
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (2, 2, 1, 0)
    assert counts.precision == pytest.approx(0.5)
    assert counts.recall == pytest.approx(2 / 3)
    assert counts.f1 == pytest.approx(4 / 7)


def test_scores_without_a_denominator_are_nan() -> None:
    counts = binary_counts([1, 0, 1], [0, 0, 0])  # nothing predicted positive
    assert math.isnan(counts.precision)
    assert counts.recall == 0.0 and counts.f1 == 0.0
    counts = binary_counts([0, 0], [0, 0])  # no positives at all
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (0, 0, 0, 2)
    assert all(math.isnan(v) for v in (counts.precision, counts.recall, counts.f1))


def test_micro_scores_pool_the_counts_of_all_findings() -> None:
    targets = np.array([[1, 0], [0, 1], [1, 1]])
    predicted = np.array([[1, 1], [0, 0], [1, 0]])
    # tp 2 (both in the first column), fp 1, fn 2
    precision, recall, f1 = micro_scores(targets, predicted)
    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(0.5)
    assert f1 == pytest.approx(4 / 7)
    assert all(math.isnan(v) for v in micro_scores(np.zeros((3, 2)), np.zeros((3, 2))))


def test_youden_threshold_known_example() -> None:
    # positives 0.35, 0.8; negatives 0.1, 0.4.
    # t=0.8: TPR .5 FPR 0 (J .5); t=0.4: TPR .5 FPR .5 (J 0); t=0.35: TPR 1, FPR .5 (J .5);
    # t=0.1: J 0. Tie between 0.8 and 0.35 -> the higher threshold.
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)
    # A perfectly separable case: the lowest positive score.
    assert youden_threshold([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.9]) == pytest.approx(0.6)
    # sensitivity 2/3 + specificity 3/3 at 0.7 beats sensitivity 3/3 + specificity 1/3 at 0.2
    assert youden_threshold([0, 0, 0, 1, 1, 1], [0.1, 0.3, 0.5, 0.2, 0.7, 0.9]) == pytest.approx(0.7)


def test_youden_threshold_default_when_one_class() -> None:
    assert youden_threshold([0, 0, 0], [0.1, 0.9, 0.3], default=0.5) == 0.5


def test_bootstrap_interval_is_deterministic_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 120)
    scores = y * 0.3 + rng.random(120)
    low, high = bootstrap_auroc_ci(y, scores, n_resamples=300, seed=1)
    assert (low, high) == bootstrap_auroc_ci(y, scores, n_resamples=300, seed=1)
    assert (low, high) != bootstrap_auroc_ci(y, scores, n_resamples=300, seed=2)
    assert low < auroc(y, scores) < high
    assert 0.0 <= low < high <= 1.0
    wider = bootstrap_auroc_ci(y[:30], scores[:30], n_resamples=300, seed=1)
    assert wider[1] - wider[0] > high - low
    narrower = bootstrap_auroc_ci(y, scores, n_resamples=300, seed=1, confidence=0.5)
    assert low < narrower[0] < narrower[1] < high


def test_resampled_aurocs_agree_with_auroc_one_resample_at_a_time() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 25).astype(bool)
    scores = np.round(rng.random(25), 1)  # rounding makes ties
    rows = rng.integers(0, 25, size=(200, 25))
    rows[0] = np.flatnonzero(y)[0]  # one resample holding a single image: one class only
    values = resampled_aurocs(y, scores, rows)
    assert math.isnan(values[0])
    np.testing.assert_allclose(values[1:], [auroc(y[r], scores[r]) for r in rows[1:]], atol=1e-12)


def test_bootstrap_of_a_separable_set_is_a_point() -> None:
    # every resample that holds both classes is still perfectly separated
    y = np.array([0, 0, 0, 1, 1, 1])
    assert bootstrap_auroc_ci(y, y + 0.1, n_resamples=200) == (1.0, 1.0)


def test_bootstrap_skips_resamples_with_one_class() -> None:
    # with 2 + 2 images about one resample in eight draws a single class; the rest still give an interval
    low, high = bootstrap_auroc_ci([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], n_resamples=200)
    assert 0.0 <= low < 0.75 < high <= 1.0


def test_no_interval_from_a_single_positive() -> None:
    y = np.array([1] + [0] * 30)
    scores = np.linspace(0, 1, 31)
    assert not math.isnan(auroc(y, scores))
    assert all(math.isnan(v) for v in bootstrap_auroc_ci(y, scores))
    y[1] = 1
    assert not any(math.isnan(v) for v in bootstrap_auroc_ci(y, scores, n_resamples=200))


def test_iobb() -> None:
    assert iobb((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iobb((0, 0, 10, 10), (5, 5, 10, 10)) == pytest.approx(0.25)
    assert iobb((0, 0, 100, 100), (10, 10, 5, 5)) == 1.0  # detected box inside the truth
    assert iobb((0, 0, 5, 5), (0, 0, 10, 10)) == pytest.approx(0.25)
    assert iobb((0, 0, 5, 5), (50, 50, 5, 5)) == 0.0
    assert iobb((0, 0, 5, 5), (0, 0, 0, 5)) == 0.0  # an empty detected box


def test_nanmean() -> None:
    assert nanmean([0.5, NAN, 0.7]) == pytest.approx(0.6)
    assert math.isnan(nanmean([NAN]))
    assert math.isnan(nanmean([]))
