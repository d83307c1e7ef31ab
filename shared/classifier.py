"""The model bundle (weights + card.json), ResNet50, the one preprocessing and one compiled forward pass.

A bundle is a folder `models/<name>/` holding `weights.npz` (the model's weight list: kernels as
float16, vectors such as batch-norm statistics and biases as float32, written deterministically so
that equal weights give an equal file and so an equal version) and `card.json` (the `ModelCard`).

TensorFlow is imported inside the functions that need it: importing this module stays cheap, so
the web process may read a card without loading TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.calibration import CalibrationError, apply_calibration, validate_calibration
from shared.findings import FINDINGS
from shared.resize import resize_grey

try:  # optional C extension (setup.py): preprocess's last step in one pass
    from shared import _resample
except ImportError:  # pragma: no cover - depends on the build
    _resample = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import keras

ARCHITECTURE = "resnet50"
CAM_LAYER = "conv5_block3_out"
PROBABILITIES_LAYER = "probabilities"
CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.npz"
UNTRAINED_NOTE = "UNTRAINED: random weights, results are meaningless"
DEFAULT_INTENDED_USE = (
    "Triage aid for adult chest X-rays (PA/AP): orders a worklist and points at regions to look at. "
    "It never replaces a clinician's reading."
)

# ImageNet 'caffe' normalisation (what keras.applications.resnet50 ImageNet weights expect): the
# greyscale image scaled to [0, 255], copied to B, G and R, each channel minus its ImageNet mean.
CAFFE_MEAN_BGR: tuple[float, float, float] = (103.939, 116.779, 123.68)
PREPROCESSING: dict[str, Any] = {
    "function": "shared.classifier.preprocess",
    "input": "greyscale float32 in [0, 1], 0 = black (MONOCHROME2 sense)",
    "resize": "Pillow bilinear (antialiased when shrinking) to input_size x input_size, aspect not kept",
    "scale": 255.0,
    "channels": "greyscale replicated to 3 channels, order BGR",
    "normalisation": "caffe: subtract ImageNet mean per channel, no division",
    "mean_bgr": list(CAFFE_MEAN_BGR),
}

# Weight tensors with at least this many dimensions (convolution and dense kernels) are stored as
# float16; vectors (batch-norm statistics, biases) stay float32, where float16 would lose tiny
# variances. A ResNet50 bundle is then about 47 MB instead of 94 MB.
_HALF_PRECISION_MIN_NDIM = 2
_UINT8_WHITE = 255.0
# CLAHE defaults (when a bundle is trained with --clahe): 4x4 tiles at the input size (16 px tiles
# at 64 px), clip limit 2 (OpenCV's convention: multiples of a flat histogram's bin height).
CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILES = 4
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class BundleError(ValueError):
    """A model bundle is missing, unreadable or does not match what this code serves."""


@dataclass
class ModelCard:
    """What `card.json` holds. `version` is the first 16 hex of the weights file's sha256."""

    name: str
    input_size: int
    version: str
    trained: bool
    architecture: str = ARCHITECTURE
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(PREPROCESSING))
    labels: list[str] = field(default_factory=lambda: list(FINDINGS))
    thresholds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FINDINGS, 0.5))
    calibration: dict[str, Any] = field(default_factory=dict)  # shared.calibration; {} = none
    frontal: dict[str, Any] = field(default_factory=dict)  # shared.frontal (the limit); {} = header check only
    cam_layer: str = CAM_LAYER
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    intended_use: str = DEFAULT_INTENDED_USE
    created: str = ""
    weights_file: str = WEIGHTS_FILE
    note: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "card.json") -> ModelCard:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in ("name", "input_size", "version", "trained") if n not in data]
        if missing:
            raise BundleError(f"{source}: missing field(s) {', '.join(missing)}")
        card = cls(**{k: v for k, v in data.items() if k in known})
        validate_card(card, source)
        return card


def validate_card(card: ModelCard, source: str = "card.json") -> None:
    """Refuse a card this code cannot serve, saying what is wrong."""
    if card.architecture != ARCHITECTURE:
        raise BundleError(f"{source}: architecture {card.architecture!r} is not supported; expected 'resnet50'")
    if list(card.labels) != list(FINDINGS):
        raise BundleError(
            f"{source}: labels must be the 14 findings in canonical order {list(FINDINGS)}, got {card.labels}"
        )
    if card.cam_layer != CAM_LAYER:
        raise BundleError(f"{source}: cam_layer {card.cam_layer!r} is not supported; expected {CAM_LAYER!r}")
    if not isinstance(card.input_size, int) or not 32 <= card.input_size <= 1024:
        raise BundleError(f"{source}: input_size must be a whole number from 32 to 1024, got {card.input_size!r}")
    if set(card.thresholds) != set(FINDINGS):
        raise BundleError(f"{source}: thresholds must give one value for each of the 14 findings")
    bad = [k for k, v in card.thresholds.items() if not isinstance(v, int | float) or not 0.0 <= v <= 1.0]
    if bad:
        raise BundleError(f"{source}: thresholds must be within [0, 1]; wrong for {', '.join(bad)}")
    if not isinstance(card.trained, bool):
        raise BundleError(f"{source}: trained must be true or false")
    try:
        validate_calibration(card.calibration, card.labels)
    except CalibrationError as exc:
        raise BundleError(f"{source}: {exc}") from None


# ----------------------------------------------------------------------------- preprocessing


def clahe_settings(clip_limit: float = CLAHE_CLIP_LIMIT, tiles: int = CLAHE_TILES) -> dict[str, Any]:
    """The card's `preprocessing.clahe` entry for contrast-limited histogram equalisation."""
    return {"clip_limit": float(clip_limit), "tiles": int(tiles), "applied": "after the resize, on 8-bit levels",
            "library": "OpenCV createCLAHE"}


def equalise(resized: np.ndarray, white: float, clahe: Mapping[str, Any]) -> np.ndarray:
    """CLAHE (OpenCV) of an already resized image with values in [0, white]: applied at the input
    size, so a full-size image and its thumbnail are equalised alike. Returns float32 in [0, white]."""
    try:
        import cv2
    except ImportError:
        raise BundleError("this model's preprocessing uses CLAHE, which needs OpenCV: "
                          "pip install opencv-python-headless") from None
    levels = np.clip(np.rint(resized * (_UINT8_WHITE / white)), 0, 255).astype(np.uint8)
    tiles = int(clahe["tiles"])
    equalised = cv2.createCLAHE(clipLimit=float(clahe["clip_limit"]), tileGridSize=(tiles, tiles)).apply(levels)
    return equalised.astype(np.float32) * np.float32(white / _UINT8_WHITE)


def preprocess(pixels: np.ndarray, input_size: int, clahe: Mapping[str, Any] | None = None) -> np.ndarray:
    """The ONE preprocessing (service and training): (H, W) greyscale -> (S, S, 3) float32.

    `pixels` is float in [0, 1], or the uint8 levels of an 8-bit image (`shared.images.XRayImage.
    source`: level / 255 is the same grey, and the resize reads the levels without a float copy).
    `clahe` (the card's `preprocessing.clahe`, see `clahe_settings`) equalises after the resize."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"preprocess expects a greyscale (H, W) array, got shape {pixels.shape}")
    white = _UINT8_WHITE if pixels.dtype == np.uint8 else 1.0
    scale = np.float32(PREPROCESSING["scale"] / white)
    scaled = resize_grey(pixels, input_size)  # a new float32 array: changed in place below
    if clahe:
        scaled = equalise(scaled, white, clahe)
    out = np.empty((input_size, input_size, 3), dtype=np.float32)
    if _resample is not None:  # the same operations in one pass (shared/_resample.c)
        _resample.channels_f32(scaled, out, scaled.size, white, scale, *CAFFE_MEAN_BGR)
        return out
    np.clip(scaled, 0.0, white, out=scaled)
    scaled *= scale
    np.subtract(scaled[:, :, None], np.asarray(CAFFE_MEAN_BGR, dtype=np.float32), out=out)
    return out


# ----------------------------------------------------------------------------- model


def build_model(input_size: int, weights: str | Path | None = None) -> keras.Model:
    """ResNet50 (no top) + global average pooling + Dense(14, sigmoid).

    Outputs `[probabilities (N, 14), features (N, h, w, 2048)]`, features being `conv5_block3_out`.
    `weights` is None (random) or the path of a Keras ResNet50 'notop' weights file (e.g. ImageNet).
    """
    import keras

    base = keras.applications.ResNet50(
        include_top=False,
        weights=None if weights is None else str(weights),
        input_shape=(input_size, input_size, 3),
    )
    features = base.get_layer(CAM_LAYER).output
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    # float32 even when training under mixed precision, so the probabilities and the loss stay float32
    probabilities = keras.layers.Dense(
        len(FINDINGS), activation="sigmoid", name=PROBABILITIES_LAYER, dtype="float32"
    )(pooled)
    return keras.Model(inputs=base.input, outputs=[probabilities, features], name="resnet50_chestxray14")


def dense_layer(model: keras.Model) -> Any:
    return model.get_layer(PROBABILITIES_LAYER)


def _weight_names(model: keras.Model) -> list[str]:
    return [w.path for w in model.weights]


def _stored_array(value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    if value.ndim >= _HALF_PRECISION_MIN_NDIM:
        half = value.astype(np.float16)
        if not np.all(np.isfinite(half)):
            raise BundleError("a weight does not fit in float16 (overflow); cannot store the bundle compactly")
        return half
    return value.astype(np.float32)


def write_weights(model: keras.Model, path: Path) -> None:
    """Write the weight list as a deterministic .npz (fixed zip dates, fixed order)."""
    names = _weight_names(model)
    arrays = {f"w{i:04d}": _stored_array(v) for i, v in enumerate(model.get_weights())}
    arrays["names"] = np.asarray(names)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, value, allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE), buffer.getvalue())
    tmp.replace(path)


def read_weights(model: keras.Model, path: Path) -> None:
    """Load a weights.npz into a model built by `build_model`, checking names and shapes."""
    with np.load(path, allow_pickle=False) as stored:
        names = [str(n) for n in stored["names"]]
        expected = _weight_names(model)
        if names != expected:
            raise BundleError(
                f"{path}: the weights do not match this architecture "
                f"({len(names)} tensors stored, {len(expected)} expected)"
            )
        values = [stored[f"w{i:04d}"].astype(np.float32) for i in range(len(names))]
    for name, value, var in zip(names, values, model.weights, strict=True):
        if tuple(value.shape) != tuple(var.shape):
            raise BundleError(f"{path}: weight {name} has shape {value.shape}, expected {tuple(var.shape)}")
    model.set_weights(values)


def file_version(path: Path) -> str:
    """First 16 hex digits of the sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def save_bundle(model: keras.Model, directory: str | Path, **card_fields: Any) -> ModelCard:
    """Write weights.npz and card.json into `directory`; returns the card (version = weights hash).

    `card_fields` fill the card (name, trained, thresholds, metrics, training, ...); `input_size`
    comes from the model; `trained` defaults to False so a bundle only claims training if told.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_path = directory / WEIGHTS_FILE
    write_weights(model, weights_path)
    fields = {
        "name": directory.name,
        "trained": False,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **card_fields,
        "input_size": int(model.input_shape[1]),
        "version": file_version(weights_path),
        "weights_file": WEIGHTS_FILE,
    }
    thresholds = fields.get("thresholds")
    if isinstance(thresholds, dict) and set(thresholds) == set(FINDINGS):
        fields["thresholds"] = {label: float(thresholds[label]) for label in FINDINGS}  # canonical order
    card = ModelCard(**fields)
    validate_card(card, str(directory / CARD_FILE))
    tmp = directory / (CARD_FILE + ".tmp")
    tmp.write_text(card.to_json())
    tmp.replace(directory / CARD_FILE)
    return card


def init_bundle(directory: str | Path, input_size: int = 224, seed: int = 0) -> ModelCard:
    """An UNTRAINED bundle: random weights (seeded), thresholds 0.5, no metrics, said loudly."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(input_size)
    return save_bundle(
        model,
        directory,
        trained=False,
        thresholds=dict.fromkeys(FINDINGS, 0.5),
        metrics={},
        training={"data": None, "seed": seed, "note": UNTRAINED_NOTE},
        intended_use=f"{UNTRAINED_NOTE}. For testing the pipeline only, never for patients.",
        note=UNTRAINED_NOTE,
    )


def read_card(directory: str | Path) -> ModelCard:
    """Read and validate `card.json` without TensorFlow (what the web may show)."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise BundleError(
            f"no model bundle at {Path(directory)} (missing {CARD_FILE}); "
            "run `xray model init DIR` for an untrained one, or train one"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not a readable JSON model card ({exc})") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path}: a model card must be a JSON object")
    return ModelCard.from_dict(data, str(path))


# ----------------------------------------------------------------------------- serving


class CardBacked:
    """What every predictor derives from its card: version, training flag, input size, labels,
    thresholds (in label order) and the one preprocessing. Subclasses set `self.card`."""

    card: ModelCard

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def trained(self) -> bool:
        return self.card.trained

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.card.labels)

    @property
    def thresholds(self) -> np.ndarray:
        return np.asarray([self.card.thresholds[label] for label in self.labels], dtype=np.float32)

    @property
    def clahe(self) -> dict[str, Any] | None:
        """The card's CLAHE settings, None when the model was trained without it."""
        return self.card.preprocessing.get("clahe") or None

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        return preprocess(pixels, self.input_size, self.clahe)

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """The probabilities served and evaluated: the card's calibration applied to the network's
        outputs (N, 14) (unchanged when the card has none). Every runtime goes through this."""
        return apply_calibration(raw, self.card.calibration, self.labels)


class Classifier(CardBacked):
    """A loaded bundle with one compiled forward pass (fixed input signature, no retracing)."""

    def __init__(self, model: keras.Model, card: ModelCard) -> None:
        import tensorflow as tf

        validate_card(card)
        self.model = model
        self.card = card
        kernel, bias = dense_layer(model).get_weights()
        self.dense_kernel: np.ndarray = np.asarray(kernel, dtype=np.float32)
        self.dense_bias: np.ndarray = np.asarray(bias, dtype=np.float32)
        size = card.input_size
        signature = [tf.TensorSpec([None, size, size, 3], tf.float32, name="images")]
        self._forward = tf.function(self._call, input_signature=signature)

    def _call(self, images: Any) -> tuple[Any, Any]:
        probabilities, features = self.model(images, training=False)
        return probabilities, features

    @classmethod
    def load(cls, directory: str | Path) -> Classifier:
        directory = Path(directory)
        card = read_card(directory)
        weights_path = directory / card.weights_file
        if not weights_path.is_file():
            raise BundleError(f"{directory}: weights file {card.weights_file} is missing")
        actual = file_version(weights_path)
        if actual != card.version:
            raise BundleError(
                f"{directory}: weights hash {actual} does not match the card's version {card.version}; "
                "the bundle was changed after it was saved"
            )
        model = build_model(card.input_size)
        read_weights(model, weights_path)
        return cls(model, card)

    runtime_name = "tensorflow-f32"  # what shared.runtime calls TensorFlow's float32 forward pass

    @property
    def tracing_count(self) -> int:
        """How many times the forward pass was traced (stays 1 once called)."""
        return int(self._forward.experimental_get_tracing_count())

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) preprocessed -> (probabilities (N, 14), features (N, h, w, 2048)), numpy."""
        batch = np.asarray(batch, dtype=np.float32)
        size = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ValueError(f"predict expects a batch of shape (N, {size}, {size}, 3), got {batch.shape}")
        probabilities, features = self._forward(batch)
        return probabilities.numpy(), features.numpy()
