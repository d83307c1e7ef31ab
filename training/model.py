"""The trainable model: `shared.classifier.build_model` (the served architecture), initial weights,
which layers train, and the class-weighted loss."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.classifier import CARD_FILE, WEIGHTS_FILE, build_model, read_weights

if TYPE_CHECKING:
    import keras

IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{IMAGENET_NOTOP_FILE}"
IMAGENET_NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"


class WeightsError(RuntimeError):
    """Initial weights that cannot be obtained; the message says what to do instead."""


def imagenet_weights_path() -> Path:
    """Keras's ResNet50 ImageNet 'notop' weights (downloaded once into ~/.keras/models)."""
    import keras

    try:
        return Path(
            keras.utils.get_file(
                IMAGENET_NOTOP_FILE, IMAGENET_NOTOP_URL, cache_subdir="models", file_hash=IMAGENET_NOTOP_MD5
            )
        )
    except Exception as exc:  # network errors come in many types (URLError, OSError, HTTPError...)
        raise WeightsError(
            f"could not download the ImageNet ResNet50 weights from {IMAGENET_NOTOP_URL} ({exc}). "
            "--weights imagenet needs internet access. Download that file elsewhere and pass "
            "--weights /path/to/" + IMAGENET_NOTOP_FILE + ", or train from scratch with --weights none."
        ) from exc


def build_initial_model(input_size: int, weights: str) -> tuple[keras.Model, str]:
    """`build_model` with initial weights 'none' (random), 'imagenet', a bundle folder or a Keras
    ResNet50 notop weights file. Returns the model and a description for the card."""
    if weights == "none":
        return build_model(input_size), "random (from scratch)"
    if weights == "imagenet":
        path = imagenet_weights_path()
        return build_model(input_size, weights=path), "ImageNet (Keras ResNet50 notop)"
    path = Path(weights)
    if path.is_dir():
        if not (path / CARD_FILE).is_file():
            raise WeightsError(f"--weights {path}: a folder must be a model bundle with {CARD_FILE}")
        model = build_model(input_size)
        read_weights(model, path / WEIGHTS_FILE)
        return model, f"bundle {path.name}"
    if not path.is_file():
        raise WeightsError(f"--weights {weights}: not 'none', 'imagenet', a bundle folder or a weights file")
    try:
        model = build_model(input_size, weights=path)
    except (ValueError, OSError) as exc:
        raise WeightsError(f"--weights {path}: not a Keras ResNet50 notop weights file ({exc})") from exc
    return model, f"file {path.name}"


def set_trainable(model: keras.Model, fine_tune_layers: int | None) -> int:
    """Make only the last `fine_tune_layers` layers with weights trainable (all when None).

    Frozen batch-norm layers run in inference mode (Keras 3), keeping their pretrained statistics.
    Returns the number of trainable layers with weights.
    """
    weighted = [layer for layer in model.layers if layer.weights]
    if fine_tune_layers is not None and fine_tune_layers < 1:
        raise ValueError("--fine-tune-layers must be at least 1 (the classification head)")
    keep = len(weighted) if fine_tune_layers is None else min(fine_tune_layers, len(weighted))
    for i, layer in enumerate(weighted):
        layer.trainable = i >= len(weighted) - keep
    return keep


def probabilities_model(model: keras.Model) -> keras.Model:
    """A single-output view (probabilities only) sharing the layers of `model`, for `fit`."""
    import keras

    return keras.Model(inputs=model.inputs, outputs=model.outputs[0], name="resnet50_probabilities")


def loss_scaled(optimizer: Any) -> Any:
    """The optimizer wrapped in dynamic loss scaling, which float16 gradients need (mixed precision)."""
    import keras

    return keras.optimizers.LossScaleOptimizer(optimizer)


def positive_weights(targets: np.ndarray, cap: float | None = None) -> np.ndarray:
    """pos_weight per finding = negatives / positives in the training split (1 with no positives)."""
    targets = np.asarray(targets, dtype=np.float64)
    positives = targets.sum(axis=0)
    negatives = len(targets) - positives
    weights = np.divide(negatives, positives, out=np.ones_like(positives), where=positives > 0)
    if cap is not None:
        weights = np.minimum(weights, cap)
    return weights.astype(np.float32)


def weighted_bce_loss(pos_weight: np.ndarray) -> Any:
    """Binary cross-entropy with positives weighted per finding:
    mean over findings of -(w_k y log p + (1 - y) log(1 - p))."""
    import keras
    from keras import ops

    weight = ops.convert_to_tensor(np.asarray(pos_weight, dtype=np.float32))

    @keras.saving.register_keras_serializable(package="xray")
    def weighted_bce(y_true: Any, y_pred: Any) -> Any:
        eps = keras.config.epsilon()
        p = ops.clip(y_pred, eps, 1.0 - eps)
        y = ops.cast(y_true, p.dtype)
        loss = -(weight * y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p))
        return ops.mean(loss, axis=-1)

    return weighted_bce
