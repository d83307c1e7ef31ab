"""Fast exact decoder for the common chest X-ray PNG: non-interlaced 8-bit greyscale.

Pillow spends ~9.5 ms on a 1024x1024 such PNG: ~4 ms inflating with zlib and ~6 ms in its
per-byte unfilter loop. Here ISA-L inflates (`isal.isal_zlib`, zlib when isal is missing) and
`shared._png_unfilter` (C, GIL released) reverses the row filters: on a CPU with AVX2, 16 rows at
a time in vector lanes (`VECTOR`), else 4 Paeth rows at a time in scalar registers.

`decode_grey8` is a fast path only: it returns None for anything it does not handle exactly
like Pillow (other modes, interlace, transparency, EXIF, APNG, unknown critical chunks, any
structural, checksum or size problem), and the caller then decodes with Pillow. It never
raises and never returns pixels Pillow would not.
"""

from __future__ import annotations

import struct

import numpy as np
from PIL import Image

try:
    from isal import isal_zlib as _zlib

    INFLATER = "isal"
except ImportError:  # pragma: no cover - isal is a declared dependency
    import zlib as _zlib

    INFLATER = "zlib"

try:
    from shared._png_unfilter import VECTOR
    from shared._png_unfilter import unfilter as _unfilter

    AVAILABLE = True
except ImportError:  # the C extension is optional at install time
    _unfilter = None
    AVAILABLE = False
    VECTOR = False

__all__ = ["AVAILABLE", "INFLATER", "VECTOR", "decode_grey8", "describe", "filtered_rows"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Chunks that change what Pillow returns for an 'L' image (transparency, EXIF orientation,
# animation frames): leave those files to Pillow.
_REFUSED_CHUNKS = frozenset({b"tRNS", b"eXIf", b"acTL", b"fcTL", b"fdAT"})
# Critical chunks this decoder understands; any other critical chunk means "not for us".
# PLTE is allowed in a greyscale file by nothing in the spec, but Pillow ignores it for 'L'.
_KNOWN_CRITICAL = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})

_CHUNK_HEADER = struct.Struct(">I4s")
_IHDR = struct.Struct(">IIBBBBB")
_CRC = struct.Struct(">I")


def describe() -> str:
    """One line for benchmarks and logs: is the fast path on, and which inflater does it use."""
    state = ("on, unfilter: " + ("AVX2, 16 rows at a time" if VECTOR else "scalar")) if AVAILABLE \
        else "off (shared._png_unfilter not built)"
    return f"png fast path {state}, inflate: {INFLATER}"


def decode_grey8(data: bytes) -> np.ndarray | None:
    """Decode a non-interlaced 8-bit greyscale PNG to a (H, W) uint8 array, or None.

    None means "use Pillow": the fast path does not apply or something is unusual.
    """
    if _unfilter is None:
        return None
    try:
        filtered = filtered_rows(data)
        if filtered is None:
            return None
        raw, width, height = filtered
        pixels = np.empty((height, width), dtype=np.uint8)
        _unfilter(raw, pixels, width, height, 1)
        return pixels
    except Exception:  # the contract is None, never an exception: Pillow then reports the problem
        return None


def filtered_rows(data: bytes) -> tuple[bytes, int, int] | None:
    """The inflated, still filtered rows (a filter byte + `width` bytes each) of a PNG the fast path
    takes, with its width and height; None where `decode_grey8` would return None before unfiltering."""
    parsed = _parse(data)
    if parsed is None:
        return None
    width, height, idat = parsed
    raw = _inflate(idat, height * (width + 1))
    return None if raw is None else (raw, width, height)


def _parse(data: bytes) -> tuple[int, int, bytes] | None:
    """Walk the chunks from the signature to IEND; return (width, height, IDAT data) or None.

    Chunk CRCs are checked except IDAT's (Pillow does not check those either; zlib's Adler-32
    still guards the pixel data).
    """
    if data[:8] != PNG_SIGNATURE:
        return None
    size = len(data)
    offset = 8
    width = height = 0
    idat: list[bytes] = []
    idat_done = False  # IDAT chunks must be consecutive, as Pillow reads them
    first = True
    while True:
        if offset + 12 > size:
            return None  # no IEND
        length, kind = _CHUNK_HEADER.unpack_from(data, offset)
        start = offset + 8
        end = start + length
        if length > 0x7FFFFFFF or end + 4 > size or not kind.isalpha():
            return None
        if kind != b"IDAT":
            crc = _zlib.crc32(data[start:end], _zlib.crc32(kind))
            if crc != _CRC.unpack_from(data, end)[0]:
                return None
        if first:
            if kind != b"IHDR" or length != _IHDR.size:
                return None
            width, height, depth, colour, compression, filtering, interlace = _IHDR.unpack_from(data, start)
            if (depth, colour, compression, filtering, interlace) != (8, 0, 0, 0, 0):
                return None
            if not (0 < width <= 0x7FFFFFFF and 0 < height <= 0x7FFFFFFF):
                return None
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and width * height > limit:
                return None  # Pillow's decompression-bomb warning/error applies
            first = False
        elif kind == b"IDAT":
            if idat_done:
                return None
            idat.append(data[start:end])
        elif kind == b"IEND":
            break
        else:
            if kind == b"IHDR" or kind in _REFUSED_CHUNKS:
                return None
            if not kind[0] & 0x20 and kind not in _KNOWN_CRITICAL:
                return None  # unknown critical chunk
            if idat:
                idat_done = True
        offset = end + 4
    if not idat:
        return None
    return width, height, b"".join(idat)


def _inflate(stream: bytes, expected: int) -> bytes | None:
    """Inflate one complete zlib stream of exactly `expected` bytes, else None.

    `max_length` bounds the output, so a small file cannot inflate to gigabytes; one spare
    byte tells "too long" apart from "exactly right".
    """
    inflater = _zlib.decompressobj()
    raw = inflater.decompress(stream, expected + 1)
    if len(raw) != expected or not inflater.eof or inflater.unused_data:
        return None
    return raw
