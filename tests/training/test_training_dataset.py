"""The training input pipeline: the service's decoding and preprocessing, streamed from disk, the
NIH folder layout, shuffled tf.data batches."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from shared.classifier import preprocess
from shared.config import ImageLimits
from shared.images import read_image
from training.dataset import (
    Augmentation,
    DatasetError,
    ImageIndex,
    _augment_batch,
    image_batches,
    load_arrays,
    read_failure,
    train_dataset,
)
from training.labels import read_labels


@pytest.fixture(scope="module")
def names(nih64_dir: Path) -> tuple[str, ...]:
    return read_labels(nih64_dir / "Data_Entry.csv").images


def test_arrays_are_exactly_what_the_service_computes(nih64_dir: Path, names: tuple[str, ...]) -> None:
    chosen = list(names[:5])
    arrays = load_arrays(nih64_dir / "images", chosen, 224)
    for name, array in zip(chosen, arrays, strict=True):
        data = (nih64_dir / "images" / name).read_bytes()
        expected = preprocess(read_image(data, ImageLimits()).pixels, 224)
        np.testing.assert_array_equal(array, expected)


def test_streamed_batches_are_the_service_arrays_in_order(nih64_dir: Path, names: tuple[str, ...]) -> None:
    chosen = list(names[100:140])
    paths = ImageIndex(nih64_dir / "images").paths(chosen)
    batches = [b for b in image_batches(paths, 48, 16).as_numpy_iterator()]
    assert [len(b) for b in batches] == [16, 16, 8]
    np.testing.assert_array_equal(np.concatenate(batches), load_arrays(nih64_dir / "images", chosen, 48))


def test_every_nih64_image_decodes(nih64_dir: Path, names: tuple[str, ...]) -> None:
    paths = ImageIndex(nih64_dir / "images").paths(names)  # includes the 21 RGBA files
    count = 0
    for batch in image_batches(paths, 32, 100).as_numpy_iterator():
        assert batch.shape[1:] == (32, 32, 3) and np.isfinite(batch).all()
        assert np.ptp(batch.reshape(len(batch), -1), axis=1).min() > 0  # no blank image
        count += len(batch)
    assert count == 1000


def test_missing_images_are_named(nih64_dir: Path) -> None:
    with pytest.raises(DatasetError, match="1 of 2 images.*nope.png"):
        load_arrays(nih64_dir / "images", ["00000001_000.png", "nope.png"], 32)


def test_nih_folder_layout_is_searched_and_duplicates_are_an_error(
    nih64_dir: Path, names: tuple[str, ...], tmp_path: Path
) -> None:
    first, second, third = names[:3]
    for folder, name in (("images_001", first), ("images_012", second)):
        (tmp_path / folder / "images").mkdir(parents=True)
        shutil.copy(nih64_dir / "images" / name, tmp_path / folder / "images" / name)
    index = ImageIndex(tmp_path)
    assert index.paths([second, first]) == [
        str(tmp_path / "images_012" / "images" / second), str(tmp_path / "images_001" / "images" / first)
    ]
    np.testing.assert_array_equal(load_arrays(index, [first, second], 32),
                                  load_arrays(nih64_dir / "images", [first, second], 32))
    with pytest.raises(DatasetError, match=f"1 of 2 images are not in .*subfolders.*{third}"):
        index.paths([first, third])
    shutil.copy(nih64_dir / "images" / first, tmp_path / "images_012" / "images" / first)
    with pytest.raises(DatasetError, match=f"1 of 2 images occur more than once.*{first}.*images_00.*images_01"):
        ImageIndex(tmp_path).paths([first, second])
    with pytest.raises(DatasetError, match="not a folder"):
        ImageIndex(tmp_path / "absent")


def _by_number(path: str) -> np.ndarray:
    """A stand-in decoder: image `7.png` is all 7s, so a batch shows which rows it holds."""
    return np.full((8, 8, 3), float(Path(path).stem), np.float32)


def test_train_batches_cover_every_image_once_per_epoch_in_a_new_order() -> None:
    n = 23
    paths = [f"/nowhere/{i}.png" for i in range(n)]
    y = np.zeros((n, 14), np.float32)
    y[:, 0] = np.arange(n) % 2
    y[:, 1] = np.arange(n)
    dataset = train_dataset(paths, y, batch_size=5, input_size=8, augmentation=None, seed=3, load=_by_number)
    orders = []
    for _ in range(2):
        seen = []
        for images, labels in dataset:
            rows = images.numpy()[:, 0, 0, 0].astype(int)
            np.testing.assert_array_equal(labels.numpy()[:, 1], rows)  # labels stay with their image
            seen.extend(rows.tolist())
        assert sorted(seen) == list(range(n))
        orders.append(seen)
    assert orders[0] != orders[1]


def test_repeated_stream_reshuffles_after_each_pass() -> None:
    n = 12
    paths = [f"/nowhere/{i}.png" for i in range(n)]
    y = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 14), np.float32)
    dataset = train_dataset(paths, y, batch_size=4, input_size=8, seed=1, repeat=True, load=_by_number)
    rows = [int(v) for images, _ in dataset.take(3 * n // 4) for v in images.numpy()[:, 0, 0, 0]]
    passes = [rows[i * n : (i + 1) * n] for i in range(3)]
    assert all(sorted(p) == list(range(n)) for p in passes)
    assert len({tuple(p) for p in passes}) == 3


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(Exception, match="cannot read .*broken.png") as raised:
        list(image_batches([str(tmp_path / "broken.png")], 32, 4).as_numpy_iterator())
    failure = read_failure(raised.value)
    assert isinstance(failure, DatasetError) and str(failure).startswith(f"cannot read {tmp_path / 'broken.png'}")
    assert read_failure(RuntimeError("something else")) is None


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
