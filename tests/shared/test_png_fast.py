"""shared.png_fast / shared._png_unfilter: pixel-exact against Pillow and a spec reference.

The fast path must never return pixels Pillow would not, so every positive case compares
real pixels, and every unusual file must give None (the caller then uses Pillow).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared import png_fast

NIH_IMAGES = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih-full" / "images"

needs_ext = pytest.mark.skipif(not png_fast.AVAILABLE, reason="shared._png_unfilter is not built")


# ---------------------------------------------------------------------------------------------
# PNG writing and a reference unfilter (straight from the spec, no shortcuts)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _ihdr(width: int, height: int, depth: int = 8, colour: int = 0, interlace: int = 0) -> bytes:
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))


def make_png(
    width: int,
    height: int,
    raw: bytes,
    *,
    depth: int = 8,
    colour: int = 0,
    interlace: int = 0,
    before: tuple[bytes, ...] = (),
    after: tuple[bytes, ...] = (),
    idat_parts: int = 1,
    stream: bytes | None = None,
) -> bytes:
    """A PNG from already-filtered rows; `before`/`after` are whole chunks around the IDATs."""
    data = zlib.compress(raw, 6) if stream is None else stream
    step = max(1, -(-len(data) // idat_parts))
    idats = [_chunk(b"IDAT", data[i : i + step]) for i in range(0, len(data), step)] or [_chunk(b"IDAT", b"")]
    return (
        png_fast.PNG_SIGNATURE
        + _ihdr(width, height, depth, colour, interlace)
        + b"".join(before)
        + b"".join(idats)
        + b"".join(after)
        + _chunk(b"IEND", b"")
    )


def _paeth_ref(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    if pb <= pc:
        return b
    return c


def unfilter_ref(raw: bytes, width: int, height: int, bpp: int) -> bytes:
    """PNG spec 9.2-9.4, byte by byte."""
    rowbytes = width * bpp
    out = bytearray(height * rowbytes)
    for y in range(height):
        ftype = raw[y * (rowbytes + 1)]
        src = raw[y * (rowbytes + 1) + 1 : (y + 1) * (rowbytes + 1)]
        for i in range(rowbytes):
            a = out[y * rowbytes + i - bpp] if i >= bpp else 0
            b = out[(y - 1) * rowbytes + i] if y else 0
            c = out[(y - 1) * rowbytes + i - bpp] if y and i >= bpp else 0
            pred = {0: 0, 1: a, 2: b, 3: (a + b) // 2, 4: _paeth_ref(a, b, c)}[ftype]
            out[y * rowbytes + i] = (src[i] + pred) & 0xFF
    return bytes(out)


def random_raw(rng: np.random.Generator, width: int, height: int, bpp: int, filters: list[int], style: str) -> bytes:
    """Filtered rows: any payload is valid. 'small' payloads make smooth images full of Paeth ties."""
    rowbytes = width * bpp
    if style == "uniform":
        payload = rng.integers(0, 256, (height, rowbytes), dtype=np.uint8)
    elif style == "small":
        payload = rng.choice(np.array([0, 0, 0, 1, 255, 2, 254], dtype=np.uint8), (height, rowbytes))
    else:  # "zeros" after a random first row: pure prediction
        payload = np.zeros((height, rowbytes), dtype=np.uint8)
        payload[0] = rng.integers(0, 256, rowbytes, dtype=np.uint8)
    rows = np.empty((height, rowbytes + 1), dtype=np.uint8)
    rows[:, 0] = filters
    rows[:, 1:] = payload
    return rows.tobytes()


def filter_pattern(rng: np.random.Generator, height: int, kind: str) -> list[int]:
    """Per-row filter types: random, all Paeth (long wavefront runs), or Paeth runs of 1..5."""
    if kind == "random":
        return [int(f) for f in rng.integers(0, 5, height)]
    if kind == "paeth":
        return [4] * height
    out: list[int] = []
    while len(out) < height:
        out += [4] * int(rng.integers(1, 6)) + [int(rng.choice([0, 1, 2, 3]))]
    return out[:height]


def pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "L"
        return np.asarray(im)


# ---------------------------------------------------------------------------------------------
# (a) the real chest X-rays


def _nih_grey8() -> list[Path]:
    if not NIH_IMAGES.is_dir():
        return []
    found = []
    for path in sorted(NIH_IMAGES.glob("*.png")):
        head = path.read_bytes()[:33]
        if head[:8] == png_fast.PNG_SIGNATURE and head[24:26] == b"\x08\x00":  # depth 8, colour 0
            found.append(path)
    return found


@needs_ext
@pytest.mark.skipif(not NIH_IMAGES.is_dir(), reason=f"{NIH_IMAGES} is absent")
@pytest.mark.parametrize("path", _nih_grey8(), ids=lambda p: p.name)
def test_nih_png_matches_pillow(path: Path) -> None:
    pixels = png_fast.decode_grey8(path.read_bytes())
    assert pixels is not None
    assert pixels.dtype == np.uint8 and pixels.flags.c_contiguous
    with Image.open(path) as im:
        expected = np.asarray(im)
    assert pixels.shape == expected.shape
    assert np.array_equal(pixels, expected)


# ---------------------------------------------------------------------------------------------
# (b) synthetic images through every filter, against Pillow and the reference

SIZES = [(1, 1), (1, 7), (2, 3), (3, 5), (4, 4), (5, 9), (7, 2), (31, 17), (64, 8), (257, 13), (1000, 6)]


def each_pattern_and_style(test: Callable[..., None]) -> Callable[..., None]:
    """Run a synthetic-image test for every filter pattern and payload style (`random_raw`)."""
    test = pytest.mark.parametrize("style", ["uniform", "small", "zeros"])(test)
    return pytest.mark.parametrize("pattern", ["random", "paeth", "runs"])(test)


@needs_ext
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@each_pattern_and_style
def test_synthetic_grey8_matches_pillow(size: tuple[int, int], pattern: str, style: str) -> None:
    width, height = size
    rng = np.random.default_rng([width, height, len(pattern), len(style)])
    raw = random_raw(rng, width, height, 1, filter_pattern(rng, height, pattern), style)
    data = make_png(width, height, raw, idat_parts=3)
    pixels = png_fast.decode_grey8(data)
    assert pixels is not None
    assert pixels.shape == (height, width)
    assert np.array_equal(pixels, pillow_pixels(data))
    if width * height <= 600:
        assert pixels.tobytes() == unfilter_ref(raw, width, height, 1)


@needs_ext
def test_every_filter_appears_and_each_row_type_is_exact() -> None:
    """One row of each filter type after each, so every transition is exercised."""
    rng = np.random.default_rng(7)
    filters = [f for a in range(5) for b in range(5) for f in (a, b)]
    width, height = 33, len(filters)
    raw = random_raw(rng, width, height, 1, filters, "uniform")
    expected = unfilter_ref(raw, width, height, 1)
    pixels = png_fast.decode_grey8(make_png(width, height, raw))
    assert pixels is not None
    assert pixels.tobytes() == expected
    assert np.array_equal(pixels, pillow_pixels(make_png(width, height, raw)))


@needs_ext
def test_large_smooth_image_matches_pillow() -> None:
    """A 1024-wide, X-ray-like image saved by Pillow itself (its own filter choice)."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:96, 0:1024]
    img = (128 + 60 * np.sin(x / 50.0) * np.cos(y / 17.0) + rng.normal(0, 4, x.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, "L").save(buf, format="PNG", optimize=True)
    pixels = png_fast.decode_grey8(buf.getvalue())
    assert pixels is not None
    assert np.array_equal(pixels, img)


@needs_ext
def test_ancillary_chunks_and_split_idat_are_fine() -> None:
    rng = np.random.default_rng(11)
    raw = random_raw(rng, 20, 10, 1, filter_pattern(rng, 10, "random"), "uniform")
    gama = _chunk(b"gAMA", struct.pack(">I", 45455))
    sbit = _chunk(b"sBIT", b"\x08")
    text = _chunk(b"tEXt", b"Comment\x00hello")
    data = make_png(20, 10, raw, before=(gama, sbit, text), after=(text,), idat_parts=7)
    pixels = png_fast.decode_grey8(data)
    assert pixels is not None
    assert np.array_equal(pixels, pillow_pixels(data))


@needs_ext
@pytest.mark.parametrize("bpp", [1, 2, 3, 4, 6, 8])
@pytest.mark.parametrize("size", [(1, 1), (1, 6), (2, 5), (5, 3), (13, 7), (40, 9)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_c_unfilter_matches_reference(bpp: int, size: tuple[int, int]) -> None:
    from shared._png_unfilter import unfilter

    width, height = size
    rng = np.random.default_rng([bpp, width, height])
    for pattern, style in [("random", "uniform"), ("paeth", "small"), ("runs", "zeros")]:
        raw = random_raw(rng, width, height, bpp, filter_pattern(rng, height, pattern), style)
        out = bytearray(width * height * bpp)
        unfilter(raw, out, width, height, bpp)
        assert bytes(out) == unfilter_ref(raw, width, height, bpp), (pattern, style)


def _paeth_np(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


@needs_ext
def test_paeth_predictor_on_every_triple() -> None:
    """All 256**3 (a, b, c): per column pair m, a None row sets (c, b), then a Paeth row whose
    first byte makes the left neighbour a and whose second byte is 0, so it outputs Paeth(a, b, c)."""
    from shared._png_unfilter import unfilter

    c_all, b_all = (v.ravel() for v in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    for a_value in range(0, 256, 16):  # 16 chunks of 16 a-values keep memory small
        a = np.repeat(np.arange(a_value, a_value + 16), c_all.size)
        b = np.tile(b_all, 16)
        c = np.tile(c_all, 16)
        expected = _paeth_np(a, b, c)
        # Paeth row, column 2m: left = d[2m-1] = expected[m-1], up = c_m, upper-left = b_{m-1}.
        left = np.concatenate(([0], expected[:-1]))
        upleft = np.concatenate(([0], b[:-1]))
        first = _paeth_np(left, c, upleft)  # column 0: left = upper-left = 0, so this is c_0
        n = 2 * a.size
        raw = np.zeros((2, n + 1), dtype=np.uint8)
        raw[0, 1::2] = c
        raw[0, 2::2] = b
        raw[1, 0] = 4
        raw[1, 1::2] = (a - first) & 0xFF
        out = np.empty((2, n), dtype=np.uint8)
        unfilter(raw.tobytes(), out, n, 2, 1)
        assert np.array_equal(out[1, 0::2], a)
        mismatch = np.flatnonzero(out[1, 1::2] != expected)
        assert mismatch.size == 0, f"Paeth{a[mismatch[0]], b[mismatch[0]], c[mismatch[0]]}"


# ---------------------------------------------------------------------------------------------
# (c) None for everything the fast path must leave to Pillow


def _grey_raw(width: int, height: int) -> bytes:
    rng = np.random.default_rng(5)
    return random_raw(rng, width, height, 1, filter_pattern(rng, height, "random"), "uniform")


def _saved(mode: str, array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    if image.mode != mode:
        image = image.convert(mode)
    image.save(buf, format="PNG")
    return buf.getvalue()


def _adam7_png(img: np.ndarray) -> bytes:
    """A valid interlaced greyscale PNG (filter 0 everywhere)."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b"".join(b"\x00" + row.tobytes() for x0, y0, dx, dy in passes for row in img[y0::dy, x0::dx] if row.size)
    return make_png(img.shape[1], img.shape[0], raw, interlace=1)


def _good() -> bytes:
    return make_png(9, 6, _grey_raw(9, 6))


def _with_corrupt_zlib() -> bytes:
    stream = bytearray(zlib.compress(_grey_raw(9, 6)))
    stream[len(stream) // 2] ^= 0xFF
    return make_png(9, 6, b"", stream=bytes(stream))


def _with_bad_filter() -> bytes:
    raw = bytearray(_grey_raw(9, 6))
    raw[3 * 10] = 5
    return make_png(9, 6, bytes(raw))


def _with_stream(raw: bytes) -> bytes:
    return make_png(9, 6, raw)


def _bad_crc() -> bytes:
    text = bytearray(_chunk(b"tEXt", b"a\x00b"))
    text[-1] ^= 1
    return make_png(9, 6, _grey_raw(9, 6), before=(bytes(text),))


def _split_idat() -> bytes:
    """IDAT, tEXt, IDAT: Pillow stops at the tEXt, so the fast path must not splice them."""
    stream = zlib.compress(_grey_raw(9, 6))
    half = len(stream) // 2
    return (
        png_fast.PNG_SIGNATURE
        + _ihdr(9, 6)
        + _chunk(b"IDAT", stream[:half])
        + _chunk(b"tEXt", b"a\x00b")
        + _chunk(b"IDAT", stream[half:])
        + _chunk(b"IEND", b"")
    )


NOT_FOR_FAST_PATH = {
    "rgb": lambda: _saved("RGB", np.zeros((4, 5, 3), np.uint8)),
    "grey16": lambda: _saved("I;16", (np.arange(20, dtype=np.uint16) * 3000).reshape(4, 5)),
    "grey4": lambda: make_png(4, 2, b"\x00\x12\x34\x00\x56\x78", depth=4),
    "palette": lambda: _saved("P", np.zeros((4, 5), np.uint8)),
    "grey_alpha": lambda: _saved("LA", np.zeros((4, 5, 2), np.uint8)),
    "interlaced": lambda: _adam7_png(np.arange(64, dtype=np.uint8).reshape(8, 8)),
    "truncated_idat": lambda: _good()[:60],
    "truncated_no_iend": lambda: _good()[:-12],
    "truncated_stream": lambda: make_png(9, 6, b"", stream=zlib.compress(_grey_raw(9, 6))[:-9]),
    "corrupt_zlib": _with_corrupt_zlib,
    "bad_filter": _with_bad_filter,
    "inflates_short": lambda: _with_stream(_grey_raw(9, 6)[:-1]),
    "inflates_long": lambda: _with_stream(_grey_raw(9, 6) + b"\x00"),
    "trailing_after_stream": lambda: make_png(9, 6, b"", stream=zlib.compress(_grey_raw(9, 6)) + b"xx"),
    "exif": lambda: make_png(9, 6, _grey_raw(9, 6), before=(_chunk(b"eXIf", b"MM\x00*\x00\x00\x00\x08\x00\x00"),)),
    "trns": lambda: make_png(9, 6, _grey_raw(9, 6), before=(_chunk(b"tRNS", b"\x00\x00"),)),
    "apng": lambda: make_png(9, 6, _grey_raw(9, 6), before=(_chunk(b"acTL", b"\x00\x00\x00\x01\x00\x00\x00\x00"),)),
    "unknown_critical": lambda: make_png(9, 6, _grey_raw(9, 6), before=(_chunk(b"ABCD", b""),)),
    "bad_crc": _bad_crc,
    "split_idat": _split_idat,
    "no_idat": lambda: png_fast.PNG_SIGNATURE + _ihdr(9, 6) + _chunk(b"IEND", b""),
    "zero_width": lambda: make_png(0, 6, b"\x00" * 6),
    "ihdr_not_first": lambda: png_fast.PNG_SIGNATURE + _chunk(b"tEXt", b"a\x00b") + _good()[8:],
    "not_png": lambda: b"\xff\xd8\xff\xe0" + b"\x00" * 100,
    "empty": lambda: b"",
    "signature_only": lambda: png_fast.PNG_SIGNATURE,
}


@needs_ext
def test_the_good_baseline_decodes() -> None:
    """The None cases below are variations of this file, which the fast path does decode."""
    data = _good()
    pixels = png_fast.decode_grey8(data)
    assert pixels is not None
    assert np.array_equal(pixels, pillow_pixels(data))


@pytest.mark.parametrize("name", sorted(NOT_FOR_FAST_PATH))
def test_returns_none(name: str) -> None:
    assert png_fast.decode_grey8(NOT_FOR_FAST_PATH[name]()) is None


def test_interlaced_fixture_is_a_real_png() -> None:
    """Pillow reads the hand-built Adam7 file, so None above is about interlace, not breakage."""
    img = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert np.array_equal(pillow_pixels(_adam7_png(img)), img)


def test_over_pillow_pixel_limit_is_left_to_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 53)
    assert png_fast.decode_grey8(_good()) is None  # 54 pixels: Pillow's bomb check decides


def test_without_the_extension_everything_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png_fast, "_unfilter", None)
    assert png_fast.decode_grey8(_good()) is None


def test_describe_names_the_inflater() -> None:
    assert png_fast.INFLATER in {"isal", "zlib"}
    assert png_fast.INFLATER in png_fast.describe()


# ---------------------------------------------------------------------------------------------
# (d) the C function's own checks


@needs_ext
@pytest.mark.parametrize(
    ("raw_len", "out_len", "width", "height", "bpp"),
    [
        (29, 24, 4, 6, 1),  # raw one short
        (31, 24, 4, 6, 1),  # raw one long
        (30, 23, 4, 6, 1),  # out one short
        (30, 25, 4, 6, 1),  # out one long
        (30, 24, 4, 6, 0),  # bpp 0
        (30, 24, 4, 6, 9),  # bpp 9
        (30, 24, -4, 6, 1),
        (30, 24, 4, -6, 1),
        (30, 24, 2**62, 2**62, 1),  # overflow
    ],
)
def test_c_unfilter_rejects_wrong_sizes(raw_len: int, out_len: int, width: int, height: int, bpp: int) -> None:
    from shared._png_unfilter import unfilter

    with pytest.raises(ValueError):
        unfilter(bytes(raw_len), bytearray(out_len), width, height, bpp)


# ---------------------------------------------------------------------------------------------
# (c) 8-bit rows 16 at a time in AVX2 lanes (shared._png_unfilter.VECTOR): against the scalar loops,
#     Pillow and the spec, with every filter type in every lane and partial bands at the end

needs_vector = pytest.mark.skipif(not png_fast.VECTOR, reason="the CPU has no AVX2 (or the extension is not built)")
BAND_SIZES = [(64, 16), (65, 17), (79, 31), (64, 48), (100, 33), (257, 40), (1024, 35)]


def _unfilter_both(raw: bytes, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    from shared._png_unfilter import unfilter

    vector, scalar = (np.empty((height, width), dtype=np.uint8) for _ in range(2))
    unfilter(raw, vector, width, height, 1, True)
    unfilter(raw, scalar, width, height, 1, False)
    return vector, scalar


@needs_vector
@pytest.mark.parametrize("size", BAND_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@each_pattern_and_style
def test_vector_bands_match_scalar_and_pillow(size: tuple[int, int], pattern: str, style: str) -> None:
    width, height = size
    rng = np.random.default_rng([width, height, len(pattern), len(style), 16])
    raw = random_raw(rng, width, height, 1, filter_pattern(rng, height, pattern), style)
    vector, scalar = _unfilter_both(raw, width, height)
    assert np.array_equal(vector, scalar)
    assert np.array_equal(vector, pillow_pixels(make_png(width, height, raw)))
    if width * height <= 3000:
        assert vector.tobytes() == unfilter_ref(raw, width, height, 1)


@needs_vector
def test_vector_band_every_filter_type_in_every_lane() -> None:
    """Each of the 5 types in each of the 16 lanes of a band, after each type in the lane before."""
    rng = np.random.default_rng(16)
    for first in range(5):
        filters = [first] + [int(f) for f in rng.permutation(np.tile(np.arange(5), 7))[:47]]
        width, height = 70, len(filters)
        raw = random_raw(rng, width, height, 1, filters, "uniform")
        vector, scalar = _unfilter_both(raw, width, height)
        assert vector.tobytes() == unfilter_ref(raw, width, height, 1), filters
        assert np.array_equal(vector, scalar)


@needs_vector
def test_vector_band_paeth_on_every_triple() -> None:
    """All 256**3 (a, b, c) through the vector lanes: bands of 16 rows alternating a None row that sets
    (c, b) and a Paeth row built as in test_paeth_predictor_on_every_triple, so lanes 1, 3, ..., 15
    each compute Paeth on 32 of the 256 values of a."""
    from shared._png_unfilter import unfilter

    c_all, b_all = (v.ravel() for v in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    for half in range(2):
        raw_rows, expected_rows = [], []
        for lane in range(8):
            start = 128 * half + 16 * lane
            a = np.repeat(np.arange(start, start + 16), c_all.size)
            b, c = np.tile(b_all, 16), np.tile(c_all, 16)
            expected = _paeth_np(a, b, c)
            first = _paeth_np(np.concatenate(([0], expected[:-1])), c, np.concatenate(([0], b[:-1])))
            n = 2 * a.size
            pair = np.zeros((2, n + 1), dtype=np.uint8)
            pair[0, 1::2], pair[0, 2::2] = c, b
            pair[1, 0] = 4
            pair[1, 1::2] = (a - first) & 0xFF
            raw_rows.append(pair)
            expected_rows.append((a, expected))
        raw = np.concatenate(raw_rows)
        height, n = raw.shape[0], raw.shape[1] - 1
        out = np.empty((height, n), dtype=np.uint8)
        unfilter(raw.tobytes(), out, n, height, 1)
        for lane, (a, expected) in enumerate(expected_rows):
            assert np.array_equal(out[2 * lane + 1, 0::2], a)
            mismatch = np.flatnonzero(out[2 * lane + 1, 1::2] != expected)
            assert mismatch.size == 0, f"lane {2 * lane + 1}: Paeth{a[mismatch[0]], mismatch[0]}"


@needs_vector
def test_vector_band_with_a_bad_filter_type_is_refused_at_its_row() -> None:
    from shared._png_unfilter import unfilter

    width, height = 64, 48
    raw = bytearray(random_raw(np.random.default_rng(5), width, height, 1, [4] * height, "uniform"))
    raw[(width + 1) * 21] = 7  # inside the second band
    with pytest.raises(ValueError, match="filter type 7 on row 21"):
        unfilter(bytes(raw), bytearray(width * height), width, height, 1)


@needs_ext
@pytest.mark.parametrize("ftype", [5, 6, 128, 255])
@pytest.mark.parametrize("bpp", [1, 3])
def test_c_unfilter_rejects_bad_filter_type(ftype: int, bpp: int) -> None:
    from shared._png_unfilter import unfilter

    raw = bytearray((1 + 4 * bpp) * 6)
    raw[(1 + 4 * bpp) * 4] = ftype  # row 4, after a run of filter-0 rows
    with pytest.raises(ValueError, match=f"filter type {ftype} on row 4"):
        unfilter(bytes(raw), bytearray(4 * bpp * 6), 4, 6, bpp)


@needs_ext
def test_c_unfilter_rejects_bad_filter_after_paeth_run() -> None:
    from shared._png_unfilter import unfilter

    raw = bytearray(5 * 7)
    for y in range(6):
        raw[5 * y] = 4
    raw[5 * 6] = 9
    with pytest.raises(ValueError, match="filter type 9 on row 6"):
        unfilter(bytes(raw), bytearray(4 * 7), 4, 7, 1)


@needs_ext
def test_c_unfilter_needs_a_writable_out() -> None:
    from shared._png_unfilter import unfilter

    with pytest.raises(TypeError):
        unfilter(bytes(30), bytes(24), 4, 6, 1)


@needs_ext
def test_c_unfilter_accepts_numpy_and_empty() -> None:
    from shared._png_unfilter import unfilter

    out = np.full((3, 0), 7, np.uint8)
    unfilter(b"\x00\x04\x03", out, 0, 3, 1)
    unfilter(b"", bytearray(), 5, 0, 1)


@needs_ext
def test_concurrent_decodes_agree() -> None:
    """The unfilter runs without the GIL; threads decoding at once must not disturb each other."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(21)
    files = []
    for i in range(8):
        width, height = 300 + i, 40 + i
        raw = random_raw(rng, width, height, 1, filter_pattern(rng, height, "runs"), "uniform")
        files.append((make_png(width, height, raw), unfilter_ref(raw, width, height, 1) if i == 0 else None))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda f: png_fast.decode_grey8(f[0]), files * 4))
    for (data, ref), pixels in zip(files * 4, results, strict=True):
        assert pixels is not None
        assert np.array_equal(pixels, pillow_pixels(data))
        if ref is not None:
            assert pixels.tobytes() == ref
