"""Image files -> streamed, preprocessed tf.data batches.

Decoding and preprocessing are the service's own calls (`shared.images.read_image_file`,
`shared.classifier.preprocess`), so the model is trained on exactly what it will be served. Images
are streamed from disk: only the (path, labels) index is held in memory, each epoch reshuffles it,
and the files are decoded in parallel while the model trains, so memory does not grow with the
number of images. Training batches are lightly augmented (small rotations, shifts, brightness and
contrast), never flipped: chest anatomy is not left-right symmetric and the service never sees a
flipped film.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.classifier import preprocess
from shared.config import ImageLimits

if TYPE_CHECKING:
    import tensorflow as tf

EXAMPLES = 3  # names quoted in an error


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


class ImageIndex:
    """Where each image name lives under one folder: the folder itself (a flat folder of PNGs) or any
    of its subfolders (NIH's `images_001/images/...` to `images_012/images/...`), found by one
    recursive scan. A name that occurs twice is kept aside, so asking for it is an error, never a
    silent choice between two files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root} is not a folder; --images takes the folder holding the images")
        self._paths: dict[str, str] = {}
        self._duplicates: dict[str, list[str]] = {}
        for folder, subfolders, files in os.walk(self.root, followlinks=True):
            subfolders.sort()
            for name in files:
                path = os.path.join(folder, name)
                if name in self._paths or name in self._duplicates:
                    self._duplicates.setdefault(name, [self._paths.pop(name, "")]).append(path)
                else:
                    self._paths[name] = path

    def __len__(self) -> int:
        return len(self._paths)

    def paths(self, names: Sequence[str]) -> list[str]:
        """The file of each name, in order; a clear error when any is missing or found twice."""
        twice = [name for name in names if name in self._duplicates]
        if twice:
            examples = "; ".join(f"{n} ({' and '.join(self._duplicates[n][:2])})" for n in twice[:EXAMPLES])
            raise DatasetError(f"{len(twice)} of {len(names)} images occur more than once under {self.root} "
                               f"(e.g. {examples}); keep one copy of each")
        missing = [name for name in names if name not in self._paths]
        if missing:
            raise DatasetError(
                f"{len(missing)} of {len(names)} images are not in {self.root} or its subfolders "
                f"(e.g. {', '.join(missing[:EXAMPLES])}); check --images"
            )
        return [self._paths[name] for name in names]


def image_paths(images_dir: str | Path | ImageIndex, names: Sequence[str]) -> list[str]:
    """`ImageIndex(images_dir).paths(names)`, reusing an index already built."""
    index = images_dir if isinstance(images_dir, ImageIndex) else ImageIndex(images_dir)
    return index.paths(names)


def preprocessed(
    path: str | Path, input_size: int, limits: ImageLimits | None = None, clahe: dict[str, Any] | None = None
) -> np.ndarray:
    """One file decoded and preprocessed exactly as the service does: (S, S, 3) float32."""
    try:
        return preprocess(load_pixels(Path(path), limits or ImageLimits()), input_size, clahe)
    except ValueError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc


def read_failure(exc: Exception) -> DatasetError | None:
    """The DatasetError behind a tf.data error (a file that could not be read inside the pipeline),
    as a DatasetError again; None for any other error."""
    text = str(getattr(exc, "message", exc))
    if "DatasetError" not in text:
        return None
    lines = [line.strip() for line in text.splitlines() if "cannot read" in line]
    return DatasetError(lines[0].split("DatasetError: ")[-1] if lines else text.strip().splitlines()[0])


def load_arrays(
    images_dir: str | Path | ImageIndex,
    names: Sequence[str],
    input_size: int,
    limits: ImageLimits | None = None,
    clahe: dict[str, Any] | None = None,
) -> np.ndarray:
    """Decode and preprocess `names` into one (N, S, S, 3) float32 array: for a handful of images
    (tests, checks); training and evaluation stream instead (`image_batches`, `train_dataset`)."""
    paths = image_paths(images_dir, names)
    out = np.empty((len(names), input_size, input_size, 3), dtype=np.float32)
    for i, path in enumerate(paths):
        out[i] = preprocessed(path, input_size, limits, clahe)
    return out


Loader = Callable[[str], np.ndarray]


def _loader(input_size: int, limits: ImageLimits | None, clahe: dict[str, Any] | None) -> Loader:
    limits = limits or ImageLimits()
    return lambda path: preprocessed(path, input_size, limits, clahe)


def _decoder(paths: Sequence[str], input_size: int, load: Loader) -> Callable[[Any], Any]:
    """A tf function: a batch of row numbers -> those files' (N, S, S, 3) images, decoded in Python by
    `load` (one call per batch, not per image: less switching on a busy CPU); tf.data decodes
    several batches at once."""
    import tensorflow as tf

    stored = np.asarray(paths, dtype=object)

    def decode(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), input_size, input_size, 3), dtype=np.float32)
        for i, row in enumerate(rows):
            out[i] = load(str(stored[int(row)]))
        return out

    def images(rows: Any) -> Any:
        return tf.ensure_shape(tf.numpy_function(decode, [rows], tf.float32, stateful=False),
                               [None, input_size, input_size, 3])

    return images


def image_batches(
    paths: Sequence[str],
    input_size: int,
    batch_size: int,
    limits: ImageLimits | None = None,
    clahe: dict[str, Any] | None = None,
    load: Loader | None = None,
) -> tf.data.Dataset:
    """The images of `paths` in their order, in batches of `batch_size` (the last may be smaller),
    decoded and preprocessed in parallel ahead of use: for predictions over a whole split."""
    import tensorflow as tf

    images = _decoder(paths, input_size, load or _loader(input_size, limits, clahe))
    rows = tf.data.Dataset.range(len(paths)).batch(batch_size)
    return rows.map(images, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


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
    paths: Sequence[str],
    y: np.ndarray,
    batch_size: int,
    input_size: int,
    augmentation: Augmentation | None = None,
    seed: int = 0,
    limits: ImageLimits | None = None,
    clahe: dict[str, Any] | None = None,
    repeat: bool = False,
    load: Loader | None = None,
) -> tf.data.Dataset:
    """Training batches streamed from `paths`: the index is reshuffled each epoch, the images decoded
    and preprocessed in parallel (`load`, default the service's own decoding), batched with their
    labels, augmented, prefetched. `repeat`: an endless stream (epochs then end after a number of
    steps) that still reshuffles after each pass over the data."""
    import tensorflow as tf

    labels = np.asarray(y, dtype=np.float32)
    if len(paths) != len(labels):
        raise DatasetError(f"{len(paths)} images but {len(labels)} label rows")
    if len(paths) == 0:
        raise DatasetError("no training images")
    rows = tf.data.Dataset.range(len(paths)).shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        rows = rows.repeat()
    images = _decoder(paths, input_size, load or _loader(input_size, limits, clahe))
    table = tf.constant(labels)
    dataset = rows.batch(batch_size).map(
        lambda batch: (images(batch), tf.gather(table, batch)), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if augmentation is not None:
        counter = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, counter)).map(
            lambda batch, s: (_augment_batch(batch[0], augmentation, tf.cast(s % (2**31), tf.int32)), batch[1]),
            num_parallel_calls=1,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)
