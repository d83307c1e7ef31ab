"""Calibration and thresholds come from validation only; metrics never crash on findings without positives."""

from __future__ import annotations

import numpy as np

from shared.findings import FINDINGS, index_of
from training.evaluate import (
    Predictions,
    calibrate_and_evaluate,
    classification_metrics,
    compare_metrics,
)
from training.report import markdown


def _predictions(seed: int, n: int = 80) -> Predictions:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, len(FINDINGS))) < 0.3).astype(np.float32)
    targets[:, index_of("Hernia")] = 0.0  # no Hernia in this split
    probabilities = np.clip(0.35 * targets + rng.random(targets.shape) * 0.65, 0, 1).astype(np.float32)
    names = tuple(f"{i:08d}_000.png" for i in range(n))
    return Predictions(names, tuple(str(i // 2) for i in range(n)), targets, probabilities)


PREVALENCE = np.full(len(FINDINGS), 0.3)


def test_thresholds_come_from_validation_only() -> None:
    validation, test = _predictions(1), _predictions(2)
    result = calibrate_and_evaluate(validation, test, PREVALENCE)

    relabelled = Predictions(test.names, test.patients, 1.0 - test.targets, test.probabilities)
    after = calibrate_and_evaluate(validation, relabelled, PREVALENCE)
    assert after.thresholds == result.thresholds
    assert after.calibration == result.calibration
    assert after.metrics["validation"] == result.metrics["validation"]
    assert after.metrics["test"]["per_finding"]["Effusion"]["auroc"] != result.metrics["test"]["per_finding"][
        "Effusion"]["auroc"]

    rescored = Predictions(test.names, test.patients, test.targets, test.probabilities[::-1].copy())
    assert calibrate_and_evaluate(validation, rescored, PREVALENCE).thresholds == result.thresholds

    other_validation = _predictions(3)
    assert calibrate_and_evaluate(other_validation, test, PREVALENCE).thresholds != result.thresholds


def test_card_metrics_hold_calibration_before_and_after_and_positives_per_study() -> None:
    result = calibrate_and_evaluate(_predictions(4), _predictions(5), PREVALENCE)
    calibration = result.metrics["calibration_test"]
    assert set(calibration["before"]) >= {"ece", "brier"} and set(calibration["after"]) >= {"ece", "brier"}
    assert set(calibration["per_finding"]) == set(FINDINGS)
    per_study = result.metrics["positives_per_study_test"]
    assert per_study["labels"] / 2 <= per_study["flagged"] <= per_study["labels"] * 2
    assert all(0.0 < t < 1.0 for t in result.thresholds.values())
    assert result.metrics["thresholds_from"].startswith("validation split")
    assert "fewer than" in result.metrics["threshold_sources"]["Hernia"]


def test_metrics_with_undefined_findings_do_not_crash() -> None:
    test = _predictions(5)
    test.targets[:, index_of("Edema")] = 1.0  # no negatives
    metrics = classification_metrics(test, dict.fromkeys(FINDINGS, 0.5), n_resamples=50)
    for label in ("Hernia", "Edema"):
        assert metrics["per_finding"][label]["auroc"] is None
        assert metrics["per_finding"][label]["auroc_ci95"] == [None, None]
    assert metrics["per_finding"]["Hernia"]["n_positive"] == 0
    assert metrics["mean_auroc_findings"] == 12
    assert 0.5 < metrics["mean_auroc"] < 1.0
    low, high = metrics["per_finding"]["Effusion"]["auroc_ci95"]
    assert low <= metrics["per_finding"]["Effusion"]["auroc"] <= high
    text = markdown(None, {"split": "test", **metrics})
    assert "| Hernia | 0 (0) | n/a | n/a |" in text


def test_metrics_are_reproducible_and_compare_finds_differences() -> None:
    test = _predictions(6)
    first = classification_metrics(test, dict.fromkeys(FINDINGS, 0.5), n_resamples=100)
    second = classification_metrics(test, dict.fromkeys(FINDINGS, 0.5), n_resamples=100)
    assert compare_metrics(first, second) == []
    test.probabilities[0, 0] = 1.0 - test.probabilities[0, 0]
    third = classification_metrics(test, dict.fromkeys(FINDINGS, 0.5), n_resamples=100)
    assert any(line.startswith("per_finding.Atelectasis") for line in compare_metrics(first, third))
