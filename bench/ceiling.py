"""The machine's compute ceiling: `python -m bench.ceiling [--seconds S] [--n N]`.

Sustained GFLOP/s of a large square matmul on all CPUs, each kernel run back to back for about
--seconds (after a warm-up call), reported as the median and best call: NumPy (OpenBLAS) f32,
TensorFlow f32 and bf16 (oneDNN), OpenVINO f32 and bf16 (oneDNN, the kernels its convolutions use),
and OpenVINO on a chain of 32 products of 512^3 (`-chain`): with AMX the tiles outrun memory on one
large product, and bf16 reaches its best rate only on small operands that stay in each core's L2.
Beside them the nominal peak: CPUs x --boost-ghz x FLOP per cycle and core (`nominal_flops_per_cycle`).
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
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

RESNET50_GFLOP_224 = 8.2
CHAIN = (512, 32)  # side and count of the chained products
# With AMX, bf16 runs on the tile unit: one TDPBF16PS (16 x 16 x 32 multiply-adds) every 16 cycles.
AMX_BF16_FLOP_PER_CYCLE = 1024


def nominal_flops_per_cycle(cpuinfo: str | None = None) -> dict[str, int]:
    """Peak FLOP per cycle and core: two 256-bit FMA pipes (AVX2 CPUs; Zen 2-4, which split AVX-512
    into halves) give 32 f32 FLOP, two 512-bit pipes (Zen 5, Intel server cores) 64; bf16 dot
    products double that, or AMX's tiles where the CPU has them."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    pairs = (line.split(":", 1) for line in cpuinfo.splitlines()[:30] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in pairs}
    flags = set(fields.get("flags", "").split())
    amd = fields.get("vendor_id") == "AuthenticAMD"
    wide = "avx512f" in flags and (not amd or int(fields.get("cpu family", "0") or 0) >= 26)
    f32 = 64 if wide else 32
    return {"f32": f32, "bf16": AMX_BF16_FLOP_PER_CYCLE if "amx_bf16" in flags else 2 * f32}


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


def openvino_matmul(precision: str, threads: int, n: int, chain: int = 1) -> tuple[Callable[[], Any], float]:
    """A call running `chain` chained n x n x n matmuls compiled by OpenVINO's CPU plugin in
    `precision` with `threads` threads, and its FLOP count."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], ov.Type.f32, name="a")
    product = a
    for _ in range(chain):  # scaled so that the chain's values stay near 1
        weights = rng.standard_normal((n, n), dtype=np.float32) / np.float32(np.sqrt(n))
        product = ops.matmul(product, ops.constant(weights), False, False)
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
              "PERFORMANCE_HINT": "LATENCY"}
    request = ov.Core().compile_model(ov.Model([product], [a], "matmul"), "CPU", config).create_infer_request()
    x = rng.standard_normal((n, n), dtype=np.float32)
    return (lambda: request.infer({0: x})), 2.0 * n ** 3 * chain


KERNELS: dict[str, Callable[[int], tuple[Callable[[], object], float]]] = {
    "numpy-f32": lambda n: (numpy_f32(n), 2.0 * n ** 3),
    "tensorflow-f32": lambda n: (tensorflow_matmul(n, "f32"), 2.0 * n ** 3),
    "tensorflow-bf16": lambda n: (tensorflow_matmul(n, "bf16"), 2.0 * n ** 3),
    "openvino-f32": lambda n: openvino_matmul("f32", CPUS, n),
    "openvino-bf16": lambda n: openvino_matmul("bf16", CPUS, n),
    "openvino-f32-chain": lambda _: openvino_matmul("f32", CPUS, *CHAIN),
    "openvino-bf16-chain": lambda _: openvino_matmul("bf16", CPUS, *CHAIN),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of back-to-back calls per kernel")
    parser.add_argument("--n", type=int, default=4096, help="matrix side")
    parser.add_argument("--kernels", default=",".join(KERNELS))
    parser.add_argument("--boost-ghz", type=float, default=3.7, help="the CPU's boost clock, for the nominal peak")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    print(f"{CPUS} CPUs, {args.n}^3 matmul, {args.seconds:.0f} s per kernel, load {os.getloadavg()[0]:.2f}")
    for precision, per_cycle in nominal_flops_per_cycle().items():
        nominal = CPUS * args.boost_ghz * per_cycle
        print(f"nominal {precision} at {args.boost_ghz} GHz: {nominal:.0f} GFLOP/s "
              f"= {nominal / RESNET50_GFLOP_224:.1f} ResNet50-224 images/s")
    for name in [k.strip() for k in args.kernels.split(",") if k.strip()]:
        try:
            results[name] = sustained(*KERNELS[name](args.n), args.seconds)
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
