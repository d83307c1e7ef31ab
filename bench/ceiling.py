"""The machine's compute ceiling: `python -m bench.ceiling [--seconds S] [--n N]`.

Sustained GFLOP/s of a large square matmul on all CPUs, each kernel run back to back for about
--seconds (after a warm-up call), reported as the median and best call: NumPy (OpenBLAS) f32,
TensorFlow f32 and bf16 (oneDNN), OpenVINO f32 and bf16 (oneDNN, the kernels its convolutions use).
Run it on a quiet machine: every kernel uses every core. ResNet50 at 224 is 8.2 GFLOP per image, so
images/s at the ceiling = GFLOP/s / 8.2.
"""

from __future__ import annotations

import os

CPUS = len(os.sched_getaffinity(0))
os.environ["OPENBLAS_NUM_THREADS"] = str(CPUS)  # before NumPy is imported: all cores for the ceiling
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

RESNET50_GFLOP_224 = 8.2


def sustained(call: Callable[[], object], flop: float, seconds: float) -> dict[str, float]:
    """GFLOP/s of back-to-back calls for about `seconds` after one warm-up call: median and best."""
    call()
    rates: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        start = time.perf_counter()
        call()
        rates.append(flop / (time.perf_counter() - start) / 1e9)
    return {"median_gflops": statistics.median(rates), "best_gflops": max(rates), "calls": len(rates)}


def numpy_f32(n: int) -> Callable[[], object]:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    return lambda: a @ b


def tensorflow_matmul(n: int, precision: str) -> Callable[[], object]:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(CPUS)
    dtype = tf.bfloat16 if precision == "bf16" else tf.float32
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((n, n), dtype=np.float32), dtype=dtype)
    b = tf.constant(rng.standard_normal((n, n), dtype=np.float32), dtype=dtype)
    matmul = tf.function(lambda x, y: tf.linalg.matmul(x, y))
    return lambda: matmul(a, b).numpy()


def openvino_kernel(n: int, precision: str) -> Callable[[], object]:
    from bench.forward import openvino_matmul

    return openvino_matmul(precision, CPUS, n)[0]


KERNELS: dict[str, Callable[[int], Callable[[], object]]] = {
    "numpy-f32": numpy_f32,
    "tensorflow-f32": lambda n: tensorflow_matmul(n, "f32"),
    "tensorflow-bf16": lambda n: tensorflow_matmul(n, "bf16"),
    "openvino-f32": lambda n: openvino_kernel(n, "f32"),
    "openvino-bf16": lambda n: openvino_kernel(n, "bf16"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of back-to-back calls per kernel")
    parser.add_argument("--n", type=int, default=4096, help="matrix side")
    parser.add_argument("--kernels", default=",".join(KERNELS))
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    flop = 2.0 * args.n ** 3
    results: dict[str, dict[str, float]] = {}
    print(f"{CPUS} CPUs, {args.n}^3 matmul, {args.seconds:.0f} s per kernel, load {os.getloadavg()[0]:.2f}")
    for name in [k.strip() for k in args.kernels.split(",") if k.strip()]:
        try:
            results[name] = sustained(KERNELS[name](args.n), flop, args.seconds)
        except Exception as exc:  # a runtime or precision this machine lacks: say so, go on
            print(f"{name}: not measured ({type(exc).__name__}: {exc})")
            continue
        r = results[name]
        print(f"{name}: median {r['median_gflops']:.0f} GFLOP/s, best {r['best_gflops']:.0f} "
              f"({r['calls']:.0f} calls) = {r['median_gflops'] / RESNET50_GFLOP_224:.1f} ResNet50-224 images/s")
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
