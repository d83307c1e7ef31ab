"""The training input pipeline: the service's decoding and preprocessing, caching, tf.data batches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from shared.classifier import preprocess
from shared.config import ImageLimits
from shared.images import read_image
from training.dataset import Augmentation, DatasetError, _augment_batch, cached_arrays, load_arrays, train_dataset
from training.labels import read_labels


@pytest.fixture(scope="module")
def names(nih64_dir: Path) -> tuple[str, ...]:
    return read_labels(nih64_dir / "Data_Entry.csv").images


def test_arrays_are_exactly_what_the_service_computes(nih64_dir: Path, names: tuple[str, ...]) -> None:
    chosen = list(names[:5])
    arrays = load_arrays(nih64_dir / "images", chosen, 224, progress=False)
    for name, array in zip(chosen, arrays, strict=True):
        data = (nih64_dir / "images" / name).read_bytes()
        expected = preprocess(read_image(data, ImageLimits()).pixels, 224)
        np.testing.assert_array_equal(array, expected)


def test_every_nih64_image_decodes(nih64_dir: Path, names: tuple[str, ...]) -> None:
    arrays = load_arrays(nih64_dir / "images", names, 32, progress=False)  # includes the 21 RGBA files
    assert arrays.shape == (1000, 32, 32, 3)
    assert np.isfinite(arrays).all()
    assert np.ptp(arrays.reshape(1000, -1), axis=1).min() > 0  # no blank image


def test_missing_images_are_named(nih64_dir: Path) -> None:
    with pytest.raises(DatasetError, match="1 of 2 images.*nope.png"):
        load_arrays(nih64_dir / "images", ["00000001_000.png", "nope.png"], 32, progress=False)


def test_disk_cache_equals_memory_and_is_reused(nih64_dir: Path, names: tuple[str, ...], tmp_path: Path) -> None:
    chosen = list(names[:20])
    memory = load_arrays(nih64_dir / "images", chosen, 48, progress=False)
    mapped = cached_arrays(nih64_dir / "images", chosen, 48, tmp_path, progress=False, description="t")
    np.testing.assert_array_equal(np.asarray(mapped), memory)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"
    stamp = os.stat(files[0]).st_mtime_ns
    again = cached_arrays(nih64_dir / "images", chosen, 48, tmp_path, progress=False, description="t")
    np.testing.assert_array_equal(np.asarray(again), memory)
    assert os.stat(files[0]).st_mtime_ns == stamp
    cached_arrays(nih64_dir / "images", chosen[:10], 48, tmp_path, progress=False, description="t")
    assert len(list(tmp_path.iterdir())) == 2  # other names, other file


def test_train_batches_cover_every_image_once_per_epoch_in_a_new_order() -> None:
    n = 23
    x = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 8, 8, 3), np.float32)
    y = np.zeros((n, 14), np.float32)
    y[:, 0] = np.arange(n) % 2
    dataset = train_dataset(x, y, batch_size=5, augmentation=None, seed=3)
    orders = []
    for _ in range(2):
        seen = []
        for images, labels in dataset:
            rows = images.numpy()[:, 0, 0, 0].astype(int)
            np.testing.assert_array_equal(labels.numpy()[:, 0], rows % 2)  # labels stay with their image
            seen.extend(rows.tolist())
        assert sorted(seen) == list(range(n))
        orders.append(seen)
    assert orders[0] != orders[1]


def test_augmentation_is_small_and_identity_when_zero() -> None:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 64, 64, 3)).astype(np.float32)
    same = _augment_batch(tf.constant(x), Augmentation(0, 0, 0, 0), tf.constant([1, 2])).numpy()
    np.testing.assert_allclose(same, x, atol=1e-5)
    smooth = np.cumsum(np.cumsum(x, axis=1), axis=2)  # a smooth image: small warps change it a little
    out = _augment_batch(tf.constant(smooth), Augmentation(), tf.constant([1, 2])).numpy()
    assert out.shape == smooth.shape and not np.allclose(out, smooth)
    for a, b in zip(out, smooth, strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.8
    flipped = smooth[:, :, ::-1]
    assert all(
        np.corrcoef(a.ravel(), b.ravel())[0, 1] < np.corrcoef(a.ravel(), c.ravel())[0, 1]
        for a, b, c in zip(out, flipped, smooth, strict=True)
    )
