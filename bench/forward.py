"""Measurement kernels of `bench.worker`: the compute ceiling, the bare forward pass, the original
demo's eager approach, heatmap encoding, and a probe process for threads-versus-processes runs."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import ImageLimits
from shared.images import read_image_file

RESNET50_MACS_224 = 4.1e9  # multiply-accumulates per image at 224 x 224 (scales with the pixel count)


def resnet50_flops(input_size: int) -> float:
    return 2.0 * RESNET50_MACS_224 * (input_size / 224.0) ** 2


def preprocessed(paths: list[Path], input_size: int) -> np.ndarray:
    from shared.classifier import preprocess

    return np.stack([preprocess(read_image_file(p, ImageLimits()).pixels, input_size) for p in paths])


def forward_images_per_s(predictor: Any, batch: np.ndarray, batch_size: int) -> float:
    """Images/s of predict() over `batch` in chunks of batch_size (outputs copied to numpy)."""
    start = time.perf_counter()
    for i in range(0, len(batch), batch_size):
        predictor.predict(batch[i:i + batch_size])
    return len(batch) / (time.perf_counter() - start)


# The matmul shapes whose best rate is the measured ceiling: (side n, matrices chained). One large
# product is what AVX-512 reaches its peak on; with AMX the tiles outrun memory there, and the best
# rate comes from a chain of small products whose operands stay in each core's L2 (on the session 6
# Intel machine: 4096^3 1.35, 2048^3 1.39, 32 chained 512^3 2.77 TFLOP/s in bf16; f32 within 10%
# across all three).
CEILING_SHAPES = ((2048, 1), (4096, 1), (512, 32))


def openvino_matmul(precision: str, threads: int, n: int, chain: int = 1) -> tuple[Any, float]:
    """A call running `chain` chained n x n x n matmuls compiled by OpenVINO's CPU plugin (oneDNN,
    the kernels its convolutions use) in `precision` with `threads` threads, and its FLOP count."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], ov.Type.f32, name="a")
    product = a
    for _ in range(chain):  # scaled so that the chain's values stay near 1
        weights = rng.standard_normal((n, n), dtype=np.float32) / np.float32(np.sqrt(n))
        product = ops.matmul(product, ops.constant(weights), False, False)
    model = ov.Model([product], [a], "matmul")
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
              "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    x = rng.standard_normal((n, n), dtype=np.float32)
    return (lambda: request.infer({0: x})), 2.0 * n ** 3 * chain


def matmul_peak_gflops(precision: str, threads: int, n: int = 2048, chain: int = 1, calls: int = 12) -> float:
    """Best GFLOP/s of `openvino_matmul` over `calls` calls after a warm-up call."""
    call, flop = openvino_matmul(precision, threads, n, chain)
    call()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return flop / best / 1e9


def measured_ceiling_gflops(precision: str, threads: int) -> float:
    """The measured compute ceiling: the best of `matmul_peak_gflops` over CEILING_SHAPES."""
    return max(matmul_peak_gflops(precision, threads, n, chain) for n, chain in CEILING_SHAPES)


def original_approach_images_per_s(model: Any, batch: np.ndarray, top: int = 3) -> float:
    """The original demo: an eager `model(x)`, then one eager GradientTape pass per reported finding
    (the top 3), each a full forward and backward pass, Grad-CAM from the mean gradient."""
    import tensorflow as tf

    start = time.perf_counter()
    for image in batch:
        x = tf.constant(image[None])
        probabilities, _ = model(x, training=False)
        for c in np.argsort(-probabilities.numpy()[0])[:top]:
            with tf.GradientTape() as tape:
                probs, features = model(x, training=False)
                score = probs[:, int(c)]
            grads = tape.gradient(score, features)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))[0]
            cam.numpy()
    return len(batch) / (time.perf_counter() - start)


def heatmap_encoding(cams: np.ndarray, repeats: int = 3) -> list[dict[str, Any]]:
    """ms and bytes per study (14 maps) for the heatmap layer as written now and alternatives."""
    import io

    from PIL import Image

    from shared.gradcam import cam_from_png, cam_sheet_png, heatmap_layer_png, jet, upsample

    def layer_rgba(cam: np.ndarray, size: int) -> Image.Image:
        fine = np.clip(upsample(cam, size, size), 0.0, 1.0)
        rgba = np.empty((size, size, 4), dtype=np.uint8)
        rgba[..., :3] = jet(fine)
        rgba[..., 3] = (fine * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(rgba)

    def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    labels = [f"map{k}" for k in range(len(cams))]

    def each(encode_one: Any) -> Any:
        return lambda maps: [encode_one(cam) for cam in maps]

    def sheet(maps: Any) -> list[bytes]:
        return [cam_sheet_png(dict(zip(labels, maps, strict=True)))]

    def rendered(maps: Any) -> list[bytes]:
        stored = sheet(maps)[0]
        return [heatmap_layer_png(cam_from_png(stored, label), 256) for label in labels]

    variants = {
        "one 16-bit CAM sheet PNG (what the worker writes now)": sheet,
        "layers rendered from the sheet (what the web does, one per request)": rendered,
        "RGBA PNG 256 px, level 1 (what the worker wrote before)": each(lambda c: heatmap_layer_png(c, 256)),
        "PNG 128 px, level 1": each(lambda c: heatmap_layer_png(c, 128)),
        "PNG 256 px, level 6": each(lambda c: encoded(layer_rgba(c, 256), "PNG", compress_level=6)),
        "WebP 256 px, quality 80": each(lambda c: encoded(layer_rgba(c, 256), "WEBP", quality=80)),
    }
    rows = []
    for name, encode in variants.items():
        times, size = [], 0
        for _ in range(repeats):
            start = time.perf_counter()
            size = sum(len(data) for data in encode(cams))
            times.append((time.perf_counter() - start) * 1000.0)
        rows.append({"variant": name, "ms_per_study": float(np.median(times)), "kb_per_study": size / 1000})
    return rows


# ----------------------------------------------------------------------------- probe process


def forward_concurrent_images_per_s(predictor: Any, batch: np.ndarray, callers: int) -> float:
    """Images/s of predict() at batch 1 from `callers` threads at once (a predictor with that many
    streams then has every stream busy: its bare forward throughput)."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(predictor.predict, [batch[i:i + 1] for i in range(len(batch))]))
    return len(batch) / (time.perf_counter() - start)


def probe_main(argv: list[str]) -> int:
    """`python -m bench.worker --probe RUNTIME PRECISION THREADS PROCESSES BUNDLE IMAGE...`:
    load the model (timed), say ready, then on each 'go' line run the images at batch 1 (the bare
    forward pass; 'go N': at batch N), on each 'path' line run them through the worker path
    (process_study against this probe's own SQLite and storage, one study at a time, as a prefork
    child does), on each 'outside' line measure the CPU a study costs outside its forward pass
    (`bench.worker.outside_forward_cpu_ms`, warm and right after a real pass), and report (for
    'path', also the mean milliseconds per study of each stage the studies' rows record)."""
    import tempfile

    runtime, precision, threads, processes, bundle, *images = argv
    from worker.allocator import keep_freed_memory

    keep_freed_memory()  # as worker.runtime does in every model-holding worker process
    start = time.perf_counter()
    from shared.diagnosis import Diagnoser
    from shared.runtime import load_predictor
    from worker.forward_gate import ForwardGate

    predictor = load_predictor(bundle, runtime, precision, processes=int(processes), threads=int(threads))
    paths = [Path(p) for p in images]
    batch = preprocessed(paths, predictor.input_size)
    predictor.predict(batch[:1])
    load_s = time.perf_counter() - start
    diagnoser = Diagnoser(ForwardGate(predictor))
    with tempfile.TemporaryDirectory(prefix="xray-probe-") as scratch:
        from bench.worker import WorkerPath, mean_stage_ms, outside_forward_cpu_ms

        path = WorkerPath(Path(scratch), paths)
        path.run(diagnoser)  # warm: SQLite, storage folders, the resize weights
        _say({"event": "ready", "load_s": load_s, "rss_mb": _rss_mb(), "pid": os.getpid(), "scratch": scratch})
        for line in sys.stdin:
            command, *size = line.split()
            if command not in ("go", "path", "outside"):
                break
            start = time.perf_counter()
            answer: dict[str, Any] = {"stages_ms": {}}
            if command == "go":
                forward_images_per_s(predictor, batch, int(size[0]) if size else 1)
            elif command == "path":
                answer["stages_ms"] = mean_stage_ms(path.run(diagnoser)[1])
            else:
                answer["outside_cpu_ms"] = {
                    "warm": outside_forward_cpu_ms(path, predictor, batch),
                    "after_pass": outside_forward_cpu_ms(path, predictor, batch, after_pass=True)}
            _say({"event": "done", "seconds": time.perf_counter() - start, "rss_mb": _rss_mb(), **answer})
        path.engine.dispose()
    return 0


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6
