"""Calibration fitted on validation (Platt scaling, prior-matching fallback), thresholds by the
documented rule (never 0 or 1, flagged share near the prevalence), ECE / Brier, the reliability
diagram, and patient-resampled AUROC intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.calibration import CalibrationError, apply_calibration, logit, validate_calibration
from shared.findings import FINDINGS, index_of
from training.bootstrap import patient_bootstrap
from training.calibration import (
    MIN_POSITIVES,
    MIN_SLOPE,
    RATE_BAND,
    brier_score,
    choose_threshold,
    expected_calibration_error,
    fit_calibration,
    fit_platt,
    prevalence_threshold,
    reliability_png,
    training_prevalence,
)
from training.metrics import auroc


def _overconfident(seed: int, n: int = 400, prevalence: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Labels, and outputs whose logit is 4x the true log-odds: far too sure, as the demo network is."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(np.log(prevalence / (1 - prevalence)), 1.5, size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(np.float32)
    return y, (1 / (1 + np.exp(-4 * true_logit))).astype(np.float32)


def test_platt_recovers_a_known_overconfidence_and_lowers_ece() -> None:
    y, raw = _overconfident(0, n=4000)
    slope, intercept = fit_platt(y, raw)
    assert slope == pytest.approx(0.25, abs=0.05)
    calibrated = 1 / (1 + np.exp(-(slope * logit(raw) + intercept)))
    assert expected_calibration_error(y, calibrated) < expected_calibration_error(y, raw) / 3
    assert brier_score(y, calibrated) < brier_score(y, raw)


def test_slope_stays_positive_so_ranking_is_kept() -> None:
    y, raw = _overconfident(1)
    slope, intercept = fit_platt(y, 1.0 - raw)  # anti-correlated outputs
    assert slope == MIN_SLOPE
    served = 1 / (1 + np.exp(-(slope * logit(1.0 - raw) + intercept)))
    assert auroc(y, served) == pytest.approx(auroc(y, 1.0 - raw))


def test_saturated_float32_outputs_keep_their_order() -> None:
    raw = np.array([1e-30, 1e-20, 1e-9, 0.5, 1 - 1e-7], dtype=np.float32)
    assert np.all(np.diff(logit(raw)) > 0)


def test_fit_calibration_falls_back_to_prior_matching_without_positives() -> None:
    targets = np.zeros((300, len(FINDINGS)), np.float32)
    raw = np.zeros_like(targets)
    for k in range(len(FINDINGS)):
        targets[:, k], raw[:, k] = _overconfident(10 + k, n=300)
    hernia = index_of("Hernia")
    targets[:, hernia] = 0.0
    targets[:MIN_POSITIVES - 1, hernia] = 1.0
    prevalence = np.full(len(FINDINGS), 0.02)
    calibration = fit_calibration(targets, raw, prevalence)
    validate_calibration(calibration, FINDINGS)
    assert "fewer than" in calibration["per_finding"]["Hernia"]["source"]
    assert "Platt" in calibration["per_finding"]["Effusion"]["source"]
    served = apply_calibration(raw, calibration, FINDINGS)
    assert served[:, hernia].mean() == pytest.approx(0.02, abs=1e-4)
    for k in range(len(FINDINGS)):  # a monotone map: the AUROC is unchanged
        if 0 < targets[:, k].sum() < len(targets):
            assert auroc(targets[:, k], served[:, k]) == pytest.approx(auroc(targets[:, k], raw[:, k]), abs=1e-6)


def test_apply_calibration_identity_without_a_block_and_refuses_a_bad_one() -> None:
    raw = np.random.default_rng(0).random((4, len(FINDINGS))).astype(np.float32)
    np.testing.assert_array_equal(apply_calibration(raw, {}, FINDINGS), raw)
    bad = {"method": "platt", "per_finding": {label: {"slope": 0.0, "intercept": 0.0} for label in FINDINGS}}
    with pytest.raises(CalibrationError, match="slope"):
        validate_calibration(bad, FINDINGS)
    with pytest.raises(CalibrationError, match="isotonic"):
        validate_calibration({"method": "isotonic"}, FINDINGS)


def test_threshold_is_best_f1_within_the_prevalence_band() -> None:
    y, raw = _overconfident(2, n=500)
    prevalence = float(y.mean())
    threshold, source = choose_threshold(y, raw, prevalence)
    assert "best F1" in source
    rate = np.mean(raw >= threshold)
    assert RATE_BAND[0] * prevalence <= rate <= RATE_BAND[1] * prevalence
    assert 0.0 < threshold < 1.0


def test_threshold_falls_back_to_the_prevalence_quantile_and_is_never_0_or_1() -> None:
    y = np.zeros(100)
    y[:2] = 1
    scores = np.linspace(0.0, 1.0, 100)
    threshold, source = choose_threshold(y, scores, 0.1)
    assert "fewer than" in source and np.mean(scores >= threshold) == pytest.approx(0.1, abs=0.011)
    assert choose_threshold(y, np.ones(100), 0.1)[0] < 1.0  # clipped
    assert choose_threshold(y, np.zeros(100), 0.1)[0] > 0.0
    constant = np.full(50, 0.2, dtype=np.float32)
    cut = prevalence_threshold(constant, 0.1)
    assert np.mean(constant >= cut) == 0.0  # ties never all flagged...
    assert np.mean(constant >= np.float32(cut)) == 0.0  # ...also where the service compares in float32


def test_training_prevalence_is_never_zero() -> None:
    targets = np.zeros((10, len(FINDINGS)))
    targets[:5, 0] = 1
    prevalence = training_prevalence(targets)
    assert prevalence[0] == 0.5 and prevalence[1] == pytest.approx(0.05)


def test_ece_of_a_perfectly_calibrated_constant_is_zero() -> None:
    y = np.array([1, 0, 0, 0] * 25)
    assert expected_calibration_error(y, np.full(100, 0.25)) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(100, 0.95)) == pytest.approx(0.70)


def test_patient_bootstrap_resamples_patients_and_is_deterministic() -> None:
    rng = np.random.default_rng(3)
    n = 120
    targets = (rng.random((n, 3)) < 0.3).astype(np.float32)
    scores = targets * 0.3 + rng.random((n, 3))
    patients = [str(i // 4) for i in range(n)]
    first = patient_bootstrap(targets, scores, patients, n_resamples=200, seed=1)
    again = patient_bootstrap(targets, scores, patients, n_resamples=200, seed=1)
    np.testing.assert_array_equal(first.per_finding, again.per_finding)
    low, high = first.mean
    assert low < np.mean([auroc(targets[:, k], scores[:, k]) for k in range(3)]) < high
    # one patient holding every image: no spread is possible, so no interval
    single = patient_bootstrap(targets, scores, ["p"] * n, n_resamples=50)
    assert np.isnan(single.per_finding).all()


def test_patient_intervals_are_wider_than_image_intervals_when_images_repeat() -> None:
    rng = np.random.default_rng(4)
    base_t = (rng.random((30, 1)) < 0.4).astype(np.float32)
    base_s = base_t * 0.4 + rng.random((30, 1))
    targets, scores = np.repeat(base_t, 5, axis=0), np.repeat(base_s, 5, axis=0)  # 5 images per patient
    by_patient = patient_bootstrap(targets, scores, [str(i // 5) for i in range(150)], n_resamples=300)
    by_image = patient_bootstrap(targets, scores, [str(i) for i in range(150)], n_resamples=300)
    width = lambda pair: pair[1] - pair[0]  # noqa: E731
    assert width(by_patient.per_finding[0]) > 1.5 * width(by_image.per_finding[0])


def test_reliability_diagram_is_a_png(tmp_path: Path) -> None:
    y, raw = _overconfident(5)
    targets = np.stack([y] * 2, axis=1)
    outputs = np.stack([raw] * 2, axis=1)
    path = reliability_png(targets, outputs, np.clip(outputs * 0.5, 0, 1), tmp_path / "r.png", "test")
    assert path.read_bytes()[:4] == b"\x89PNG"
