"""Pretraining the ResNet50 backbone on paediatric chest X-rays (Kermany et al., Cell 2018, CC BY 4.0).

Only rows of the data set's `labels.csv` with split == train are read; its test split stays unseen.
A patient-wise part of train is held out to choose the epoch. The backbone (the same
`keras.applications.ResNet50` notop that `shared.classifier.build_model` builds) learns a 3-way
softmax normal / bacterial / viral pneumonia, on images decoded and preprocessed by the service's
own code and augmented as `training.dataset` does (no flips). The best epoch's backbone is saved as
a Keras ResNet50 notop weights file, which `xray train --weights FILE` loads, beside a JSON that
describes the pretraining and that `xray train` copies into the NIH bundle's card.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.dataset import Augmentation, image_batches, train_dataset
from training.metrics import auroc, nanmean

if TYPE_CHECKING:
    import keras

CLASSES = ("normal", "bacterial", "viral")
BACKBONE_FILE = "backbone.weights.h5"
INFO_FILE = "pretraining.json"
SOURCE = "Kermany et al., Cell 2018: paediatric chest X-rays (Guangzhou), CC BY 4.0"
_PERSON = re.compile(r"^(person\d+)_")
_SEQUENCE = re.compile(r"^(.*)-\d+$")


class PretrainError(ValueError):
    """A labels file or setting that pretraining cannot use; the message says which."""


@dataclass(frozen=True)
class PaediatricImage:
    path: str  # relative to the data set folder, as in labels.csv
    patient: str
    label: int  # index into CLASSES


def patient_of(path: str) -> str:
    """The patient in a Kermany file name: 'person1000' of person1000_bacteria_2931.jpeg, 'IM-0115'
    of IM-0115-0001.jpeg, 'NORMAL2-IM-0123' of NORMAL2-IM-0123-0001.jpeg."""
    stem = Path(path).stem
    match = _PERSON.match(stem)
    if match:
        return match.group(1)
    match = _SEQUENCE.match(stem)
    return match.group(1) if match else stem


def _label(row: dict[str, str]) -> int:
    label = row.get("label", "").strip().upper()
    kind = row.get("pneumonia_type", "").strip().lower()
    if label == "NORMAL":
        return 0
    if label == "PNEUMONIA" and kind in ("bacteria", "virus"):
        return 1 if kind == "bacteria" else 2
    raise PretrainError(f"unknown label {label!r} / pneumonia_type {kind!r} for {row.get('path')}")


def read_train_rows(labels_path: str | Path) -> list[PaediatricImage]:
    """The rows of split == train only (columns path, split, label, pneumonia_type)."""
    with open(labels_path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "split", "label", "pneumonia_type"} - set(reader.fieldnames or ())
        if missing:
            raise PretrainError(f"{labels_path}: missing column(s) {', '.join(sorted(missing))}")
        rows = [row for row in reader if row["split"].strip() == "train"]
    if not rows:
        raise PretrainError(f"{labels_path}: no rows with split == train")
    return [PaediatricImage(row["path"], patient_of(row["path"]), _label(row)) for row in rows]


def _hash_fraction(patient: str) -> float:
    return int(hashlib.sha256(patient.encode()).hexdigest()[:8], 16) / 16**8


def hold_out(
    images: list[PaediatricImage], fraction: float
) -> tuple[list[PaediatricImage], list[PaediatricImage]]:
    """(fit, validation): the patients whose hashed id falls below `fraction` are held out."""
    if not 0.0 < fraction < 1.0:
        raise PretrainError(f"the held-out fraction must be between 0 and 1, got {fraction}")
    held = [image for image in images if _hash_fraction(image.patient) < fraction]
    kept = [image for image in images if _hash_fraction(image.patient) >= fraction]
    if not held or not kept:
        raise PretrainError(f"holding out {fraction:g} of {len(images)} images leaves an empty part")
    return kept, held


def build_pretrain_model(input_size: int) -> tuple[keras.Model, keras.Model]:
    """(backbone, classifier): the notop ResNet50 of `build_model` + pooling + Dense(3, softmax)."""
    import keras

    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(input_size, input_size, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="paediatric")(pooled)
    return backbone, keras.Model(backbone.input, outputs, name="resnet50_paediatric")


def evaluate(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, one-vs-rest AUROC per class and their mean, and pneumonia-vs-normal AUROC."""
    onehot = np.eye(len(CLASSES))[labels]
    per_class = [auroc(onehot[:, k], probabilities[:, k]) for k in range(len(CLASSES))]
    return {
        "accuracy": round(float(np.mean(probabilities.argmax(axis=1) == labels)), 4),
        "mean_auroc": round(nanmean(per_class), 4),
        "auroc": {name: round(float(v), 4) for name, v in zip(CLASSES, per_class, strict=True)},
        "pneumonia_auroc": round(float(auroc((labels > 0).astype(float), 1.0 - probabilities[:, 0])), 4),
    }


def image_files(data_dir: Path, rows: list[PaediatricImage]) -> list[str]:
    """The files of `rows` (streamed by tf.data: decoded and preprocessed by the service's own code)."""
    paths = [data_dir / row.path for row in rows]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise PretrainError(f"{len(missing)} images listed in labels.csv are missing (e.g. {', '.join(missing[:3])})")
    return [str(path) for path in paths]


@dataclass
class PretrainConfig:
    data_dir: Path
    out_dir: Path
    image_size: int = 64
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    holdout: float = 0.1
    seed: int = 0
    time_budget_min: float | None = None
    augment: bool = True
    progress: bool = True


def pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Train on Kermany train (minus the held-out patients), keep the epoch with the best held-out
    mean AUROC, write BACKBONE_FILE and INFO_FILE into `out_dir`. Returns the info."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    images = read_train_rows(config.data_dir / "labels.csv")
    fit_rows, val_rows = hold_out(images, config.holdout)
    print(f"kermany train: {len(images)} images of {len({i.patient for i in images})} patients; "
          f"fit {len(fit_rows)}, held out {len(val_rows)}", flush=True)
    fit_paths, val_paths = image_files(config.data_dir, fit_rows), image_files(config.data_dir, val_rows)
    fit_y = np.eye(len(CLASSES), dtype=np.float32)[[r.label for r in fit_rows]]
    val_labels = np.asarray([r.label for r in val_rows])
    held_out = image_batches(val_paths, config.image_size, 64)

    backbone, model = build_pretrain_model(config.image_size)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
                  loss="categorical_crossentropy", jit_compile=False)
    augmentation = Augmentation() if config.augment else None
    dataset = train_dataset(fit_paths, fit_y, config.batch_size, config.image_size, augmentation, seed=config.seed)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    best_path = config.out_dir / BACKBONE_FILE
    partial = config.out_dir / "backbone.partial.weights.h5"
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"mean_auroc": None, "epoch": None, "metrics": None}
    fit_started = time.monotonic()

    class HeldOutCheckpoint(keras.callbacks.Callback):
        """Held-out metrics each epoch; saves the backbone of the best epoch; honours the budget."""

        epoch_start = fit_started

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            metrics = evaluate(model.predict(held_out, verbose=0), val_labels)
            now = time.monotonic()
            history.append({"epoch": epoch + 1, "loss": round(float((logs or {}).get("loss", np.nan)), 4),
                            **{k: v for k, v in metrics.items() if k != "auroc"},
                            "elapsed_s": round(now - fit_started, 1)})
            improved = best["mean_auroc"] is None or metrics["mean_auroc"] > best["mean_auroc"]
            if improved:
                best.update(mean_auroc=metrics["mean_auroc"], epoch=epoch + 1, metrics=metrics)
                backbone.save_weights(partial)
                partial.replace(best_path)
            print(f"epoch {epoch + 1}: loss {history[-1]['loss']:.4f}, held-out accuracy {metrics['accuracy']:.4f}, "
                  f"mean AUROC {metrics['mean_auroc']:.4f}{' (best, saved)' if improved else ''}", flush=True)
            epoch_seconds, HeldOutCheckpoint.epoch_start = now - HeldOutCheckpoint.epoch_start, now
            budget = config.time_budget_min
            if budget is not None and (now - fit_started) + epoch_seconds > budget * 60.0:
                print(f"stopping: another epoch (~{epoch_seconds:.0f} s) would exceed the {budget:g} min budget",
                      flush=True)
                self.model.stop_training = True

    model.fit(dataset, epochs=config.epochs, callbacks=[HeldOutCheckpoint()], shuffle=False,
              verbose=2 if config.progress else 0)
    counts = {split: {name: sum(r.label == k for r in rows) for k, name in enumerate(CLASSES)}
              for split, rows in (("fit", fit_rows), ("held_out", val_rows))}
    info = {
        "data": {"images": str(config.data_dir), "source": SOURCE, "split_used": "train only (test unread)",
                 "n_images": len(images), "n_patients": len({i.patient for i in images})},
        "held_out": f"patients with sha256(patient id) in the lowest {config.holdout:g} of the range",
        "class_counts": counts,
        "task": "3-way softmax: " + " / ".join(CLASSES),
        "input_size": config.image_size,
        "preprocessing": "shared.classifier.preprocess (the service's)",
        "augmentation": augmentation.as_dict() if augmentation else None,
        "optimizer": f"Adam lr {config.learning_rate:g}",
        "batch_size": config.batch_size,
        "epochs_run": len(history),
        "epochs_requested": config.epochs,
        "time_budget_min": config.time_budget_min,
        "best_epoch": best["epoch"],
        "best_held_out": best["metrics"],
        "selection": "backbone of the epoch with the best held-out mean one-vs-rest AUROC",
        "history": history,
        "fit_wall_time_s": round(time.monotonic() - fit_started, 1),
        "seed": config.seed,
        "weights_file": BACKBONE_FILE,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "date": datetime.now(UTC).date().isoformat(),
    }
    (config.out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def pretraining_of(weights: str | Path) -> dict[str, Any] | None:
    """The pretraining description beside a weights file written by `pretrain`, else None."""
    path = Path(weights)
    info_path = path.parent / INFO_FILE
    if not path.is_file() or not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    if info.get("weights_file") != path.name:
        return None
    return {k: v for k, v in info.items() if k != "history"}


def record_pretraining(bundle_dir: str | Path, weights: str | Path) -> bool:
    """Add the pretraining description to the bundle card's `training` section (the card is not part
    of the version hash, so the bundle's version stays the same). Returns whether it did."""
    from shared.classifier import CARD_FILE, read_card

    info = pretraining_of(weights)
    if info is None:
        return False
    bundle_dir = Path(bundle_dir)
    card = read_card(bundle_dir)
    card.training["initial_weights"] = (
        f"ResNet50 backbone pretrained on {info['data']['images']} (train split only), "
        f"file {Path(weights).name}"
    )
    card.training["pretraining"] = info
    tmp = bundle_dir / (CARD_FILE + ".tmp")
    tmp.write_text(card.to_json())
    tmp.replace(bundle_dir / CARD_FILE)
    return True
