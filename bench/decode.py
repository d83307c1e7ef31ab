"""What one 1024 px X-ray costs before the forward pass, and whether another PNG decoder would help.

    python -m bench.decode [--images 16] [--repeats 5]

On the nih-full PNGs (1024 x 1024, 8-bit) it times, per image and single-threaded (best of the
repeats): the service's own stages (`read_image`: the decode to uint8 levels, through
`shared.png_fast` when it is built; `preprocess` of those levels: the resize to the model's input and
the normalisation), the same stages the way the service did them before (Pillow's decode, a float
copy in [0, 1], Pillow's float resize), and the bare PNG decoders: the service's fast path, Pillow,
and the other decoders that are installed (pyspng, imagecodecs' libpng and spng, OpenCV; none of
them is a project dependency: install them into a scratch folder and put it on PYTHONPATH to
compare). Each decoder's pixels are checked against Pillow's: a faster decoder that disagrees is
reported as such. These are the per-study CPU figures behind the worker-path bound in
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib
import io
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from bench import common
from shared import png_fast
from shared.classifier import CAFFE_MEAN_BGR, PREPROCESSING, preprocess
from shared.config import ImageLimits
from shared.images import read_image

Decoder = Callable[[bytes], np.ndarray]


def _pillow(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _before(data: bytes, input_size: int) -> np.ndarray:
    """The earlier service path, for comparison: Pillow decode, float copy, Pillow float resize."""
    pixels = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) / np.float32(255.0)
    resized = np.asarray(Image.fromarray(pixels).resize((input_size, input_size), Image.Resampling.BILINEAR))
    scaled = np.clip(resized, 0.0, 1.0) * np.float32(PREPROCESSING["scale"])
    return scaled[:, :, None] - np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)


def optional_decoders() -> dict[str, Decoder]:
    """The other decoders that import here, by name."""
    found: dict[str, Decoder] = {}
    with_module: list[tuple[str, str, Callable[[object], Decoder]]] = [
        ("pyspng (libspng)", "pyspng", lambda m: m.load),  # type: ignore[attr-defined]
        ("imagecodecs png (libpng)", "imagecodecs", lambda m: m.png_decode),  # type: ignore[attr-defined]
        ("imagecodecs spng", "imagecodecs", lambda m: m.spng_decode),  # type: ignore[attr-defined]
        ("opencv imdecode", "cv2", _opencv),
    ]
    for name, module_name, pick in with_module:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found[name] = pick(module)
    return found


def _opencv(cv2: object) -> Decoder:
    cv2.setNumThreads(1)  # type: ignore[attr-defined]
    flag = cv2.IMREAD_UNCHANGED  # type: ignore[attr-defined]
    return lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), flag)  # type: ignore[attr-defined]


def best_ms_per_item(items: list[object], fn: Callable[[object], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - start) / len(items))
    return best * 1000.0


def full_size_pngs(count: int) -> list[bytes]:
    datas = [p.read_bytes() for p in common.nih_full_images()]
    big = [d for d in datas if Image.open(io.BytesIO(d)).size == (1024, 1024)]
    if not big:
        raise SystemExit("no 1024 x 1024 nih-full PNGs found")
    return big[:count]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--input-size", type=int, default=224)
    args = parser.parse_args(argv)

    datas = full_size_pngs(args.images)
    limits = ImageLimits()
    sources = [read_image(d, limits).source for d in datas]
    size = args.input_size
    print(common.machine_description())
    print(f"{len(datas)} nih-full PNGs of 1024 x 1024, best of {args.repeats}, one thread; {png_fast.describe()}")

    read_ms = best_ms_per_item(datas, lambda d: read_image(d, limits), args.repeats)  # type: ignore[arg-type]
    preprocess_ms = best_ms_per_item(sources, lambda p: preprocess(p, size), args.repeats)  # type: ignore[arg-type]
    before_ms = best_ms_per_item(datas, lambda d: _before(d, size), args.repeats)  # type: ignore[arg-type]
    stage_rows: list[list[object]] = [
        ["read_image (decode to uint8 levels)", f"{read_ms:.2f}"],
        [f"preprocess of the levels (resize to {size}, normalise)", f"{preprocess_ms:.2f}"],
        ["both", f"{read_ms + preprocess_ms:.2f}"],
        ["before: Pillow decode + float copy + Pillow float resize", f"{before_ms:.2f}"],
        ["speed-up", f"{before_ms / (read_ms + preprocess_ms):.2f}"],
    ]
    common.print_table("service stages", stage_rows, ["stage", "ms per image"])

    reference = [_pillow(d) for d in datas]
    pillow_ms = best_ms_per_item(datas, _pillow, args.repeats)  # type: ignore[arg-type]
    rows: list[list[object]] = [["Pillow (the service's fallback)", f"{pillow_ms:.2f}", "1.00", "reference"]]
    decoders: dict[str, Decoder | None] = {"shared.png_fast (the service's)": png_fast.decode_grey8}
    decoders.update(optional_decoders())
    for name, decode in decoders.items():
        if decode is None or decode(datas[0]) is None:
            rows.append([name, "n/a", "", png_fast.describe()])
            continue
        same = all(np.array_equal(np.squeeze(decode(d)), ref) for d, ref in zip(datas, reference, strict=True))
        ms = best_ms_per_item(datas, decode, args.repeats)  # type: ignore[arg-type]
        rows.append([name, f"{ms:.2f}", f"{pillow_ms / ms:.2f}", "identical" if same else "DIFFERENT"])
    common.print_table("PNG decode alone", rows, ["decoder", "ms per image", "speed-up", "pixels"])


if __name__ == "__main__":
    main()

