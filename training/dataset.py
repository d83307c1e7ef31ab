"""Images -> cached preprocessed arrays -> tf.data pipelines.

Decoding and preprocessing are the service's own calls (`shared.images.read_image_file`,
`shared.classifier.preprocess`), so the model is trained on exactly what it will be served. Each
image is preprocessed once and cached, in memory or, for data sets larger than memory, in a
memory-mapped float32 .npy file. Training batches are lightly augmented (small rotations, shifts,
brightness and contrast), never flipped: chest anatomy is not left-right symmetric and the service
never sees a flipped film.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from shared.classifier import PREPROCESSING, preprocess
from shared.config import ImageLimits

if TYPE_CHECKING:
    import tensorflow as tf


class DatasetError(ValueError):
    """Images that cannot be found or read; the message names them."""


@dataclass(frozen=True)
class Augmentation:
    """Light, anatomy-preserving augmentation (see the module docstring for why no flip)."""

    max_rotation_degrees: float = 5.0
    max_shift_fraction: float = 0.05
    max_brightness: float = 0.1  # shift by up to this many of the image's standard deviations
    max_contrast: float = 0.1  # scale around the image's mean by 1 +- this

    def as_dict(self) -> dict[str, Any]:
        return {
            "rotation_degrees": self.max_rotation_degrees,
            "shift_fraction": self.max_shift_fraction,
            "brightness_std": self.max_brightness,
            "contrast": self.max_contrast,
            "horizontal_flip": False,
        }


def load_pixels(path: Path, limits: ImageLimits) -> np.ndarray:
    """Decode one file the way the service does: what `preprocess` reads (`XRayImage.source`)."""
    from shared.images import read_image_file

    return read_image_file(path, limits).source


def load_arrays(
    images_dir: str | Path,
    names: Sequence[str],
    input_size: int,
    limits: ImageLimits | None = None,
    progress: bool = True,
    description: str = "images",
    clahe: dict[str, Any] | None = None,
) -> np.ndarray:
    """Decode and preprocess `names` from `images_dir` into one (N, S, S, 3) float32 array
    (`clahe`: the card's CLAHE settings, see `shared.classifier.preprocess`)."""
    images_dir = Path(images_dir)
    limits = limits or ImageLimits()
    missing = [name for name in names if not (images_dir / name).is_file()]
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(names)} images are not in {images_dir} "
            f"(e.g. {', '.join(missing[:3])}); check --images"
        )
    out = np.empty((len(names), input_size, input_size, 3), dtype=np.float32)
    for i, name in enumerate(tqdm(names, desc=f"decode {description}", unit="img", disable=not progress)):
        try:
            out[i] = preprocess(load_pixels(images_dir / name, limits), input_size, clahe)
        except ValueError as exc:
            raise DatasetError(f"cannot read {images_dir / name}: {exc}") from exc
    return out


CACHE_FORMAT = 1
CACHE_CHUNK = 256


def cache_key(images_dir: Path, names: Sequence[str], input_size: int, clahe: dict[str, Any] | None = None) -> str:
    """Identifies the cached arrays: the folder, the names in order, the size and the preprocessing."""
    identity = {
        "format": CACHE_FORMAT,
        "images": str(Path(images_dir).resolve()),
        "names": list(names),
        "input_size": input_size,
        "preprocessing": PREPROCESSING if not clahe else {**PREPROCESSING, "clahe": clahe},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def cached_arrays(
    images_dir: str | Path,
    names: Sequence[str],
    input_size: int,
    cache_dir: str | Path | None = None,
    limits: ImageLimits | None = None,
    progress: bool = True,
    description: str = "images",
    clahe: dict[str, Any] | None = None,
) -> np.ndarray:
    """`load_arrays`, kept in memory (cache_dir None) or memory-mapped from a .npy file in
    `cache_dir` that is written once and reused by later runs (e.g. `--resume`)."""
    if cache_dir is None:
        return load_arrays(images_dir, names, input_size, limits, progress, description, clahe)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{description}-{input_size}-{cache_key(Path(images_dir), names, input_size, clahe)}.npy"
    if not path.is_file():
        tmp = path.with_name(path.stem + ".partial.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(len(names), input_size, input_size, 3))
        for start in tqdm(range(0, len(names), CACHE_CHUNK), desc=f"cache {description}", unit="chunk",
                          disable=not progress):
            chunk = names[start : start + CACHE_CHUNK]
            out[start : start + len(chunk)] = load_arrays(images_dir, chunk, input_size, limits, False, clahe=clahe)
        out.flush()
        del out
        tmp.replace(path)
    return np.load(path, mmap_mode="r")


def _augment_batch(images: tf.Tensor, augmentation: Augmentation, seed: tf.Tensor) -> tf.Tensor:
    """Random rotation + shift (one affine warp, nearest fill), brightness and contrast, per image."""
    import tensorflow as tf

    shape = tf.shape(images)
    n, height, width = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 5)
    angle = tf.random.stateless_uniform([n], seeds[0], -1.0, 1.0) * (
        augmentation.max_rotation_degrees * np.pi / 180.0
    )
    dx = tf.random.stateless_uniform([n], seeds[1], -1.0, 1.0) * augmentation.max_shift_fraction * width
    dy = tf.random.stateless_uniform([n], seeds[2], -1.0, 1.0) * augmentation.max_shift_fraction * height
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2): rotation about the
    # centre, then a shift.
    a2 = cx - cos * cx + sin * cy - dx
    b2 = cy - sin * cx - cos * cy - dy
    zeros = tf.zeros_like(angle)
    transforms = tf.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )
    mean = tf.reduce_mean(warped, axis=[1, 2], keepdims=True)
    std = tf.math.reduce_std(warped, axis=[1, 2], keepdims=True)
    contrast = 1.0 + tf.random.stateless_uniform([n, 1, 1, 1], seeds[3], -1.0, 1.0) * augmentation.max_contrast
    brightness = tf.random.stateless_uniform([n, 1, 1, 1], seeds[4], -1.0, 1.0) * augmentation.max_brightness
    # Same draw for all channels: the preprocessing is affine per channel, so this is a brightness /
    # contrast change of the greyscale image whatever the normalisation.
    return mean + contrast * (warped - mean) + brightness * std


def train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    augmentation: Augmentation | None = None,
    seed: int = 0,
) -> tf.data.Dataset:
    """Shuffled batches (reshuffled each epoch) gathered from the cached arrays, augmented."""
    import tensorflow as tf

    if len(x) != len(y):
        raise DatasetError(f"{len(x)} images but {len(y)} label rows")
    if len(x) == 0:
        raise DatasetError("no training images")

    def gather(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.sort(rows)
        return x[rows], y[rows]

    size = x.shape[1]
    dataset = tf.data.Dataset.range(len(x)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(
        lambda rows: tf.numpy_function(gather, [rows], (tf.float32, tf.float32), stateful=False),
        num_parallel_calls=1,
    )
    dataset = dataset.map(
        lambda images, labels: (
            tf.ensure_shape(images, [None, size, size, 3]),
            tf.ensure_shape(labels, [None, y.shape[1]]),
        )
    )
    if augmentation is not None:
        counter = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, counter)).map(
            lambda batch, s: (_augment_batch(batch[0], augmentation, tf.cast(s % (2**31), tf.int32)), batch[1]),
            num_parallel_calls=1,
        )
    return dataset.prefetch(2)
