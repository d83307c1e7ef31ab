"""Fuzz loop for the C kernels that read uploads: shared._png_unfilter (through shared.png_fast) and
shared._resample (through shared.resize and shared.classifier.preprocess).

tests/shared/test_fuzz_kernels.py runs this module in a Python that loads AddressSanitizer and
UndefinedBehaviorSanitizer builds of both (`--lib DIR`), so any out-of-bounds access, overflow or other
undefined behaviour ends the run with the sanitizer's report. Inputs are the provided X-ray PNGs
mutated with a fixed seed; case i is always the same input (`--first i --count 1` repeats it).
Asserted for every case:

- `png_fast.decode_grey8` never raises, and where it returns pixels Pillow decodes the same file to the
  same 'L' pixels (None is always allowed: the caller then decodes with Pillow, which reports problems);
- the C unfilter gives the same bytes with and without its AVX2 bands and, for an undamaged file of any
  of four layouts (8-bit grey, 16-bit grey, RGB, RGBA), Pillow's pixels (or refuses what Pillow refuses).

Every fifth case also resizes random uint8 levels through the C passes (equal to shared.resize's scipy
path and to Pillow within RESIZE_TOLERANCE), compares preprocess's C last step with its numpy one
exactly (NaN and infinities included), and calls the C entry points with inconsistent arguments, which
they must refuse with an exception.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import struct
import sys
import sysconfig
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
KERNELS = ("_png_unfilter", "_resample")
LAYOUTS = {(8, 0): (1, "L"), (16, 0): (2, "I;16"), (8, 2): (3, "RGB"), (8, 6): (4, "RGBA")}  # -> bpp, mode
EDGE_SIZES = (1, 2, 3, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129)
HUGE = (0, 2**31 - 1, 2**31, 2**32 - 1, 65535, 65536, 100_000)
HEADER_VALUES = ((0, 1, 2, 4, 8, 16, 255), (0, 1, 2, 3, 4, 6, 7), (0, 1, 255), (0, 1, 255), (0, 1, 2))
EXTRA_CHUNKS = {  # payloads for chunks inserted among the real ones; png_fast refuses the last five
    b"gAMA": struct.pack(">I", 45455), b"tEXt": b"Comment\x00fuzz", b"ruSt": b"\x00" * 7, b"PLTE": b"\x00" * 768,
    b"tRNS": b"\x00\x07", b"eXIf": b"MM\x00*\x00\x00\x00\x08\x00\x00", b"CRIT": b"x", b"IHDR": b"\x00" * 13,
    b"IDAT": b"",
}
HARMLESS = (b"gAMA", b"tEXt", b"ruSt")
RESIZE_TOLERANCE = 255e-6  # grey levels: tests/shared/test_resize.py's 1e-6 on [0, 1]
EXTREMES = np.array([0, 1, -1, 0.5, np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45], dtype=np.float32)
REFUSALS = (ValueError, OverflowError, TypeError)  # how the kernels refuse wrong arguments


def load_sanitized(lib: Path) -> dict[str, str]:
    """Import shared._png_unfilter and shared._resample from `lib` before any module imports them."""
    import shared

    assert "shared.png_fast" not in sys.modules, "load the sanitized kernels before shared.png_fast"
    files = {}
    for name in KERNELS:
        path = lib / f"{name}{sysconfig.get_config_var('EXT_SUFFIX')}"
        spec = importlib.util.spec_from_file_location(f"shared.{name}", path)
        assert spec is not None and spec.loader is not None, f"no sanitized build at {path}"
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[spec.name] = module
        setattr(shared, name, module)
        files[name] = str(module.__file__)
    from shared import classifier, png_fast, resize

    assert png_fast._unfilter is sys.modules["shared._png_unfilter"].unfilter
    assert resize._resample is classifier._resample is sys.modules["shared._resample"]
    return files


# ----------------------------------------------------------------------------------------------- PNG


@dataclass(frozen=True)
class Seed:
    file: bytes
    rows: np.ndarray  # (height, 1 + width * bpp) uint8: each row's filter byte, then its bytes
    bpp: int


@dataclass(frozen=True)
class Case:
    data: bytes  # the mutated file
    rows: np.ndarray  # the filtered rows it was made from
    width: int
    bpp: int
    mode: str  # Pillow's mode for the layout
    clean: bool  # header, stream and chunks say exactly what `rows` are


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def chunk_offsets(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(offset, length, kind) of each whole chunk after the signature."""
    offset = 8
    while offset + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        if offset + 12 + length > len(data):
            return
        yield offset, length, kind
        offset += 12 + length


def read_seed(path: Path) -> Seed:
    data = path.read_bytes()
    parts = {kind: [] for kind in (b"IHDR", b"IDAT")}
    for offset, length, kind in chunk_offsets(data):
        parts.get(kind, []).append(data[offset + 8 : offset + 8 + length])
    width, height, depth, colour = struct.unpack(">IIBB", parts[b"IHDR"][0][:10])
    bpp = LAYOUTS[(depth, colour)][0]
    raw = zlib.decompress(b"".join(parts[b"IDAT"]))
    return Seed(data, np.frombuffer(raw, np.uint8).reshape(height, 1 + width * bpp), bpp)


def pick(rng: np.random.Generator, values: Any) -> Any:
    return values[int(rng.integers(len(values)))]


def side(rng: np.random.Generator, limit: int) -> int:
    """A crop size up to `limit`: an edge size (around the AVX2 band and tile sizes) or any."""
    size = pick(rng, EDGE_SIZES) if rng.random() < 0.5 else int(rng.integers(1, limit + 1))
    return min(size, limit)


def reshape(rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
    """A crop of the filtered rows (the filter bytes kept), or the same bytes as other rows."""
    if rng.random() < 0.1:  # the whole stream as h2 rows of another width (filter bytes land anywhere)
        total = rows.size
        for _ in range(20):
            h2 = int(rng.integers(1, min(total, 4096) + 1))
            if total % h2 == 0 and total // h2 >= 2:
                return rows.reshape(h2, total // h2)
    if rng.random() < 0.03:
        return rows
    height, rowbytes = rows.shape[0], rows.shape[1] - 1
    h, w = side(rng, height), side(rng, rowbytes) if rng.random() < 0.8 else rowbytes
    y0, x0 = int(rng.integers(height - h + 1)), int(rng.integers(rowbytes - w + 1))
    return np.concatenate([rows[y0 : y0 + h, :1], rows[y0 : y0 + h, 1 + x0 : 1 + x0 + w]], axis=1)


def corrupt_stream(rng: np.random.Generator, stream: bytes) -> bytes:
    s = bytearray(stream)
    op = int(rng.integers(6))
    if op == 0:  # flipped bits
        for _ in range(int(rng.integers(1, 9))):
            s[int(rng.integers(len(s)))] ^= 1 << int(rng.integers(8))
    elif op == 1:
        del s[int(rng.integers(len(s))) :]
    elif op == 2:  # trailing bytes, or a second stream
        s += rng.bytes(int(rng.integers(1, 9))) if rng.random() < 0.5 else zlib.compress(b"\x00\x01")
    elif op == 3:  # wrong Adler-32
        s[-1] ^= 1
    elif op == 4:  # zlib header: method, window size, check bits, preset dictionary
        s[int(rng.integers(2))] = int(rng.integers(256))
    else:
        s = bytearray()
    return bytes(s)


def damage(rng: np.random.Generator, data: bytes) -> bytes:
    """Byte-level damage: flipped bits, truncation, a wrong CRC or length field, bytes after IEND."""
    d = bytearray(data)
    op = int(rng.integers(5))
    chunks = list(chunk_offsets(data))
    offset, length, _ = pick(rng, chunks)
    if op == 0:
        for _ in range(int(rng.integers(1, 9))):
            d[int(rng.integers(len(d)))] ^= 1 << int(rng.integers(8))
    elif op == 1:
        del d[int(rng.integers(len(d))) :]
    elif op == 2:
        d[offset + 8 + length + int(rng.integers(4))] ^= 1 << int(rng.integers(8))
    elif op == 3:
        value = pick(rng, (0, length - 1, length + 1, 2**31 - 1, 2**31, 2**32 - 1))
        d[offset : offset + 4] = struct.pack(">I", max(value, 0))
    else:
        d += rng.bytes(int(rng.integers(1, 64)))
    return bytes(d)


def mutant(rng: np.random.Generator, seed: Seed) -> Case:
    """One mutated PNG from `seed`: its rows cropped or reinterpreted, in one of LAYOUTS, with wrong
    filter bytes, noise, header lies, a corrupt stream, extra chunks or byte damage, each at random."""
    rows = reshape(rng, seed.rows)
    layout = pick(rng, list(LAYOUTS)) if rng.random() < 0.3 else (8, 0)
    bpp, mode = LAYOUTS[layout]
    rowbytes = (rows.shape[1] - 1) // bpp * bpp
    if rowbytes == 0:
        layout, (bpp, mode), rowbytes = (8, 0), LAYOUTS[(8, 0)], rows.shape[1] - 1
    rows = np.array(rows[:, : 1 + rowbytes])
    height, width = rows.shape[0], rowbytes // bpp
    if rng.random() < 0.3:  # wrong filter bytes: mostly other valid types, some invalid ones
        picked = rng.integers(height, size=int(rng.integers(1, height + 1)))
        rows[picked, 0] = rng.integers(0, 5 if rng.random() < 0.8 else 256, size=len(picked))
    if rng.random() < 0.1:
        rows[rng.integers(height, size=16), 1 + rng.integers(rowbytes, size=16)] = rng.integers(256, size=16)
    clean = True
    header = [width, height, *layout, 0, 0, 0]
    if rng.random() < 0.1:  # a header that lies about the data
        field = int(rng.integers(len(header)))
        if field < 2:
            header[field] = pick(rng, (*HUGE, width - 1, width + 1, height, height + 1))
        else:
            header[field] = pick(rng, HEADER_VALUES[field - 2])
        clean = False
    level = int(rng.integers(10)) if rows.size < 1 << 14 else 1
    stream = zlib.compress(rows.tobytes(), level)
    if rng.random() < 0.1:
        stream, clean = corrupt_stream(rng, stream), False
    parts = int(rng.integers(1, 5)) if rng.random() < 0.2 else 1
    step = -(-len(stream) // parts) or 1
    body = [chunk(b"IDAT", stream[i : i + step]) for i in range(0, max(len(stream), 1), step)]
    for _ in range(int(rng.integers(1, 4)) if rng.random() < 0.2 else 0):
        kind = pick(rng, list(EXTRA_CHUNKS))
        at = int(rng.integers(len(body) + 1))
        clean = clean and kind in HARMLESS and at in (0, len(body))  # Pillow stops at a gap between IDATs
        body.insert(at, chunk(kind, EXTRA_CHUNKS[kind]))
    data = SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", *header)) + b"".join(body) + chunk(b"IEND", b"")
    if rng.random() < 0.25:
        data, clean = damage(rng, data), False
    return Case(data, rows, width, bpp, mode, clean)


def pillow_pixels(data: bytes) -> tuple[str, bytes] | None:
    """Pillow's mode and pixel bytes (16-bit samples big-endian, as in the file), or None if it fails."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            pixels = np.asarray(image)
            return image.mode, (pixels.astype(">u2") if image.mode == "I;16" else pixels).tobytes()
    except Exception:  # any refusal: what Pillow refuses is not compared
        return None


def check_png(case: Case, png_fast: ModuleType, stats: Counter[str]) -> None:
    pixels = png_fast.decode_grey8(case.data)  # its contract: pixels or None, never an exception
    pillow = pillow_pixels(case.data) if pixels is not None or case.clean else None
    if pixels is not None:
        stats["png_fast decoded, same pixels as Pillow"] += 1
        assert pillow == ("L", pixels.tobytes()), "png_fast's pixels are not Pillow's"
    raw, height = case.rows.tobytes(), case.rows.shape[0]
    results = []
    for vector in (True, False):
        out = bytearray(height * case.width * case.bpp)
        try:
            png_fast._unfilter(raw, out, case.width, height, case.bpp, vector)
            results.append(bytes(out))
        except ValueError as exc:
            results.append(str(exc))
    assert results[0] == results[1], "the AVX2 bands and the scalar loops disagree"
    if case.clean and isinstance(results[0], bytes):
        stats[f"unfilter bpp {case.bpp} same as Pillow"] += 1
        assert pillow == (case.mode, results[0]), "the C unfilter's bytes are not Pillow's"


# -------------------------------------------------------------------------------------------- resize


@contextmanager
def without_c(*modules: ModuleType) -> Iterator[None]:
    """The modules' numpy/scipy paths: their `_resample` set to None for the block."""
    kept = [m._resample for m in modules]
    for m in modules:
        m._resample = None
    try:
        yield
    finally:
        for m, value in zip(modules, kept, strict=True):
            m._resample = value


def check_resize(rng: np.random.Generator, resize: ModuleType, classifier: ModuleType) -> None:
    shape = pick(rng, ((1, 1), (1, int(rng.integers(2, 4000))), (int(rng.integers(2, 4000)), 1),
                       (int(rng.integers(1, 4)), int(rng.integers(500, 4000))), tuple(rng.integers(1, 300, size=2))))
    size = pick(rng, (1, 2, 3, 7, 32, 64, 224)) if rng.random() < 0.5 else int(rng.integers(1, 160))
    values = pick(rng, (np.arange(256), np.array([0, 255]), np.array([0]), np.array([255])))
    levels = rng.choice(values, size=shape).astype(np.uint8)
    fast = resize.resize_grey(levels, size)
    with without_c(resize):
        reference = resize.resize_grey(levels, size)
    pillow = np.asarray(Image.fromarray(levels.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR))
    assert np.abs(fast - reference).max() <= RESIZE_TOLERANCE, f"resize {shape} -> {size} is not scipy's"
    # Pillow sums in double, the passes in float32: the rounding grows with the taps per output pixel.
    taps = sum(2 * max(n / size, 1) + 2 for n in shape)
    assert np.abs(fast - pillow).max() <= RESIZE_TOLERANCE + 255 * 2**-23 * taps, f"resize {shape} -> {size}"
    grey = levels if rng.random() < 0.5 else rng.choice(EXTREMES, size=shape)
    out = classifier.preprocess(grey, size)
    with without_c(classifier):
        assert np.array_equal(out, classifier.preprocess(grey, size), equal_nan=True), "channels_f32 differs"


def check_misuse(rng: np.random.Generator, unfilter: Any, resample: ModuleType) -> None:
    """A consistent call with one argument changed: a size or a shorter buffer must be refused (an exception),
    another row pointer or index may also give a valid matrix; nothing may be touched outside the buffers."""
    from shared.resize import _csr_arrays

    height, width, size = (int(v) for v in rng.integers(1, 40, size=3))
    vertical, horizontal = _csr_arrays(height, size), _csr_arrays(width, size)
    big = pick(rng, (-1, 0, 2**31, 2**62, 2**63 - 1, -(2**63)))
    calls = {
        "unfilter": [bytes(height * (width + 1)), bytearray(height * width), width, height, 1],
        "rows_u8": [*vertical, np.zeros(height * width, np.uint8), np.zeros(size * width, np.float32), height, width],
        "cols_f32": [*horizontal, np.zeros(height * width, np.float32), np.zeros(height * size, np.float32), height,
                     width],
        "channels_f32": [np.zeros(width, np.float32), np.zeros(3 * width, np.float32), width, 255.0, 1.0, 1, 2, 3],
    }
    name = pick(rng, list(calls))
    args = calls[name]
    position = int(rng.integers(len(args) if name != "channels_f32" else 3))
    if isinstance(args[position], int):
        args[position], must_refuse = big, True
    elif name in ("rows_u8", "cols_f32") and position < 2 and rng.random() < 0.7:
        changed = np.array(args[position])
        changed[int(rng.integers(len(changed)))] = pick(rng, (-1, height + 1, width + 1, 2**31 - 1))
        args[position], must_refuse = changed, False
    else:
        length = len(args[position])
        args[position] = args[position][: int(rng.integers(length))]
        must_refuse = True
    try:
        (unfilter if name == "unfilter" else getattr(resample, name))(*args)
    except REFUSALS:
        return
    assert not must_refuse, f"{name} took a wrong argument {position}"


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lib", type=Path, help="folder of the sanitized builds (default: the normal ones)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--seed", type=int, default=20260)
    args = parser.parse_args(argv)
    files = load_sanitized(args.lib) if args.lib else {}
    from shared import _png_unfilter, _resample, classifier, png_fast, resize

    full = [read_seed(p) for p in sorted((args.data / "nih-full" / "images").glob("*.png"))]
    small = [read_seed(p) for p in sorted((args.data / "nih-64" / "images").glob("*.png"))]
    assert full and small, f"no seed PNGs under {args.data}"
    stats: Counter[str] = Counter()
    started = time.perf_counter()
    for i in range(args.first, args.first + args.count):
        rng = np.random.default_rng([args.seed, i])
        seed = pick(rng, full if rng.random() < 0.5 else small)
        try:
            check_png(mutant(rng, seed), png_fast, stats)
            if i % 5 == 0:
                check_resize(rng, resize, classifier)
                check_misuse(rng, _png_unfilter.unfilter, _resample)
                stats["resize and misuse"] += 1
        except AssertionError as exc:
            raise AssertionError(f"case {i} (--seed {args.seed} --first {i} --count 1): {exc}") from exc
        if (i + 1) % 10000 == 0:
            print(f"{i + 1} cases, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    summary = {"cases": args.count, "seconds": round(time.perf_counter() - started, 1), "modules": files,
               "vector": bool(png_fast.VECTOR), **stats}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
