"""Training: labels -> patient-wise split -> images streamed from disk (tf.data) -> class-weighted
BCE on the chosen devices and precision -> best validation mean AUROC checkpoint -> bundle with
validation thresholds and test metrics."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.classifier import PREPROCESSING, build_model, clahe_settings
from shared.findings import FINDINGS
from training.dataset import Augmentation, ImageIndex, image_batches, read_failure, train_dataset
from training.devices import configure
from training.labels import LabelTable, read_labels
from training.metrics import auroc, nanmean
from training.model import (
    build_initial_model,
    loss_scaled,
    positive_weights,
    probabilities_model,
    set_trainable,
    weighted_bce_loss,
)
from training.splits import DEFAULT_FRACTIONS, SPLIT_NAMES, Split, split_by_patient, split_from_lists

if TYPE_CHECKING:
    import keras

RESEARCH_USE = (
    "Research demo, not for clinical use. Trained on a small public research set; it has not been "
    "validated on any hospital's patients and must not inform any patient's care."
)
STATE_FILE = "state.json"
VALIDATION_BATCH = 16  # per replica
RELIABILITY_FILE = "reliability.png"


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


@dataclass
class TrainConfig:
    images_dir: Path
    labels_path: Path
    out_dir: Path
    split_lists: Path | None = None
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    image_size: int = 224
    epochs: int = 10
    batch_size: int = 16
    weights: str = "none"
    fine_tune_layers: int | None = None
    learning_rate: float = 1e-3
    seed: int = 0
    checkpoint_dir: Path | None = None
    resume: bool = False
    time_budget_min: float | None = None
    steps_per_epoch: int | None = None
    precision: str = "auto"
    gpus: str = "auto"
    cpu_replicas: int = 0  # tests only: mirror over this many logical CPUs (training.devices)
    max_pos_weight: float | None = None
    augment: bool = True
    clahe: bool = False
    progress: bool = True
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir or (self.out_dir.parent.parent / "var" / "checkpoints" / self.out_dir.name)


def mean_auroc(targets: np.ndarray, probabilities: np.ndarray) -> tuple[float, list[float]]:
    values = [auroc(targets[:, k], probabilities[:, k]) for k in range(targets.shape[1])]
    return nanmean(values), values


def make_split(config: TrainConfig, table: LabelTable) -> Split:
    if config.split_lists is not None:
        return split_from_lists(table, config.split_lists)
    return split_by_patient(table, config.split_fractions)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _replace(tmp: Path, path: Path) -> None:
    """Make a fully written file durable, then give it its name in one step (a kill mid-save
    leaves the previous file or none, never a half-written one)."""
    _fsync(tmp)
    os.replace(tmp, path)


def _save_weights(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(".partial-" + path.name)  # Keras wants the .weights.h5 ending
    model.save_weights(tmp)
    _replace(tmp, path)


def _save_optimizer(optimizer: Any, path: Path) -> None:
    arrays = {f"v{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    tmp = path.with_name(".partial-" + path.name)
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    _replace(tmp, path)


def _save_state(state: dict[str, Any], directory: Path) -> None:
    """state.json, written last and atomically: it names the checkpoint files of its epoch, so
    whatever it names is complete."""
    saved = {k: v for k, v in state.items() if not k.startswith("_")}
    tmp = directory / (".partial-" + STATE_FILE)
    tmp.write_text(json.dumps(saved, indent=2))
    _replace(tmp, directory / STATE_FILE)
    named = {saved.get("best_weights"), saved.get("last_weights"), saved.get("last_optimizer")}
    for old in directory.glob("*-[0-9][0-9][0-9][0-9].*"):
        if old.name not in named and old.name.startswith(("best-", "last-")):
            old.unlink(missing_ok=True)


def _load_optimizer(optimizer: Any, model: keras.Model, path: Path) -> None:
    optimizer.build(model.trainable_variables)
    with np.load(path) as stored:
        values = [stored[f"v{i:04d}"] for i in range(len(stored.files))]
    if len(values) != len(optimizer.variables):
        raise TrainingError(
            f"{path}: optimizer state has {len(values)} tensors, expected {len(optimizer.variables)}; "
            "resume with the same --weights/--fine-tune-layers/--precision settings"
        )
    for variable, value in zip(optimizer.variables, values, strict=True):
        variable.assign(value)


def _checkpoint_file(directory: Path, state: dict[str, Any], key: str) -> Path:
    name = state.get(key)
    path = directory / str(name)
    if not name or not path.is_file():
        raise TrainingError(f"--resume: {directory / STATE_FILE} names {key} {name!r}, which is missing")
    return path


def _checkpoint_callback(
    config: TrainConfig,
    model: keras.Model,
    fit_model: keras.Model,
    validation: Any,
    val_y: np.ndarray,
    state: dict[str, Any],
    started: float,
    global_batch: int,
) -> Any:
    import keras

    directory = config.checkpoints

    class ValidationCheckpoint(keras.callbacks.Callback):
        """Validation mean AUROC each epoch (streamed); keeps the best weights; saves a resumable
        state: each epoch's files under new names, then state.json naming them (atomically)."""

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.batch_ends: list[float] = [time.monotonic()]

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.batch_ends.append(time.monotonic())

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs if logs is not None else {}
            trained = time.monotonic()
            probabilities = np.asarray(fit_model.predict(validation, verbose=0), dtype=np.float32)
            value, _ = mean_auroc(val_y, probabilities)
            logs["val_mean_auroc"] = value
            ends = self.batch_ends
            # throughput after the first batch, which includes building the graph
            steady = (len(ends) - 2) * global_batch / (ends[-1] - ends[1]) if len(ends) > 2 else None
            entry = {
                "epoch": epoch + 1,
                "loss": float(logs.get("loss", float("nan"))),
                "val_mean_auroc": None if np.isnan(value) else round(value, 4),
                "elapsed_s": round(time.monotonic() - started + state.get("elapsed_before_s", 0.0), 1),
                "train_s": round(trained - ends[0], 1),
                "train_images_per_s": None if steady is None else round(steady, 1),
                "validation_s": round(time.monotonic() - trained, 1),
            }
            state["history"].append(entry)
            improved = not np.isnan(value) and (state["best_auroc"] is None or value > state["best_auroc"])
            if improved:
                state["best_auroc"] = float(value)
                state["best_epoch"] = epoch + 1
                state["best_weights"] = f"best-{epoch + 1:04d}.weights.h5"
                _save_weights(model, directory / state["best_weights"])
            state["last_weights"] = f"last-{epoch + 1:04d}.weights.h5"
            state["last_optimizer"] = f"last-{epoch + 1:04d}.optimizer.npz"
            _save_weights(model, directory / state["last_weights"])
            _save_optimizer(fit_model.optimizer, directory / state["last_optimizer"])
            state["epochs_done"] = epoch + 1
            best = state["best_auroc"]
            print(
                f"epoch {epoch + 1}: loss {entry['loss']:.4f}, validation mean AUROC {value:.4f}"
                f"{' (best so far, saved)' if improved else f' (best {best:.4f})' if best else ''}",
                flush=True,
            )
            now = time.monotonic()
            epoch_seconds = now - state.get("_epoch_start", started)
            state["_epoch_start"] = now
            budget = config.time_budget_min
            if budget is not None and entry["elapsed_s"] + epoch_seconds > budget * 60.0:
                print(f"stopping: another epoch (~{epoch_seconds:.0f} s) would exceed the {budget:g} min budget",
                      flush=True)
                state["stopped_by_time_budget"] = budget
                self.model.stop_training = True
            _save_state(state, directory)

    return ValidationCheckpoint()


def train(config: TrainConfig) -> dict[str, Any]:
    """Train, then write the bundle (see `finalise`). Returns the card as a dict."""
    import keras
    import tensorflow as tf

    started = time.monotonic()
    placement = configure(config.precision, config.gpus, config.cpu_replicas)  # before any TF device use
    keras.utils.set_random_seed(config.seed)
    table = read_labels(config.labels_path)
    split = make_split(config, table)
    subsets = {name: table.subset(split.names(name)) for name in SPLIT_NAMES}
    for name in ("train", "validation"):
        if len(subsets[name]) == 0:
            raise TrainingError(f"the {name} split is empty; give more patients or other split lists")
    index = ImageIndex(config.images_dir)
    paths = {name: index.paths(subsets[name].images) for name in SPLIT_NAMES}  # every file found, once
    directory = config.checkpoints
    directory.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "history": [], "best_auroc": None, "best_epoch": None, "epochs_done": 0, "config": _config_dict(config)
    }
    if config.resume:
        state_path = directory / STATE_FILE
        if not state_path.is_file():
            raise TrainingError(f"--resume: no checkpoint in {directory} (missing {STATE_FILE})")
        state = json.loads(state_path.read_text())
        state["elapsed_before_s"] = state["history"][-1]["elapsed_s"] if state["history"] else 0.0
        state.pop("stopped_by_time_budget", None)

    print(
        f"data: {len(table)} images of {len(set(table.patients))} patients; split "
        + ", ".join(f"{n} {len(subsets[n])}" for n in SPLIT_NAMES),
        flush=True,
    )
    print(f"devices: {', '.join(placement.descriptions)}; precision {placement.policy}; global batch "
          f"{config.batch_size * placement.replicas} ({config.batch_size} per replica)", flush=True)
    clahe = clahe_settings() if config.clahe else None
    train_y = subsets["train"].targets
    val_y = subsets["validation"].targets
    from_scratch = config.weights == "none"
    pos_weight = positive_weights(train_y, cap=config.max_pos_weight)
    with placement.building():
        # the model (and any weights download) first: a wrong --weights fails before any training
        model, initial = build_initial_model(config.image_size, config.weights)
        trainable_layers = set_trainable(model, None if from_scratch else config.fine_tune_layers)
        fit_model = probabilities_model(model)
        optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
        fit_model.compile(
            optimizer=loss_scaled(optimizer) if placement.mixed else optimizer,
            loss=weighted_bce_loss(pos_weight),
            jit_compile=False,
        )
        initial_epoch = 0
        if config.resume:
            model.load_weights(_checkpoint_file(directory, state, "last_weights"))
            _load_optimizer(fit_model.optimizer, fit_model, _checkpoint_file(directory, state, "last_optimizer"))
            initial_epoch = int(state["epochs_done"])
            print(f"resuming after epoch {initial_epoch} from {directory}", flush=True)

    global_batch = config.batch_size * placement.replicas
    augmentation = Augmentation() if config.augment else None
    # a resumed run draws new orders and augmentations, not those of the first epochs again
    dataset = train_dataset(paths["train"], train_y, global_batch, config.image_size, augmentation,
                            seed=config.seed + initial_epoch, clahe=clahe, repeat=config.steps_per_epoch is not None)
    validation = image_batches(paths["validation"], config.image_size, VALIDATION_BATCH * placement.replicas,
                               clahe=clahe)
    callback = _checkpoint_callback(config, model, fit_model, validation, val_y, state, started, global_batch)
    fit_started = time.monotonic()
    state["_epoch_start"] = fit_started
    if initial_epoch < config.epochs:
        try:
            fit_model.fit(
                dataset,
                epochs=config.epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=config.steps_per_epoch,
                callbacks=[callback],
                shuffle=False,  # the tf.data pipeline shuffles
                verbose=1 if (config.progress and sys.stdout.isatty()) else 2,
            )
        except tf.errors.OpError as exc:
            failure = read_failure(exc)
            if failure is None:
                raise
            raise failure from exc
    fit_seconds = time.monotonic() - fit_started
    if state["best_epoch"] is None:
        raise TrainingError("no epoch had a defined validation AUROC; the validation split needs positives")
    best = state.get("best_weights")
    if best is None or not (directory / best).is_file():
        raise TrainingError(f"the best epoch's weights ({best}) are missing from {directory}")
    model.load_weights(directory / best)
    served = build_model(config.image_size)  # the float32, single-device model the service loads
    served.set_weights(model.get_weights())

    training_info = {
        "data": {
            "images": str(config.images_dir),
            "labels": str(config.labels_path),
            "n_images": len(table),
            "n_patients": len(set(table.patients)),
            "source": "NIH ChestX-ray14 (Wang et al., CVPR 2017; NIH Clinical Center)",
        },
        "split": split.as_dict(),
        "split_sizes": {
            name: {"images": len(subsets[name]), "patients": len(set(subsets[name].patients)),
                   "positives": subsets[name].positives()}
            for name in SPLIT_NAMES
        },
        "initial_weights": initial,
        "trainable_layers": "all" if from_scratch or config.fine_tune_layers is None
        else f"last {trainable_layers} layers with weights",
        "input_size": config.image_size,
        "epochs_run": int(state["epochs_done"]),
        "epochs_requested": config.epochs,
        "time_budget_min": config.time_budget_min,
        "stopped_by_time_budget": bool(state.get("stopped_by_time_budget")),
        "best_epoch": state["best_epoch"],
        "best_validation_mean_auroc": round(state["best_auroc"], 4),
        "selection": "weights of the epoch with the best validation mean AUROC",
        "batch_size": global_batch,
        **placement.as_dict(config.batch_size),
        "steps_per_epoch": config.steps_per_epoch,
        "input_pipeline": "streamed from disk (tf.data: reshuffled index, parallel decoding, prefetch)",
        "optimizer": f"Adam lr {config.learning_rate:g}",
        "loss": "binary cross-entropy, positives weighted per finding by negatives/positives in train"
        + (f" (capped at {config.max_pos_weight:g})" if config.max_pos_weight else ""),
        "pos_weight": {label: round(float(w), 3) for label, w in zip(FINDINGS, pos_weight, strict=True)},
        "augmentation": augmentation.as_dict() if augmentation else None,
        "seed": config.seed,
        "history": state["history"],
        "fit_wall_time_s": round(fit_seconds + state.get("elapsed_before_s", 0.0), 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores; " + ", ".join(placement.descriptions),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "date": datetime.now(UTC).date().isoformat(),
    }
    return finalise(served, config, subsets, training_info, index)


def finalise(
    model: keras.Model,
    config: TrainConfig,
    subsets: dict[str, LabelTable],
    training_info: dict[str, Any],
    index: ImageIndex | None = None,
) -> dict[str, Any]:
    """Save the bundle, then calibrate it and choose its thresholds on validation (`calibrate_bundle`)."""
    from shared.classifier import save_bundle

    save_bundle(
        model,
        config.out_dir,
        name=config.name or config.out_dir.name,
        trained=True,
        intended_use=RESEARCH_USE,
        training=training_info,
        note="research demo, not for clinical use",
        preprocessing={**PREPROCESSING, "clahe": clahe_settings()} if config.clahe else dict(PREPROCESSING),
        thresholds=dict.fromkeys(FINDINGS, 0.5),
        metrics={},
    )
    return calibrate_bundle(config.out_dir, config.images_dir, subsets, progress=config.progress, index=index)


def calibrate_bundle(
    bundle_dir: Path,
    images_dir: Path,
    subsets: dict[str, LabelTable],
    progress: bool = True,
    index: ImageIndex | None = None,
) -> dict[str, Any]:
    """Reload the bundle exactly as the service does, predict validation and test with the network's
    own outputs, fit the calibration and choose the thresholds on validation only, fit the frontal
    chest X-ray check (`training.frontal`), and rewrite card.json with them and the metrics (the
    weights, hence the version, stay the same); writes report.md, roc.png and reliability.png beside
    it. Returns the card as a dict."""
    from shared.classifier import Classifier, save_bundle
    from training.calibration import reliability_png, training_prevalence
    from training.evaluate import Evaluation, calibrate_and_evaluate, predict
    from training.frontal import fit_frontal
    from training.report import write_report

    classifier = Classifier.load(bundle_dir)
    previous = classifier.card
    images = index or ImageIndex(images_dir)  # the files, found once under images_dir
    validation = predict(classifier, images, subsets["validation"], progress=progress,
                         description="validation", calibrated=False)
    test = None
    if len(subsets["test"]):
        test = predict(classifier, images, subsets["test"], progress=progress, description="test",
                       calibrated=False)
    result = calibrate_and_evaluate(validation, test, training_prevalence(subsets["train"].targets))
    frontal = fit_frontal(bundle_dir, images, subsets["train"].images, subsets["validation"].images,
                          classifier.input_size, classifier.clahe)
    keep = {"name", "trained", "intended_use", "training", "note", "preprocessing"}
    card = save_bundle(
        classifier.model,
        bundle_dir,
        **{k: v for k, v in asdict(previous).items() if k in keep},
        thresholds=result.thresholds,
        calibration=result.calibration,
        frontal=frontal,
        metrics=result.metrics,
    )
    if card.version != previous.version:
        raise TrainingError("the weights changed between saves; the bundle is inconsistent")
    if test is not None and result.test is not None:
        write_report(card, Evaluation("test", result.metrics["test"], result.test), bundle_dir)
        reliability_png(test.targets, test.probabilities, result.test.probabilities, bundle_dir / RELIABILITY_FILE,
                        f"{card.name} {card.version}: test split, before and after calibration")
    return asdict(card)


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
