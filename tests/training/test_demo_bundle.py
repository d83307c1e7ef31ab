"""The shipped demo bundle keeps its promises: at most 50 MB, calibrated (ECE and Brier lower after),
thresholds never 0 or 1, flagged findings per test study within half and double of the labels',
intervals that resample patients. (`xray evaluate` reproducing it is tests/training/test_training_run.)"""

from __future__ import annotations

from pathlib import Path

from shared.classifier import read_card

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"


def test_demo_bundle_is_small_calibrated_and_flags_a_sensible_number() -> None:
    card = read_card(DEMO)
    assert sum(f.stat().st_size for f in DEMO.iterdir() if f.is_file()) <= 50 * 1024 * 1024
    assert card.trained and card.calibration["method"] == "platt"
    assert all(0.0 < t < 1.0 for t in card.thresholds.values())
    measured = card.metrics["calibration_test"]
    assert measured["after"]["ece"] < measured["before"]["ece"]
    assert measured["after"]["brier"] < measured["before"]["brier"]
    per_study = card.metrics["positives_per_study_test"]
    assert per_study["labels"] / 2 <= per_study["flagged"] <= per_study["labels"] * 2
    assert card.metrics["test"]["bootstrap"]["unit"] == "patient"
    low, high = card.metrics["test"]["mean_auroc_ci95"]
    assert low <= card.metrics["test"]["mean_auroc"] <= high
    assert (DEMO / "reliability.png").is_file() and (DEMO / "roc.png").is_file()
