"""`xray pretrain` on a few real Kermany images at 32 px: train split only, a backbone that
`xray train --weights` loads (all layers then train), and the pretraining recorded in a card."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import training.dataset as dataset_module
import training.pretrain as pretrain_module
from cli.main import main
from shared.classifier import Classifier, build_model, init_bundle, read_card
from training.model import build_initial_model, set_trainable
from training.pretrain import (
    BACKBONE_FILE,
    INFO_FILE,
    PretrainError,
    hold_out,
    patient_of,
    pretraining_of,
    read_train_rows,
    record_pretraining,
)

SIZE = 32
PER_CLASS = 6


def test_patient_of_kermany_names() -> None:
    assert patient_of("train/PNEUMONIA/person1000_bacteria_2931.jpeg") == "person1000"
    assert patient_of("train/PNEUMONIA/person1000_virus_1681.jpeg") == "person1000"
    assert patient_of("train/NORMAL/IM-0115-0001.jpeg") == "IM-0115"
    assert patient_of("train/NORMAL/NORMAL2-IM-0123-0001.jpeg") == "NORMAL2-IM-0123"


def _write_labels(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "split", "label", "pneumonia_type", "bytes"])
        writer.writeheader()
        writer.writerows(rows)


def test_only_train_rows_and_patient_wise_hold_out(tmp_path: Path) -> None:
    rows = [
        {"path": "train/NORMAL/IM-0001-0001.jpeg", "split": "train", "label": "NORMAL", "pneumonia_type": "",
         "bytes": "1"},
        {"path": "train/PNEUMONIA/person1_bacteria_1.jpeg", "split": "train", "label": "PNEUMONIA",
         "pneumonia_type": "bacteria", "bytes": "1"},
        {"path": "train/PNEUMONIA/person1_virus_2.jpeg", "split": "train", "label": "PNEUMONIA",
         "pneumonia_type": "virus", "bytes": "1"},
        {"path": "test/NORMAL/IM-0002-0001.jpeg", "split": "test", "label": "NORMAL", "pneumonia_type": "",
         "bytes": "1"},
    ]
    _write_labels(tmp_path / "labels.csv", rows)
    images = read_train_rows(tmp_path / "labels.csv")
    assert [i.path for i in images] == [r["path"] for r in rows[:3]]
    assert [i.label for i in images] == [0, 1, 2]
    many = [pretrain_module.PaediatricImage(f"train/NORMAL/IM-{p:04d}-{k:04d}.jpeg", f"IM-{p:04d}", 0)
            for p in range(200) for k in range(2)]
    kept, held = hold_out(many, 0.2)
    assert {i.patient for i in kept}.isdisjoint({i.patient for i in held})
    assert 0.1 < len(held) / len(many) < 0.3
    _write_labels(tmp_path / "labels.csv", rows[3:])
    with pytest.raises(PretrainError, match="split == train"):
        read_train_rows(tmp_path / "labels.csv")


@pytest.fixture(scope="module")
def small_kermany(kermany_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PER_CLASS real train images of each class (copied), and test rows whose files are not images:
    reading any of them would fail the run."""
    root = tmp_path_factory.mktemp("kermany")
    with open(kermany_dir / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen: list[dict[str, str]] = []
    for label, kind in (("NORMAL", ""), ("PNEUMONIA", "bacteria"), ("PNEUMONIA", "virus")):
        chosen += [r for r in rows if r["split"] == "train" and r["label"] == label
                   and r["pneumonia_type"] == kind][:PER_CLASS]
    for row in chosen:
        (root / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kermany_dir / row["path"], root / row["path"])
    tests = [r for r in rows if r["split"] == "test"][:3]
    for row in tests:
        (root / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        (root / row["path"]).write_bytes(b"not an image")
    _write_labels(root / "labels.csv", chosen + tests)
    return root


@pytest.fixture(scope="module")
def pretrained(small_kermany: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Runs `xray pretrain` (1 epoch, 32 px); returns the output folder and every name decoded."""
    out = tmp_path_factory.mktemp("pretrained")
    decoded: list[str] = []
    real = dataset_module.load_pixels

    def spy(path: Path, *args: object, **kwargs: object) -> np.ndarray:
        decoded.append(str(Path(path).relative_to(small_kermany)))
        return real(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataset_module, "load_pixels", spy)  # every decode, inside tf.data too
        code = main(["pretrain", "--images", str(small_kermany), "--out", str(out), "--image-size", str(SIZE),
                     "--epochs", "1", "--batch-size", "6", "--holdout", "0.3", "--no-progress"])
    assert code == 0
    return out, decoded


@pytest.mark.slow
def test_pretrain_reads_the_train_split_only(pretrained: tuple[Path, list[str]]) -> None:
    out, decoded = pretrained
    assert len(set(decoded)) == 3 * PER_CLASS  # every train image, held-out ones included
    assert all(name.startswith("train/") for name in decoded)
    info = json.loads((out / INFO_FILE).read_text())
    assert info["data"]["n_images"] == 3 * PER_CLASS
    counts = info["class_counts"]
    assert sum(sum(part.values()) for part in counts.values()) == 3 * PER_CLASS
    assert info["best_epoch"] == 1 and info["input_size"] == SIZE
    assert 0.0 <= info["best_held_out"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_train_loads_the_pretrained_backbone_and_trains_all_layers(pretrained: tuple[Path, list[str]]) -> None:
    import keras

    path = pretrained[0] / BACKBONE_FILE
    model, description = build_initial_model(SIZE, str(path))
    assert description == f"file {BACKBONE_FILE}"
    saved = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    saved.load_weights(path)
    keras.utils.set_random_seed(0)  # the pretraining's seed: the same random start
    random_model = build_model(SIZE)
    for layer in ("conv1_conv", "conv1_bn", "conv5_block3_3_conv", "conv5_block3_3_bn"):
        loaded = model.get_layer(layer).get_weights()
        for value, expected in zip(loaded, saved.get_layer(layer).get_weights(), strict=True):
            np.testing.assert_array_equal(value, expected)
        changed = [not np.allclose(a, b) for a, b in zip(loaded, random_model.get_layer(layer).get_weights(),
                                                          strict=True)]
        assert any(changed), f"{layer} still holds its random initial weights"
    weighted = [layer for layer in model.layers if layer.weights]
    assert set_trainable(model, None) == len(weighted)
    assert all(layer.trainable for layer in weighted)  # batch norm too: it trains (and updates statistics)


@pytest.mark.slow
def test_pretraining_is_recorded_in_the_bundle_card(pretrained: tuple[Path, list[str]], tmp_path: Path) -> None:
    path = pretrained[0] / BACKBONE_FILE
    version = init_bundle(tmp_path / "bundle", input_size=SIZE).version
    assert record_pretraining(tmp_path / "bundle", path)
    card = read_card(tmp_path / "bundle")
    assert card.version == version
    assert card.training["pretraining"] == pretraining_of(path)
    assert "train split only" in card.training["initial_weights"]
    assert Classifier.load(tmp_path / "bundle").version == version
    assert not record_pretraining(tmp_path / "bundle", tmp_path / "elsewhere.weights.h5")
