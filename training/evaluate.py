"""Evaluating a bundle on a patient-disjoint split.

Calibration and thresholds are chosen on the VALIDATION split (`training.calibration`) and only
applied to the test split. Confidence intervals resample patients (`training.bootstrap`).
Everything here is deterministic: fixed prediction batch size, fixed bootstrap seed, so
`xray evaluate` reproduces the numbers written into card.json at training time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.calibration import apply_calibration
from shared.config import ImageLimits
from shared.findings import FINDINGS, index_of
from training.bootstrap import patient_bootstrap
from training.calibration import (
    calibration_metrics,
    choose_thresholds,
    fit_calibration,
    positives_per_study,
    threshold_rule,
)
from training.dataset import ImageIndex, image_batches, image_paths, read_failure
from training.labels import BBOX_FRAME, BoundingBox, LabelTable, read_boxes, read_labels
from training.metrics import (
    auroc,
    binary_counts,
    iobb,
    micro_scores,
    nanmean,
)
from training.splits import Split, SplitError, split_by_patient, split_from_lists

if TYPE_CHECKING:
    from shared.classifier import Classifier

PREDICT_BATCH = 16  # fixed, so that predictions (and so metrics) do not depend on a setting
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
IOBB_THRESHOLDS = (0.1, 0.25, 0.5)
ROUND = 4


@dataclass
class Predictions:
    """Model outputs for one split: image names, 0/1 targets (N, 14), probabilities (N, 14)."""

    names: tuple[str, ...]
    patients: tuple[str, ...]
    targets: np.ndarray
    probabilities: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)  # only for images asked for


def _r(value: float) -> float | None:
    """Round for the card; NaN becomes None (JSON null, shown as n/a)."""
    return None if value is None or np.isnan(value) else round(float(value), ROUND)


def _numpy_batches(batches: Any) -> Iterator[np.ndarray]:
    """The pipeline's batches; a file that cannot be read is a DatasetError naming it."""
    import tensorflow as tf

    iterator = batches.as_numpy_iterator()
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as exc:
            failure = read_failure(exc)
            if failure is None:
                raise
            raise failure from exc


def predict(
    classifier: Classifier,
    images_dir: str | Path | ImageIndex,
    table: LabelTable,
    keep_features_for: set[str] | None = None,
    limits: ImageLimits | None = None,
    progress: bool = True,
    description: str = "images",
    calibrated: bool = True,
) -> Predictions:
    """Predict every image of `table`, streamed from disk (decoded and preprocessed in parallel, in
    the table's order, batches of the fixed PREDICT_BATCH); the probabilities are the served ones
    (the card's calibration applied) unless `calibrated` is False. Memory holds a few batches and
    the (N, 14) probabilities, whatever N."""
    from tqdm import tqdm

    keep = keep_features_for or set()
    paths = image_paths(images_dir, table.images)
    probabilities = np.zeros((len(table), len(FINDINGS)), dtype=np.float32)
    features: dict[str, np.ndarray] = {}
    batches = image_batches(paths, classifier.input_size, PREDICT_BATCH, limits, classifier.clahe)
    start = 0
    with tqdm(total=len(paths), desc=f"predict {description}", unit="img", disable=not progress) as bar:
        for batch in _numpy_batches(batches):
            raw, feats = classifier.predict(batch)
            probabilities[start : start + len(raw)] = classifier.calibrate(raw) if calibrated else raw
            for i, name in enumerate(table.images[start : start + len(raw)]):
                if name in keep:
                    features[name] = feats[i]
            start += len(raw)
            bar.update(len(raw))
    if start != len(table):
        raise RuntimeError(f"predicted {start} of {len(table)} images")
    return Predictions(table.images, table.patients, table.targets.copy(), probabilities, features)


def classification_metrics(
    predictions: Predictions,
    thresholds: dict[str, float],
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Per-finding AUROC (+95 % interval resampling patients, n positives), precision/recall/F1 at
    `thresholds`, mean AUROC over findings where it is defined (+ its interval), and micro-averaged
    precision/recall/F1."""
    per_finding: dict[str, dict[str, Any]] = {}
    aurocs: list[float] = []
    intervals = patient_bootstrap(predictions.targets, predictions.probabilities, predictions.patients,
                                  n_resamples=n_resamples, seed=seed)
    for k, label in enumerate(FINDINGS):
        y = predictions.targets[:, k]
        scores = predictions.probabilities[:, k]
        value = auroc(y, scores)
        low, high = intervals.per_finding[k]
        counts = binary_counts(y, scores >= thresholds[label])
        aurocs.append(value)
        per_finding[label] = {
            "n_positive": int(y.sum()),
            "n_positive_patients": len({predictions.patients[i] for i in np.flatnonzero(y)}),
            "n_negative": int(len(y) - y.sum()),
            "auroc": _r(value),
            "auroc_ci95": [_r(low), _r(high)],
            "threshold": _r(thresholds[label]),
            "precision": _r(counts.precision),
            "recall": _r(counts.recall),
            "f1": _r(counts.f1),
            "tp": counts.tp,
            "fp": counts.fp,
            "fn": counts.fn,
            "tn": counts.tn,
        }
    cut = np.array([thresholds[label] for label in FINDINGS])
    micro_p, micro_r, micro_f1 = micro_scores(predictions.targets, predictions.probabilities >= cut)
    defined = [label for label, v in zip(FINDINGS, aurocs, strict=True) if not np.isnan(v)]
    return {
        "n_images": len(predictions.names),
        "n_patients": len(set(predictions.patients)),
        "mean_auroc": _r(nanmean(aurocs)),
        "mean_auroc_ci95": [_r(intervals.mean[0]), _r(intervals.mean[1])],
        "mean_auroc_findings": len(defined),
        "micro": {"precision": _r(micro_p), "recall": _r(micro_r), "f1": _r(micro_f1)},
        "per_finding": per_finding,
        "bootstrap": {"resamples": n_resamples, "seed": seed, "unit": "patient"},
    }


def localisation_metrics(
    classifier: Classifier, predictions: Predictions, boxes: Sequence[BoundingBox]
) -> dict[str, Any]:
    """Wang et al. 2017: per finding, the share of radiologist boxes that the CAM box of that
    finding overlaps with IoBB above 0.1 / 0.25 / 0.5. Boxes are compared in NIH's 1024 frame."""
    from shared.gradcam import box_from_cam, class_activation_maps

    hits: dict[str, list[float]] = {}
    for box in boxes:
        features = predictions.features.get(box.image)
        if features is None:
            continue
        cams = class_activation_maps(features, classifier.dense_kernel)
        detected = box_from_cam(cams[index_of(box.label)], BBOX_FRAME, BBOX_FRAME)
        value = 0.0
        if detected is not None:
            value = iobb(
                (box.x, box.y, box.width, box.height),
                (detected.x, detected.y, detected.width, detected.height),
            )
        hits.setdefault(box.label, []).append(value)
    per_finding = {
        label: {
            "n_boxes": len(values),
            **{f"iobb>{t:g}": _r(float(np.mean([v > t for v in values]))) for t in IOBB_THRESHOLDS},
        }
        for label, values in sorted(hits.items(), key=lambda item: index_of(item[0]))
    }
    return {"n_boxes": sum(len(v) for v in hits.values()), "per_finding": per_finding, "box_fraction": 0.5}


@dataclass
class Calibrated:
    """What `calibrate_and_evaluate` chose on validation and measured on both splits."""

    calibration: dict[str, Any]
    thresholds: dict[str, float]
    metrics: dict[str, Any]  # the card's `metrics`
    validation: Predictions  # calibrated probabilities
    test: Predictions | None


def _with_probabilities(predictions: Predictions, probabilities: np.ndarray) -> Predictions:
    return Predictions(predictions.names, predictions.patients, predictions.targets,
                       np.asarray(probabilities, dtype=np.float32), predictions.features)


def calibrate_and_evaluate(
    validation: Predictions, test: Predictions | None, prevalence: np.ndarray
) -> Calibrated:
    """From the network's outputs (uncalibrated predictions): calibration and thresholds fitted on
    the validation predictions ONLY (`training.calibration`), then metrics of both splits with the
    calibrated probabilities at those thresholds, and ECE / Brier before and after calibration.
    `prevalence` is each finding's share of positives in the training split."""
    calibration = fit_calibration(validation.targets, validation.probabilities, prevalence)
    val_cal = _with_probabilities(validation, apply_calibration(validation.probabilities, calibration, FINDINGS))
    thresholds, sources = choose_thresholds(val_cal.targets, val_cal.probabilities, prevalence)
    metrics: dict[str, Any] = {
        "thresholds_from": threshold_rule(),
        "threshold_sources": sources,
        "training_prevalence": {label: round(float(p), ROUND) for label, p in zip(FINDINGS, prevalence, strict=True)},
        "validation": {"split": "validation", **classification_metrics(val_cal, thresholds)},
    }
    test_cal = None
    if test is not None:
        test_cal = _with_probabilities(test, apply_calibration(test.probabilities, calibration, FINDINGS))
        metrics["test"] = {"split": "test", **classification_metrics(test_cal, thresholds)}
        metrics["calibration_test"] = calibration_metrics(test.targets, test.probabilities, test_cal.probabilities)
        metrics["positives_per_study_test"] = positives_per_study(test.targets, test_cal.probabilities, thresholds)
    return Calibrated(calibration, thresholds, metrics, val_cal, test_cal)


def split_for_bundle(
    classifier: Classifier, table: LabelTable, split_lists: str | Path | None = None
) -> Split:
    """The split recorded in the bundle's card (so anyone re-evaluates on the same images);
    else NIH's lists when given; else the deterministic patient-hash split."""
    recorded = classifier.card.training.get("split") if classifier.card.training else None
    if recorded and all(name in recorded for name in ("train", "validation", "test")):
        return Split.from_dict(recorded)
    if split_lists is not None:
        return split_from_lists(table, split_lists)
    return split_by_patient(table)


@dataclass
class Evaluation:
    split: str
    metrics: dict[str, Any]
    predictions: Predictions


def evaluate_bundle(
    bundle_dir: str | Path,
    images_dir: str | Path,
    labels_path: str | Path,
    split_name: str = "test",
    bbox_path: str | Path | None = None,
    split_lists: str | Path | None = None,
    progress: bool = True,
) -> Evaluation:
    """Load a bundle and evaluate it on one split at the card's thresholds."""
    from shared.classifier import Classifier

    classifier = Classifier.load(bundle_dir)
    table = read_labels(labels_path)
    split = split_for_bundle(classifier, table, split_lists)
    names = split.names(split_name)
    if not names:
        raise SplitError(f"the {split_name} split is empty")
    return evaluate_classifier(classifier, images_dir, table.subset(names), split_name, bbox_path, progress)


def evaluate_classifier(
    classifier: Classifier,
    images_dir: str | Path,
    table: LabelTable,
    split_name: str,
    bbox_path: str | Path | None = None,
    progress: bool = True,
) -> Evaluation:
    thresholds = {label: float(classifier.card.thresholds[label]) for label in FINDINGS}
    boxes = [b for b in read_boxes(bbox_path) if b.image in set(table.images)] if bbox_path else []
    predictions = predict(
        classifier, images_dir, table, {b.image for b in boxes}, progress=progress, description=split_name
    )
    metrics = {"split": split_name, **classification_metrics(predictions, thresholds)}
    if bbox_path:
        metrics["localisation"] = localisation_metrics(classifier, predictions, boxes)
    return Evaluation(split_name, metrics, predictions)


def compare_metrics(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Differences between two metric dicts (keys present in both), as readable lines."""
    differences: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in a.keys() & b.keys():
                walk(a[key], b[key], f"{where}.{key}" if where else str(key))
        elif a != b:
            differences.append(f"{where}: card {a!r}, now {b!r}")

    walk(expected, actual, "")
    return sorted(differences)
