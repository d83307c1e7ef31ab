"""shared.resize: the model's bilinear resize equals Pillow's, read from floats or uint8 levels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.classifier import preprocess
from shared.config import ImageLimits
from shared.images import read_image
from shared.resize import bilinear_weights, resize_grey

LIMITS = ImageLimits()

FLOAT_TOLERANCE = 1e-6  # on [0, 1]; float32 rounding gives about 2e-7


def pillow_bilinear(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


@pytest.mark.parametrize("shape", [(1024, 1024), (300, 200), (77, 131), (100, 100), (40, 60), (224, 225)])
@pytest.mark.parametrize("size", [224, 64])
def test_equals_pillow_bilinear_on_random_floats(shape: tuple[int, int], size: int) -> None:
    pixels = np.random.default_rng(sum(shape) + size).random(shape, dtype=np.float32)
    np.testing.assert_allclose(resize_grey(pixels, size), pillow_bilinear(pixels, size, size),
                               atol=FLOAT_TOLERANCE, rtol=0)


def test_equals_pillow_on_real_xrays_from_floats_and_from_levels(nih_full_images: list[Path]) -> None:
    for path in nih_full_images[:4]:
        levels = np.asarray(Image.open(path).convert("L"))
        reference = pillow_bilinear(levels / np.float32(255.0), 224, 224)
        from_floats = resize_grey(levels.astype(np.float32) / np.float32(255.0), 224)
        from_levels = resize_grey(levels, 224) / np.float32(255.0)
        np.testing.assert_allclose(from_floats, reference, atol=FLOAT_TOLERANCE, rtol=0)
        np.testing.assert_allclose(from_levels, reference, atol=FLOAT_TOLERANCE, rtol=0)


def test_weights_are_pillows_triangle_normalised() -> None:
    shrink = bilinear_weights(8, 2).toarray()  # scale 4: centre 2 (pixel 0's taps end at the border)
    np.testing.assert_allclose(shrink.sum(axis=1), 1.0, atol=1e-6)
    # taps 0-5 at distances 1.5, 0.5, 0.5, 1.5, 2.5, 3.5 from the centre, weight 1 - d / 4
    np.testing.assert_allclose(shrink[0], np.array([5, 7, 7, 5, 3, 1, 0, 0]) / 28, atol=1e-6)
    grow = bilinear_weights(2, 4).toarray()  # scale 0.5: plain bilinear interpolation
    np.testing.assert_allclose(grow, [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], atol=1e-6)


def test_same_size_is_a_float_copy() -> None:
    levels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    out = resize_grey(levels, 4)
    assert out.dtype == np.float32 and np.array_equal(out, levels)


def test_refuses_colour_and_bad_sizes() -> None:
    with pytest.raises(ValueError, match="greyscale"):
        resize_grey(np.zeros((4, 4, 3), np.float32), 2)
    with pytest.raises(ValueError, match="positive"):
        bilinear_weights(0, 4)


def test_preprocess_of_levels_equals_preprocess_of_pixels(nih_full_images: list[Path]) -> None:
    """What the worker feeds the model from an 8-bit PNG (the levels) is what the float pixels give."""
    image = read_image(nih_full_images[0].read_bytes(), LIMITS)
    assert image.source.dtype == np.uint8
    np.testing.assert_allclose(preprocess(image.source, 224), preprocess(image.pixels, 224), atol=1e-4, rtol=0)


def test_the_c_passes_give_scipys_sums_and_check_their_buffers(nih_full_images: list[Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import resize

    if resize._resample is None:
        pytest.skip("shared._resample is not built (no C compiler at install time)")
    levels = np.asarray(Image.open(nih_full_images[1]).convert("L"))
    odd = np.random.default_rng(3).integers(0, 256, (77, 131), dtype=np.uint8)
    with_c = [resize_grey(levels, 224), resize_grey(odd, 64)]
    monkeypatch.setattr(resize, "_resample", None)  # scipy's products
    np.testing.assert_allclose(with_c[0], resize_grey(levels, 224), atol=1e-4, rtol=0)  # level units
    np.testing.assert_allclose(with_c[1], resize_grey(odd, 64), atol=1e-4, rtol=0)
    monkeypatch.undo()

    from shared import _resample

    indptr, indices, weights = resize._csr(bilinear_weights(4, 2))
    out = np.empty((2, 3), np.float32)
    _resample.rows_u8(indptr, indices, weights, np.zeros((4, 3), np.uint8), out, 4, 3)
    with pytest.raises(ValueError, match="sizes"):
        _resample.rows_u8(indptr, indices, weights, np.zeros((4, 2), np.uint8), out, 4, 3)
    with pytest.raises(ValueError, match="outside"):
        _resample.rows_u8(indptr, indices, weights, np.zeros((3, 3), np.uint8), np.empty((2, 3), np.float32), 3, 3)
    with pytest.raises(ValueError, match="sizes"):
        _resample.cols_f32(indptr, indices, weights, np.zeros((3, 4), np.float32), np.empty((3, 3), np.float32), 3, 4)


@pytest.mark.parametrize("call", ["rows_u8", "cols_f32", "channels_f32"])
def test_the_c_passes_refuse_sizes_whose_products_overflow(call: str) -> None:
    """A size of 2**62 makes size * 4 bytes wrap to 0, which used to match an empty buffer and send the
    loops far past it (found by tests/shared/test_fuzz_kernels.py)."""
    from shared import resize

    if resize._resample is None:
        pytest.skip("shared._resample is not built (no C compiler at install time)")
    indptr, indices, weights = resize._csr(bilinear_weights(4, 2))
    no_levels, no_floats = np.zeros(0, np.uint8), np.zeros(0, np.float32)
    args = {"rows_u8": (indptr, indices, weights, no_levels, no_floats, 4, 2**62),
            "cols_f32": (indptr, indices, weights, no_floats, no_floats, 2**62, 4),
            "channels_f32": (no_floats, no_floats, 2**62, 255.0, 1.0, 1.0, 2.0, 3.0)}[call]
    with pytest.raises(ValueError, match="sizes"):
        getattr(resize._resample, call)(*args)


def test_preprocess_last_step_in_c_is_numpys_bit_for_bit(nih_full_images: list[Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """channels_f32 (clip, scale, the three mean-subtracted channels in one pass) against numpy's
    three operations: the same float32 values, also for out-of-range and NaN input."""
    import shared.classifier

    if shared.classifier._resample is None:
        pytest.skip("shared._resample is not built (no C compiler at install time)")
    rng = np.random.default_rng(5)
    inputs = [read_image(nih_full_images[1].read_bytes(), ImageLimits()).source,
              rng.integers(0, 256, (224, 224), dtype=np.uint8),
              (rng.random((300, 500)) * 1.4 - 0.2).astype(np.float32),
              np.array([[np.nan, -0.0, 1.0, 2.0]] * 40, dtype=np.float32)]
    in_c = [preprocess(x, 64) for x in inputs]
    monkeypatch.setattr(shared.classifier, "_resample", None)
    for x, ours in zip(inputs, in_c, strict=True):
        theirs = preprocess(x, 64)
        assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape == (64, 64, 3)
        assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))  # bit for bit, NaN included
    from shared import _resample

    with pytest.raises(ValueError, match="buffer sizes"):
        _resample.channels_f32(np.zeros(4, np.float32), np.zeros(11, np.float32), 4, 1.0, 255.0, 1.0, 2.0, 3.0)
