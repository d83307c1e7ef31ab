"""Does a PNG's compressed pixel stream hold every row its header promises?

Pillow decodes a PNG whose zlib stream ends early (properly closed after 100 of 7,000 rows, say)
without a word and leaves the missing rows black; a model would then diagnose a partial image.
`shortfall` inflates the IDAT data in bounded steps (memory stays small whatever the file claims),
counts the bytes, and describes what is missing. It never unfilters: the pixels are not decoded.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

try:  # ISA-L inflates about twice as fast as zlib; the same choice as shared.png_fast
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is a declared dependency
    import zlib as _zlib

_IHDR = struct.Struct(">IIBBBBB")
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by PNG colour type
# Adam7 passes: first column, first row, column step, row step.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_STEP = 1 << 20  # inflate at most this many bytes at a time


class CorruptStream(ValueError):
    """The header is unusable or the zlib stream cannot be inflated."""


def expected_bytes(ihdr: bytes) -> tuple[int, int, int]:
    """(inflated size, height, bytes per row incl. filter byte; 0 when interlaced) from IHDR's data."""
    width, height, depth, colour, _compression, _filtering, interlace = _IHDR.unpack(ihdr)
    if colour not in _CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise CorruptStream(f"colour type {colour}, bit depth {depth}")
    bits = _CHANNELS[colour] * depth

    def row_bytes(columns: int) -> int:
        return 1 + (columns * bits + 7) // 8

    if not interlace:
        return height * row_bytes(width), height, row_bytes(width)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        columns = (width - x0 + dx - 1) // dx if width > x0 else 0
        rows = (height - y0 + dy - 1) // dy if height > y0 else 0
        if columns and rows:
            total += rows * row_bytes(columns)
    return total, height, 0


def inflated_size(idat: Sequence[bytes], limit: int) -> int:
    """Bytes the concatenated IDAT data inflate to, counting no further than `limit`."""
    inflater = _zlib.decompressobj()
    total = 0
    try:
        for chunk in idat:
            pending = chunk
            while pending and not inflater.eof:
                total += len(inflater.decompress(pending, _STEP))
                if total >= limit:
                    return total
                pending = inflater.unconsumed_tail
            if inflater.eof:
                break
    except _zlib.error as exc:
        raise CorruptStream(str(exc)) from exc
    return total


def shortfall(ihdr: bytes, idat: Sequence[bytes]) -> str | None:
    """None when the stream holds every row; else the problem in words, for the person who sent it:
    "PNG image data is truncated: 100 of 7000 rows". Raises CorruptStream for a broken stream."""
    expected, height, row = expected_bytes(ihdr)
    got = inflated_size(idat, expected)
    if got >= expected:
        return None
    if row:
        return f"PNG image data is truncated: {got // row} of {height} rows"
    return f"PNG image data is truncated: {got:,} of {expected:,} bytes of its interlaced rows"
