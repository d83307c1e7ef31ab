"""One image in, one Diagnosis out: probabilities, thresholds, CAMs and boxes for all 14 findings.

No database and no queue here: the worker wraps this with Celery, storage and SQL.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.frontal import FrontalCheck, FrontalReference, check
from shared.gradcam import Box, boxes_from_cams, class_activation_maps

if TYPE_CHECKING:
    from shared.classifier import Classifier
    from shared.images import XRayImage
    from shared.runtime import Predictor


@dataclass(frozen=True)
class FindingResult:
    """One finding of one image. `cam` is the low-resolution (h, w) map in [0, 1]."""

    label: str
    probability: float
    threshold: float
    positive: bool
    cam: np.ndarray = field(repr=False)
    box: Box | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probability": round(self.probability, 6),
            "threshold": self.threshold,
            "positive": self.positive,
            "box": None if self.box is None else self.box.as_dict(),
        }


@dataclass(frozen=True)
class Diagnosis:
    """All 14 findings of one image in canonical order, and what made them."""

    findings: list[FindingResult]
    model_version: str
    model_trained: bool
    runtime: str  # runtime and precision of the forward pass, e.g. openvino-bf16
    image_width: int
    image_height: int
    timings_ms: dict[str, float]
    frontal: FrontalCheck = FrontalCheck(flagged=False)  # flagged: not a frontal chest X-ray

    @property
    def positives(self) -> list[FindingResult]:
        """Findings at or above their threshold, in canonical order."""
        return [f for f in self.findings if f.positive]

    @property
    def no_finding(self) -> bool:
        return not any(f.positive for f in self.findings)

    @property
    def top(self) -> FindingResult:
        """The finding with the highest probability."""
        return max(self.findings, key=lambda f: f.probability)

    def finding(self, label: str) -> FindingResult:
        for result in self.findings:
            if result.label == label:
                return result
        raise KeyError(f"no finding {label!r} in this diagnosis")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no maps)."""
        return {
            "findings": [f.as_dict() for f in self.findings],
            "positives": [f.label for f in self.positives],
            "no_finding": self.no_finding,
            "model_version": self.model_version,
            "model_trained": self.model_trained,
            "runtime": self.runtime,
            "frontal_check": self.frontal.as_dict(),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


def heatmap_labels(diagnosis: Diagnosis) -> list[str]:
    """The findings worth a heatmap: the positives, or the top finding when none is positive."""
    positives = [f.label for f in diagnosis.positives]
    return positives or [diagnosis.top.label]


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class Diagnoser:
    """Runs a loaded Classifier on images: one batched forward pass, then CAMs and boxes, and the
    check that each image is a frontal chest X-ray (`shared.frontal`, with the bundle's reference).

    `classifier` may be any `shared.runtime.Predictor` (TensorFlow or OpenVINO): only its
    preprocess/predict/calibrate, thresholds, labels, version and dense kernel are used."""

    def __init__(self, classifier: Classifier | Predictor, frontal: FrontalReference | None = None) -> None:
        self.classifier = classifier
        self.frontal = frontal
        self._thresholds = classifier.thresholds
        self._labels = classifier.labels

    def diagnose(self, image: XRayImage) -> Diagnosis:
        return self.diagnose_many([image])[0]

    def diagnose_many(self, images: Sequence[XRayImage]) -> list[Diagnosis]:
        """Diagnose several images with one forward pass. timings_ms['forward'] is each image's
        share of the batch's forward pass; 'forward_batch' is the whole pass."""
        if not images:
            return []
        batch, preprocess_ms = self._preprocess(images)
        start = time.perf_counter()
        raw, features = self.classifier.predict(batch)
        probabilities = self.classifier.calibrate(raw)  # the card's calibration (identity if none)
        forward_ms = _ms_since(start)
        return [
            self._result(image, batch[i], probabilities[i], features[i], preprocess_ms[i], forward_ms, len(images))
            for i, image in enumerate(images)
        ]

    def _preprocess(self, images: Sequence[XRayImage]) -> tuple[np.ndarray, list[float]]:
        arrays, timings = [], []
        for image in images:
            start = time.perf_counter()
            arrays.append(self.classifier.preprocess(image.source))
            timings.append(_ms_since(start))
        return np.stack(arrays), timings

    def _result(
        self,
        image: XRayImage,
        model_input: np.ndarray,
        probabilities: np.ndarray,
        features: np.ndarray,
        preprocess_ms: float,
        forward_ms: float,
        batch_size: int,
    ) -> Diagnosis:
        start = time.perf_counter()
        cams = class_activation_maps(features, self.classifier.dense_kernel)
        boxes = boxes_from_cams(cams, image.width, image.height)
        findings = [
            self._finding(k, float(probabilities[k]), cams[k], boxes[k]) for k in range(len(self._labels))
        ]
        cam_ms = _ms_since(start)
        start = time.perf_counter()
        frontal = check(model_input, self.frontal, image.info.metadata)
        timings = {
            "preprocess": preprocess_ms,
            "forward": forward_ms / batch_size,
            "forward_batch": forward_ms,
            "cam": cam_ms,
            "frontal": _ms_since(start),
        }
        return Diagnosis(
            findings=findings,
            model_version=self.classifier.version,
            model_trained=self.classifier.trained,
            runtime=self.classifier.runtime_name,
            image_width=image.width,
            image_height=image.height,
            timings_ms=timings,
            frontal=frontal,
        )

    def _finding(self, k: int, probability: float, cam: np.ndarray, box: Box | None) -> FindingResult:
        threshold = float(self._thresholds[k])
        return FindingResult(
            label=self._labels[k],
            probability=probability,
            threshold=threshold,
            positive=probability >= threshold,
            cam=cam,
            box=box,
        )
