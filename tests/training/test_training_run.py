"""A real (tiny) training run: real NIH images, one epoch at 32x32, a loadable bundle whose card
holds validation thresholds and test metrics that `xray evaluate` reproduces; resume; localisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.classifier import WEIGHTS_FILE, Classifier, file_version
from shared.findings import FINDINGS
from tests.training.support import label_subset
from training.calibration import choose_thresholds, fit_calibration, training_prevalence
from training.evaluate import compare_metrics, evaluate_bundle, evaluate_classifier, predict
from training.labels import read_boxes, read_labels
from training.model import WeightsError, build_initial_model, positive_weights, set_trainable
from training.splits import Split, assert_patient_disjoint
from training.train import STATE_FILE, TrainConfig, train

pytestmark = pytest.mark.slow
SIZE = 32


@pytest.fixture(scope="module")
def small_labels(nih64_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """NIH's own rows (same header) for 10 train, all validation and 6 test patients of nih-64."""
    return label_subset(nih64_dir, tmp_path_factory.mktemp("labels") / "Data_Entry.csv", 10, 100, 6)


@pytest.fixture(scope="module")
def trained(nih64_dir: Path, small_labels: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    root = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        images_dir=nih64_dir / "images",
        labels_path=small_labels,
        out_dir=root / "models" / "tiny",
        image_size=SIZE,
        epochs=1,
        batch_size=8,
        checkpoint_dir=root / "checkpoints",
        progress=False,
    )
    train(config)
    return config


def test_bundle_loads_and_is_marked_trained(trained: TrainConfig) -> None:
    classifier = Classifier.load(trained.out_dir)
    assert classifier.trained is True
    assert classifier.version == file_version(trained.out_dir / WEIGHTS_FILE)
    assert len(classifier.version) == 16
    assert classifier.input_size == SIZE
    probabilities, features = classifier.predict(np.zeros((2, SIZE, SIZE, 3), np.float32))
    assert probabilities.shape == (2, len(FINDINGS)) and features.shape[-1] == 2048
    card = classifier.card
    assert "not for clinical use" in card.intended_use
    assert card.training["epochs_run"] == 1 and card.training["input_size"] == SIZE
    assert set(card.metrics) >= {"validation", "test", "thresholds_from"}
    assert (trained.out_dir / "report.md").read_text().count("|") > 50
    assert (trained.out_dir / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_card_split_is_recorded_and_patient_disjoint(trained: TrainConfig) -> None:
    card = Classifier.load(trained.out_dir).card
    table = read_labels(trained.labels_path)
    split = Split.from_dict(card.training["split"])
    assert_patient_disjoint(split, table)
    assert sorted(split.train + split.validation + split.test) == sorted(table.images)
    sizes = card.training["split_sizes"]
    assert sizes["validation"]["images"] == len(split.validation)
    pos = positive_weights(table.subset(split.train).targets)
    assert card.training["pos_weight"] == {k: round(float(w), 3) for k, w in zip(FINDINGS, pos, strict=True)}


def test_calibration_and_thresholds_come_from_the_validation_split(trained: TrainConfig) -> None:
    classifier = Classifier.load(trained.out_dir)
    table = read_labels(trained.labels_path)
    split = Split.from_dict(classifier.card.training["split"])
    prevalence = training_prevalence(table.subset(split.train).targets)
    raw = predict(classifier, trained.images_dir, table.subset(split.validation), progress=False, calibrated=False)
    calibration = fit_calibration(raw.targets, raw.probabilities, prevalence)
    assert classifier.card.calibration["per_finding"] == calibration["per_finding"]
    served = predict(classifier, trained.images_dir, table.subset(split.validation), progress=False)
    np.testing.assert_allclose(served.probabilities, classifier.calibrate(raw.probabilities))
    expected, _ = choose_thresholds(served.targets, served.probabilities, prevalence)
    assert classifier.card.thresholds == pytest.approx(expected)
    assert all(0.0 < t < 1.0 for t in classifier.card.thresholds.values())
    assert (trained.out_dir / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert set(classifier.card.metrics["calibration_test"]) >= {"before", "after"}


def test_evaluate_reproduces_the_card(trained: TrainConfig) -> None:
    card = Classifier.load(trained.out_dir).card
    evaluation = evaluate_bundle(trained.out_dir, trained.images_dir, trained.labels_path, "test", progress=False)
    assert compare_metrics(card.metrics["test"], evaluation.metrics) == []
    assert evaluation.metrics["n_images"] == len(card.training["split"]["test"])


def test_cli_evaluate_writes_report_and_says_it_reproduces(
    trained: TrainConfig, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main

    out = tmp_path / "eval"
    code = main([
        "evaluate", str(trained.out_dir), "--images", str(trained.images_dir), "--labels", str(trained.labels_path),
        "--bbox", str(data_dir / "nih-metadata" / "BBox_List_2017.csv.gz"), "--out", str(out), "--no-progress",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "reproduces the test metrics recorded in card.json" in printed
    assert "Localisation" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and "localisation" in metrics
    assert (out / "roc.png").is_file() and (out / "report.md").is_file()


def test_localisation_against_radiologist_boxes(trained: TrainConfig, data_dir: Path, nih64_dir: Path) -> None:
    bbox = data_dir / "nih-metadata" / "BBox_List_2017.csv.gz"
    full = read_labels(nih64_dir / "Data_Entry.csv")
    boxed = sorted({b.image for b in read_boxes(bbox)} & set(full.images))
    assert boxed, "nih-64 holds images with radiologist boxes"
    classifier = Classifier.load(trained.out_dir)
    evaluation = evaluate_classifier(classifier, nih64_dir / "images", full.subset(boxed), "boxed", bbox, False)
    localisation = evaluation.metrics["localisation"]
    expected = sum(1 for b in read_boxes(bbox) if b.image in set(boxed))
    assert localisation["n_boxes"] == expected
    for values in localisation["per_finding"].values():
        shares = [values["iobb>0.1"], values["iobb>0.25"], values["iobb>0.5"]]
        assert all(0.0 <= s <= 1.0 for s in shares)
        assert shares[0] >= shares[1] >= shares[2]


def test_resume_continues_from_the_checkpoint(trained: TrainConfig, tmp_path: Path) -> None:
    state = json.loads((trained.checkpoints / STATE_FILE).read_text())
    assert state["epochs_done"] == 1
    resumed = TrainConfig(**{**trained.__dict__, "out_dir": tmp_path / "resumed", "epochs": 2, "resume": True})
    card = train(resumed)
    history = card["training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == state["history"][0]
    assert card["training"]["epochs_run"] == 2


def test_cli_train_reports_bad_weights_before_decoding(
    nih64_dir: Path, small_labels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main

    code = main([
        "train", "--images", str(nih64_dir / "images"), "--labels", str(small_labels), "--out",
        str(tmp_path / "m"), "--weights", str(tmp_path / "absent.h5"), "--checkpoint-dir", str(tmp_path / "c"),
        "--no-progress",
    ])
    assert code == 1
    assert "--weights" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_fine_tune_layers_freezes_all_but_the_last_n() -> None:
    model, _ = build_initial_model(SIZE, "none")
    assert set_trainable(model, 5) == 5
    weighted = [layer for layer in model.layers if layer.weights]
    assert [layer.trainable for layer in weighted[-5:]] == [True] * 5
    assert not any(layer.trainable for layer in weighted[:-5])
    assert weighted[-1].name == "probabilities"
    assert set_trainable(model, None) == len(weighted)
    assert all(layer.trainable for layer in weighted)


def test_unusable_weights_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not 'none', 'imagenet'"):
        build_initial_model(SIZE, str(tmp_path / "missing.h5"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(WeightsError, match="model bundle"):
        build_initial_model(SIZE, str(tmp_path / "folder"))
