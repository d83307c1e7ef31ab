"""The model's resize: Pillow's bilinear filter (antialiased when shrinking), as two sparse products.

`resize_grey(pixels, size)` gives what `Image.fromarray(float32).resize((size, size), BILINEAR)`
gives, to float32 rounding (about 2e-7 on [0, 1]): Pillow's own filter weights (`precompute_coeffs`
in its Resample.c), applied as `rows @ image @ columns.T`. Not Pillow itself, because this reads the
uint8 levels directly (the first product runs in the optional C extension `shared._resample`), so a
1024 px X-ray is never copied to floats first, and it is faster for the same result. The weights for
a pair of sizes are built once per process.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.sparse as sp

try:
    from shared import _resample
except ImportError:  # the C extension is optional at install time
    _resample = None  # type: ignore[assignment]

_BILINEAR_SUPPORT = 1.0  # Pillow's bilinear (triangle) filter reaches one input pixel each side


@lru_cache(maxsize=64)
def bilinear_weights(in_size: int, out_size: int) -> sp.csr_matrix:
    """(out_size, in_size) sparse matrix of Pillow's bilinear weights along one axis."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _BILINEAR_SUPPORT * filterscale
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)  # Pillow truncates after adding 0.5
        last = min(int(center + support + 0.5), in_size)
        taps = np.arange(first, last)
        weights = np.maximum(0.0, 1.0 - np.abs((taps - center + 0.5) / filterscale))
        total = weights.sum()
        if total != 0.0:
            weights = weights / total
        rows.append(np.full(len(taps), out))
        cols.append(taps)
        values.append(weights)
    matrix = sp.csr_matrix(
        (np.concatenate(values).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(out_size, in_size),
    )
    matrix.eliminate_zeros()
    return matrix


def resize_grey(pixels: np.ndarray, size: int) -> np.ndarray:
    """(H, W) greyscale, float or uint8 -> a new (size, size) float32 array in the input's own units."""
    if pixels.ndim != 2:
        raise ValueError(f"resize_grey expects a greyscale (H, W) array, got shape {pixels.shape}")
    height, width = pixels.shape
    if (height, width) == (size, size):
        return pixels.astype(np.float32, copy=True)
    vertical, horizontal = bilinear_weights(height, size), bilinear_weights(width, size)
    if _resample is not None and pixels.dtype == np.uint8:
        levels = np.ascontiguousarray(pixels)
        rows = np.empty((size, width), dtype=np.float32)
        _resample.rows_u8(*_csr(vertical), levels, rows, height, width)
        out = np.empty((size, size), dtype=np.float32)
        _resample.cols_f32(*_csr(horizontal), rows, out, size, width)
        return out
    if pixels.dtype not in (np.uint8, np.float32):
        pixels = pixels.astype(np.float32)
    rows = np.asarray(vertical @ pixels, dtype=np.float32)  # (size, W): scipy upcasts uint8 to float32
    return np.ascontiguousarray((horizontal @ rows.T).T, dtype=np.float32)


@lru_cache(maxsize=64)
def _csr_arrays(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    matrix = bilinear_weights(in_size, out_size)
    return (np.ascontiguousarray(matrix.indptr, dtype=np.int32), np.ascontiguousarray(matrix.indices, dtype=np.int32),
            np.ascontiguousarray(matrix.data, dtype=np.float32))


def _csr(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (indptr, indices, weights) buffers the C passes read, kept with the matrix's sizes."""
    return _csr_arrays(matrix.shape[1], matrix.shape[0])

