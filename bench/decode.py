"""What one 1024 px X-ray costs before the forward pass, and whether another PNG decoder would help.

    python -m bench.decode [--images 16] [--repeats 5]

On the nih-full PNGs (1024 x 1024, 8-bit) it times, per image and single-threaded (best of the
repeats): the service's own stages (`read_image`: Pillow decode plus the float conversion;
`preprocess`: the resize to the model's input and the normalisation), and Pillow's bare PNG decode
next to the other decoders that are installed (pyspng, imagecodecs' libpng and spng, OpenCV; none of
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
from shared.classifier import preprocess
from shared.config import ImageLimits
from shared.images import read_image

Decoder = Callable[[bytes], np.ndarray]


def _pillow(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


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
    pixels = [read_image(d, limits).pixels for d in datas]
    print(common.machine_description())
    print(f"{len(datas)} nih-full PNGs of 1024 x 1024, best of {args.repeats}, one thread")

    reference = [_pillow(d) for d in datas]
    pillow_ms = best_ms_per_item(datas, _pillow, args.repeats)  # type: ignore[arg-type]
    stage_rows: list[list[object]] = [
        ["read_image (Pillow decode + float [0, 1])", best_ms_per_item(datas, lambda d: read_image(d, limits),  # type: ignore[arg-type]
                                                                       args.repeats)],
        [f"preprocess (resize to {args.input_size}, normalise)",
         best_ms_per_item(pixels, lambda p: preprocess(p, args.input_size), args.repeats)],  # type: ignore[arg-type]
    ]
    common.print_table("service stages", [[name, f"{ms:.2f}"] for name, ms in stage_rows],
                       ["stage", "ms per image"])

    rows: list[list[object]] = [["Pillow (the service's)", f"{pillow_ms:.2f}", "1.00", "reference"]]
    for name, decode in optional_decoders().items():
        same = all(np.array_equal(np.squeeze(decode(d)), ref) for d, ref in zip(datas, reference, strict=True))
        ms = best_ms_per_item(datas, decode, args.repeats)  # type: ignore[arg-type]
        rows.append([name, f"{ms:.2f}", f"{pillow_ms / ms:.2f}", "identical" if same else "DIFFERENT"])
    common.print_table("PNG decode alone", rows, ["decoder", "ms per image", "speed-up", "pixels"])


if __name__ == "__main__":
    main()

