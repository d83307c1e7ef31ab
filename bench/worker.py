"""Worker speed, side by side in one run: `python -m bench.worker [options]` (see --help).

Measures, on the same real images (nih-full 1024 px PNGs and kermany-224 JPEGs, half each):
1. the bare forward pass of each runtime (batch 1 and --batch), in this process;
2. the full worker path per study (worker.processing.process_study: read, decode, preprocess,
   forward, CAMs and boxes for all 14 findings, the 14 CAMs stored as one 16-bit PNG sheet, rows
   committed to SQLite), one study at a time and --in-flight studies at once (threads sharing one
   model behind worker.forward_gate.ForwardGate, without and with micro-batching);
3. end to end: a batch uploaded to the web API (gunicorn) until its last study is done, through a
   real Redis queue and `xray worker`: prefork with 1 and 2 processes, and threads with --in-flight
   studies in one process (one web, queue and database per configuration, all alive at once so that
   the configurations alternate within each repeat);
4. the original demo's approach (eager call + 3 eager GradientTape passes per image);
plus the compute ceiling (OpenVINO matmul, f32 and bf16), 1 process x 2 threads versus 2 processes
x 1 thread (bare forward, separate processes), the model load time and RSS per process, and the
heatmap encoding cost. Each figure is the median of --repeats runs after a warm-up; the compared
things alternate within each repeat.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench import common  # noqa: E402
from bench.forward import (  # noqa: E402
    CEILING_SHAPES,
    forward_concurrent_images_per_s,
    forward_images_per_s,
    heatmap_encoding,
    measured_ceiling_gflops,
    original_approach_images_per_s,
    preprocessed,
    probe_main,
    resnet50_flops,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--runtimes", default="tensorflow-f32,openvino-f32,openvino-bf16",
                        help="runtime-precision pairs to compare (bf16 is skipped where the CPU lacks it)")
    parser.add_argument("--bundle", type=Path, help="model bundle (default: models/demo, else an untrained 224)")
    parser.add_argument("--images", type=int, default=16, help="images per measurement (half nih-full, half kermany)")
    parser.add_argument("--batch", type=int, default=8, help="the batched forward pass's batch size")
    parser.add_argument("--in-flight", type=int, default=3,
                        help="studies in flight in the pipelined worker path (threads sharing one model)")
    parser.add_argument("--streams", type=int, default=2,
                        help="OpenVINO streams of the streamed worker path (XRAY_WORKER_STREAMS); 1 skips it")
    parser.add_argument("--stream-in-flight", type=int, default=4,
                        help="studies in flight in the streamed worker path")
    parser.add_argument("--repeats", type=int, default=5, help="measured repeats (after one warm-up)")
    parser.add_argument("--original-images", type=int, default=4, help="images per repeat for the original approach")
    parser.add_argument("--e2e-runtimes", default="tensorflow-f32,openvino-bf16",
                        help="runtimes measured end to end (prefork x1, x2, threads x --in-flight); '' for none")
    parser.add_argument("--e2e-images", type=int, default=32, help="studies per uploaded batch end to end")
    parser.add_argument("--e2e-repeats", type=int, default=3)
    parser.add_argument("--boost-ghz", type=float, default=3.7,
                        help="the CPU's boost clock, for the nominal ceiling (EPYC 9004: 3.7)")
    parser.add_argument("--skip-probes", action="store_true", help="skip the threads-versus-processes probes")
    parser.add_argument("--extra-layouts", default="",
                        help="more probe layouts PROCESSESxTHREADS[-ram] besides 1x2 and 2x1, e.g. 3x1 (more "
                             "processes than cores) or 2x1-ram (the probes' SQLite and storage in /dev/shm, where "
                             "a sync costs nothing: what the durable writes cost the path); printed with the "
                             "same columns")
    parser.add_argument("--redis-url", default=common.BENCH_REDIS_URL)
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--scratch", type=Path, help="scratch folder (default: a temporary one, removed)")
    return parser.parse_args(argv)


def split_runtime(name: str) -> tuple[str, str]:
    runtime, _, precision = name.partition("-")
    return runtime, precision or "f32"


def usable_runtimes(names: str) -> list[str]:
    from shared.runtime import RuntimeUnavailable, choose_runtime

    usable = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        try:
            choose_runtime(*split_runtime(name))
            usable.append(name)
        except RuntimeUnavailable as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
    return usable


@dataclass
class Results:
    figures: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, key: str, value: float) -> None:
        self.samples[key].append(value)

    def med(self, key: str) -> float:
        return common.median(self.samples.get(key, []))


# ----------------------------------------------------------------------------- in-process: 1, 2, 4


class WorkerPath:
    """worker.processing.process_study against SQLite and storage in a scratch folder."""

    def __init__(self, scratch: Path, paths: list[Path]) -> None:
        from shared.db import make_engine, make_session_factory
        from shared.migrate import upgrade
        from shared.storage import Storage

        self.settings = common.bench_settings(scratch)
        self.settings.var_dir.mkdir(parents=True, exist_ok=True)
        upgrade(self.settings.database_url)
        self.engine = make_engine(self.settings.database_url)
        self.factory = make_session_factory(self.engine)
        self.storage = Storage(self.settings.storage_dir)
        self.originals = [(p.name, p.read_bytes()) for p in paths]

    def add_studies(self) -> list[int]:
        from shared.db import session_scope
        from shared.models import Batch, Study

        with session_scope(self.factory) as session:
            batch = Batch(label="bench")
            studies = []
            for name, data in self.originals:
                fmt = "png" if data[:4] == b"\x89PNG" else "jpeg"
                rel = self.storage.put_original(data, fmt)
                studies.append(Study(batch=batch, original_filename=name, sha256=hashlib.sha256(data).hexdigest(),
                                     stored_path=rel, format=fmt, size_bytes=len(data)))
            session.add_all(studies)
            session.flush()
            return [s.id for s in studies]

    def run(self, diagnoser: Any, in_flight: int = 1) -> tuple[float, list[dict[str, float]]]:
        """Studies/s through process_study with `in_flight` studies at once (threads sharing one
        model behind a ForwardGate, as `xray worker --pool threads --concurrency K` runs them), and
        each study's recorded stage timings."""
        from sqlalchemy import select

        from shared.db import session_scope
        from shared.models import Study

        ids = self.add_studies()
        start = time.perf_counter()
        self.process(diagnoser, ids, in_flight)
        rate = len(ids) / (time.perf_counter() - start)
        with session_scope(self.factory) as session:
            timings = list(session.scalars(select(Study.timings).where(Study.id.in_(ids))))
        return rate, timings

    def process(self, diagnoser: Any, ids: list[int], in_flight: int = 1) -> None:
        """process_study for each id, `in_flight` at once; every study must end done."""
        from concurrent.futures import ThreadPoolExecutor

        from worker.processing import process_study

        def one(study_id: int) -> None:
            outcome = process_study(self.factory, self.storage, diagnoser, study_id, settings=self.settings)
            if outcome.status != "done":
                raise RuntimeError(f"study {study_id} ended {outcome.status}: {outcome.reason}")

        if in_flight == 1:
            for study_id in ids:
                one(study_id)
        else:
            with ThreadPoolExecutor(in_flight) as pool:
                list(pool.map(one, ids))


def mean_stage_ms(timings: list[dict[str, float]]) -> dict[str, float]:
    """Mean milliseconds per study of each stage in the studies' recorded timings (means, so that the
    stages add up to their share of the path's time)."""
    stages = sorted({stage for row in timings for stage in row})
    return {stage: sum(row.get(stage, 0.0) for row in timings) / len(timings) for stage in stages} if timings else {}


def _diagnose_only(diagnoser: Any, paths: list[Path]) -> float:
    """Images/s of read_image + Diagnoser.diagnose (decode, preprocess, forward, 14 CAMs and boxes):
    the worker path without storing the CAMs and without the database."""
    from shared.config import ImageLimits
    from shared.images import read_image

    originals = [p.read_bytes() for p in paths]
    start = time.perf_counter()
    for data in originals:
        diagnoser.diagnose(read_image(data, ImageLimits()))
    return len(originals) / (time.perf_counter() - start)


class ReplayedForward:
    """A stand-in for a predictor that answers every forward pass at once with real outputs it
    recorded earlier: the worker path through it costs only what a study needs besides the forward
    pass (decode, preprocess, CAMs and boxes, the sheet, SQL, storage). For measuring that cost only."""

    def __init__(self, predictor: Any, batch: Any) -> None:
        self.predictor = predictor
        self.probabilities, self.features = predictor.predict(batch[:1])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)

    def predict(self, batch: Any) -> tuple[Any, Any]:
        import numpy as np

        return np.repeat(self.probabilities, len(batch), 0), np.repeat(self.features, len(batch), 0)


def outside_forward_cpu_ms(path: WorkerPath, predictor: Any, batch: Any, after_pass: bool = False) -> float:
    """CPU ms per study of the worker path without its forward pass (one study at a time). With
    `after_pass`, each study runs right after a real forward pass (not counted) has filled the CPU's
    caches with the model, as in a worker; without, the studies follow each other with warm caches."""
    from shared.diagnosis import Diagnoser

    diagnoser = Diagnoser(ReplayedForward(predictor, batch))
    ids = path.add_studies()
    spent = 0.0
    for index, study_id in enumerate(ids):
        if after_pass:
            predictor.predict(batch[index % len(batch)][None])
        start = time.process_time()
        path.process(diagnoser, [study_id])
        spent += time.process_time() - start
    return spent / len(ids) * 1000.0


def in_process(args: argparse.Namespace, runtimes: list[str], bundle: Path, scratch: Path, results: Results) -> None:
    from shared.diagnosis import Diagnoser
    from shared.runtime import load_predictor
    from worker.forward_gate import ForwardGate

    paths = common.mixed_images(args.images)
    predictors = {}
    for name in runtimes:
        start = time.perf_counter()
        predictors[name] = load_predictor(bundle, *split_runtime(name))
        results.figures[f"in_process_load_s/{name}"] = time.perf_counter() - start
    size = next(iter(predictors.values())).input_size
    batch = preprocessed(paths, size)
    path = WorkerPath(scratch / "worker-path", paths)
    diagnosers = {name: Diagnoser(ForwardGate(p)) for name, p in predictors.items()}
    streamed = {name: load_predictor(bundle, *split_runtime(name), streams=args.streams)
                for name in runtimes if args.streams > 1 and name.startswith("openvino")}
    streamed_diagnosers = {name: Diagnoser(ForwardGate(p)) for name, p in streamed.items()}
    batched = {name: Diagnoser(ForwardGate(p, max_batch=args.in_flight)) for name, p in predictors.items()}
    keras_model = next((p.classifier.model for p in predictors.values() if hasattr(p, "classifier")), None)
    original = batch[: args.original_images]
    stage_timings: dict[str, list[dict[str, float]]] = defaultdict(list)
    cpus = len(os.sched_getaffinity(0))

    for repeat in range(args.repeats + 1):
        warm = repeat == 0
        for name in runtimes:
            b1 = forward_images_per_s(predictors[name], batch, 1)
            bn = forward_images_per_s(predictors[name], batch, args.batch)
            bk = forward_images_per_s(predictors[name], batch, args.in_flight)
            diagnose_only = _diagnose_only(diagnosers[name], paths)
            outside = outside_forward_cpu_ms(path, predictors[name], batch)
            rate, timings = path.run(diagnosers[name])
            pipelined, _ = path.run(diagnosers[name], args.in_flight)
            coalesced, _ = path.run(batched[name], args.in_flight)
            if name in streamed:
                streams_bare = forward_concurrent_images_per_s(streamed[name], batch, args.streams)
                streams_path, _ = path.run(streamed_diagnosers[name], args.stream_in_flight)
                if not warm:
                    results.add(f"forward_streams/{name}", streams_bare)
                    results.add(f"worker_path_streams/{name}", streams_path)
            if not warm:
                results.add(f"worker_path_k/{name}", pipelined)
                results.add(f"worker_path_kb/{name}", coalesced)
                results.add(f"diagnose_only/{name}", diagnose_only)
                results.add(f"outside_forward_cpu_ms/{name}", outside)
                results.add(f"forward_b1/{name}", b1)
                results.add(f"forward_b{args.batch}/{name}", bn)
                results.add(f"forward_bk/{name}", bk)
                results.add(f"worker_path/{name}", rate)
                stage_timings[name].extend(timings)
        for precision in sorted({split_runtime(n)[1] for n in runtimes}):
            peak = measured_ceiling_gflops(precision, cpus)
            if not warm:
                results.add(f"ceiling_gflops/{precision}", peak)
        if keras_model is not None:
            rate = original_approach_images_per_s(keras_model, original)
            if not warm:
                results.add("original", rate)
        print(f"  repeat {repeat}{' (warm-up)' if warm else ''} done, load {common.load_average()[0]:.2f}",
              file=sys.stderr, flush=True)

    for name, rows in stage_timings.items():
        stages = sorted({k for row in rows for k in row})
        results.figures[f"stages_ms/{name}"] = {s: common.median([r[s] for r in rows if s in r]) for s in stages}

    from shared.gradcam import class_activation_maps

    first = predictors[runtimes[0]]
    _, features = first.predict(batch[:1])
    cams = class_activation_maps(features[0], first.dense_kernel)
    results.figures["heatmap_encoding"] = heatmap_encoding(cams)
    path.engine.dispose()


# ----------------------------------------------------------------------------- probes: threads vs processes


RAM_FOLDER = Path("/dev/shm")  # a RAM file system on Linux: a sync there costs nothing


@dataclass(frozen=True)
class Layout:
    """A probe layout: `processes` probe processes with `threads` inference threads each; `ram`:
    their SQLite and storage in RAM_FOLDER instead of the scratch folder's disk."""

    processes: int
    threads: int
    ram: bool = False


def extra_layouts(args: argparse.Namespace) -> list[str]:
    """The --extra-layouts, e.g. ['3x1', '2x1-ram']."""
    return list(filter(None, args.extra_layouts.split(",")))


def parse_layout(name: str) -> Layout:
    """'PxT' (P processes x T threads) or 'PxT-ram' (the same with SQLite and storage in RAM)."""
    shape, dash, where = name.partition("-")
    numbers = shape.split("x")
    if len(numbers) != 2 or not all(n.isdigit() and int(n) > 0 for n in numbers) or (dash and where != "ram"):
        raise SystemExit(f"--extra-layouts: {name!r} is not PROCESSESxTHREADS[-ram], e.g. 3x1 or 2x1-ram")
    if where and not RAM_FOLDER.is_dir():
        raise SystemExit(f"--extra-layouts {name}: {RAM_FOLDER} (a RAM file system) is not here")
    processes, threads = (int(n) for n in numbers)
    return Layout(processes, threads, ram=bool(where))


def probe_layouts(args: argparse.Namespace) -> dict[str, Layout]:
    """{name: layout}: 1 x all CPUs, 2 x half each, and --extra-layouts."""
    cpus = len(os.sched_getaffinity(0))
    layouts = {"1x2": Layout(1, cpus), "2x1": Layout(2, max(1, cpus // 2))}
    layouts.update({extra: parse_layout(extra) for extra in extra_layouts(args)})
    return layouts


def probe_commands(args: argparse.Namespace, layout: Layout) -> list[tuple[str, str | None]]:
    """What each repeat asks a layout's probes, and the key of the images/s it gives: the bare pass
    at batch 1 and --batch, the worker path, and, with one inference thread per process (whose
    threads do not spin on after a pass, as a second one does), the CPU a study costs outside its
    forward pass, warm and right after a real pass (no rate)."""
    commands: list[tuple[str, str | None]] = [("go", "layout"), (f"go {args.batch}", f"layout_b{args.batch}"),
                                              ("path", "layout_path")]
    if layout.threads == 1:
        commands.append(("outside", None))
    return commands


def start_probe(name: str, layout: Layout, bundle: Path, images: list[str]) -> subprocess.Popen[str]:
    """One probe process of `layout` for runtime `name` (`bench.forward.probe_main`). It keeps its
    SQLite and storage in a temporary folder: in RAM_FOLDER for a -ram layout."""
    argv = [sys.executable, "-m", "bench.worker", "--probe", *split_runtime(name), str(layout.threads),
            str(layout.processes), str(bundle), *images]
    env = {**os.environ, **({"TMPDIR": str(RAM_FOLDER)} if layout.ram else {})}
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=common.PROJECT_ROOT, env=env)


def probes(args: argparse.Namespace, runtimes: list[str], bundle: Path, results: Results) -> None:
    """For each runtime: 1 process x 2 threads and 2 processes x 1 thread, the bare forward pass at
    batch 1 and the worker path (each process its own SQLite and storage, one study at a time: what
    `xray worker --concurrency 2` children do), alternating within each repeat; the same for each
    --extra-layouts (3x1, or 2x1-ram with the probes' files in RAM); with one thread per process, the
    CPU a study costs outside its forward pass (`probe_commands`). Also each process's model load
    time and RSS."""
    layouts = probe_layouts(args)
    images = [str(p) for p in common.mixed_images(args.images)]
    groups: dict[tuple[str, str], list[subprocess.Popen[str]]] = {}
    try:
        for name in runtimes:
            for layout, shape in layouts.items():
                group = [start_probe(name, shape, bundle, images) for _ in range(shape.processes)]
                groups[(name, layout)] = group
                for proc in group:  # load one group at a time: load times are not inflated by others
                    ready = _read(proc)
                    if shape.ram and not Path(ready["scratch"]).is_relative_to(RAM_FOLDER):
                        raise RuntimeError(f"probe of {layout} keeps its files in {ready['scratch']}, not in RAM")
                    results.add(f"probe_load_s/{name}", ready["load_s"])
                    results.add(f"probe_rss_mb/{name}", ready["rss_mb"])
        for repeat in range(args.repeats + 1):
            for (name, layout), group in groups.items():
                for command, key in probe_commands(args, layouts[layout]):
                    start = time.perf_counter()
                    for proc in group:
                        assert proc.stdin is not None
                        proc.stdin.write(f"{command}\n")
                        proc.stdin.flush()
                    answers = [_read(proc) for proc in group]
                    rate = len(images) * len(group) / (time.perf_counter() - start)
                    if not repeat:
                        continue
                    if key:
                        results.add(f"{key}_{layout}/{name}", rate)
                    for part, prefix in (("stages_ms", "path_stage_ms"), ("outside_cpu_ms", "outside_cpu_ms")):
                        for what in answers[0].get(part, {}):  # mean over the layout's processes
                            results.add(f"{prefix}_{layout}/{name}/{what}",
                                        sum(a[part][what] for a in answers) / len(answers))
    finally:
        for group in groups.values():
            for proc in group:
                if proc.stdin:
                    proc.stdin.close()
                proc.wait(timeout=60)


def _read(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"probe {proc.pid} ended without an answer (exit {proc.wait()})")


# ----------------------------------------------------------------------------- 3: end to end


@dataclass
class Service:
    name: str
    layout: str  # prefork-1, prefork-2, threads-K
    settings: Any
    web: common.WebClient
    worker_pid: int


def end_to_end(args: argparse.Namespace, runtimes: list[str], bundle: Path, scratch: Path, results: Results) -> None:
    from contextlib import ExitStack

    from shared.migrate import upgrade

    paths = common.mixed_images(args.e2e_images)
    services: list[Service] = []
    with ExitStack() as stack:
        for name in runtimes:
            runtime, precision = split_runtime(name)
            for layout in e2e_layouts(args):
                pool, workers = layout.split("-")
                folder = scratch / f"e2e-{name}-{layout}"
                settings = common.bench_settings(folder)
                settings.var_dir.mkdir(parents=True, exist_ok=True)
                upgrade(settings.database_url)
                env = common.service_env(settings, args.redis_url, bundle, XRAY_RUNTIME=runtime,
                                         XRAY_PRECISION=precision)
                stack.callback(common.delete_queue_keys, args.redis_url, settings.queue_name)
                port = common.free_port()
                stack.enter_context(common.process(common.web_argv(port), env, folder / "web.log"))
                argv = common.worker_argv(int(workers), pool)
                worker = stack.enter_context(common.process(argv, env, folder / "worker.log"))
                web = common.WebClient(f"http://127.0.0.1:{port}", common.bench_token(settings.database_url))
                common.wait_until(web.up, 60, what=f"the web server of {name} {layout}")
                service = Service(name, layout, settings, web, worker.pid)
                start = time.perf_counter()
                _run_batch(service, paths[:2])  # the first batch waits for the model to load
                results.figures[f"e2e_first_batch_s/{name}/{layout}"] = time.perf_counter() - start
                services.append(service)
        for repeat in range(args.e2e_repeats + 1):
            for service in services:
                seconds = _run_batch(service, paths)
                if repeat:
                    results.add(f"e2e/{service.name}/{service.layout}", len(paths) / seconds)
            print(f"  end-to-end repeat {repeat} done, load {common.load_average()[0]:.2f}", file=sys.stderr,
                  flush=True)
        for service in services:
            tree = common.tree_rss_mb(service.worker_pid)
            children = [mb for pid, mb in tree.items() if pid != service.worker_pid]
            results.figures[f"e2e_rss_mb/{service.name}/{service.layout}"] = {
                "main": tree.get(service.worker_pid, 0.0), "pool_processes": children}


def e2e_layouts(args: argparse.Namespace) -> list[str]:
    """Worker layouts measured end to end: prefork with 1 and 2 processes (a model each), and one
    process with --in-flight studies at once (threads pool, one model)."""
    return ["prefork-1", "prefork-2", f"threads-{args.in_flight}"]


def _run_batch(service: Service, paths: list[Path], timeout_s: float = 900.0) -> float:
    start = time.perf_counter()
    body = service.web.upload(paths)
    batch_id = body["batch_id"]
    expected = len(body["accepted"])

    def finished() -> bool:
        counts = service.web.counts(batch_id)
        return counts.get("done", 0) + counts.get("failed", 0) >= expected

    common.wait_until(finished, timeout_s, interval_s=0.1, what=f"batch {batch_id} of {service.name}")
    seconds = time.perf_counter() - start
    failed = service.web.counts(batch_id).get("failed", 0)
    if failed:
        raise RuntimeError(f"{failed} studies failed in {service.name}; see its worker.log")
    return seconds


# ----------------------------------------------------------------------------- report


# The stages a study's row records (worker.processing, shared.diagnosis), grouped for the report.
# forward_batch is the whole batch's pass (the same as forward at batch 1), not a stage of its own.
OTHER_STAGES = ("read", "preprocess", "cam", "heatmap")


def study_time(results: Results, name: str, layout: str, processes: int) -> dict[str, float]:
    """Where one process's wall time per study goes in a probe layout (ms, medians over repeats):
    the bare forward pass per image and the path per study (each process's share of the layout's
    whole-machine rate), the stages the rows record (forward inside the path, decode, the wait for
    the sheet to be durable, the other stages together) and the rest (claim and record
    transactions, Python between stages, time off the CPU)."""
    def stage(key: str) -> float:
        samples = f"path_stage_ms_{layout}/{name}/{key}"
        return results.med(samples) if samples in results.samples else 0.0

    row = {"bare": processes * 1000.0 / results.med(f"layout_{layout}/{name}"),
           "path": processes * 1000.0 / results.med(f"layout_path_{layout}/{name}"),
           "forward": stage("forward"), "decode": stage("decode"), "write": stage("write"),
           "other": sum(stage(k) for k in OTHER_STAGES)}
    row["rest"] = row["path"] - row["forward"] - row["decode"] - row["write"] - row["other"]
    return row


# Nominal peak per core and cycle: two FMA pipes of 256 bits (Zen 2-4, which splits AVX-512 into
# two halves; AVX2-only CPUs) give 16 f32 FMAs = 32 FLOP, two pipes of 512 bits (Zen 5, Intel
# server cores with AVX-512) 64 FLOP; bf16 dot products (VDPBF16PS) double either. With AMX, bf16
# runs on the tile unit instead: one TDPBF16PS (16 x 16 x 32 = 8,192 multiply-adds) every 16 cycles,
# 512 multiply-adds = 1,024 FLOP per cycle.
AMX_BF16_FLOP_PER_CYCLE = 1024


def nominal_flops_per_cycle(cpuinfo: str | None = None) -> dict[str, int]:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines()[:30] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    amd = fields.get("vendor_id") == "AuthenticAMD"
    wide = "avx512f" in flags and (not amd or int(fields.get("cpu family", "0") or 0) >= 26)
    f32 = 64 if wide else 32
    bf16 = AMX_BF16_FLOP_PER_CYCLE if "amx_bf16" in flags else 2 * f32
    return {"f32": f32, "bf16": bf16}


def ceiling(results: Results, runtimes: list[str], input_size: int, boost_ghz: float) -> None:
    """The measured ceiling (median over repeats of the best matmul rate, measured between the
    forward passes, so under the same load) and the nominal one (cores x boost clock x FLOP/cycle)."""
    cpus = len(os.sched_getaffinity(0))
    flops = resnet50_flops(input_size)
    for precision in sorted({split_runtime(n)[1] for n in runtimes}):
        peak = results.med(f"ceiling_gflops/{precision}")
        nominal = cpus * boost_ghz * nominal_flops_per_cycle()[precision]
        results.figures[f"ceiling_gflops/{precision}"] = peak
        results.figures[f"ceiling_images_per_s/{precision}"] = peak * 1e9 / flops
        results.figures[f"nominal_gflops/{precision}"] = nominal
        results.figures[f"nominal_images_per_s/{precision}"] = nominal * 1e9 / flops


def best_forward(results: Results, name: str) -> tuple[float, str]:
    """The fastest bare forward pass of runtime `name` measured in this run, over every batch size
    and layout (in this process: forward_bN and OpenVINO streams; in probe processes: layout_PxT,
    layout_bN_PxT), and where it was measured."""
    rates = {key.split("/")[0]: results.med(key) for key in results.samples
             if key.endswith(f"/{name}") and key.startswith(("forward_b", "forward_streams/", "layout_"))
             and not key.startswith("layout_path")}
    where = max(rates, key=lambda k: rates[k])
    return rates[where], where


def bound_row(results: Results, name: str) -> list[Any]:
    """The bound F / (F + O) for one runtime: F the forward pass's CPU ms per image with every core
    in it (from the bare 2 x 1 pass), O the CPU ms a study costs outside it, measured warm in this
    process and, in the 2 x 1 probes, warm and right after a real pass; beside the measured ratio."""
    med, samples = results.med, results.samples
    cpus = len(os.sched_getaffinity(0))
    bare = med(f"layout_2x1/{name}") if f"layout_2x1/{name}" in samples else med(f"forward_b1/{name}")
    forward_ms = cpus * 1000.0 / bare
    outside = med(f"outside_forward_cpu_ms/{name}")
    warm, after = (med(f"outside_cpu_ms_2x1/{name}/{what}") for what in ("warm", "after_pass"))
    measured = med(f"layout_path_2x1/{name}") / bare if f"layout_path_2x1/{name}" in samples else ""
    return [name, forward_ms, outside, forward_ms / (forward_ms + outside), warm, after,
            forward_ms / (forward_ms + after), measured]


def report(args: argparse.Namespace, runtimes: list[str], e2e: list[str], results: Results) -> None:
    f, med = results.figures, results.med
    fastest = {name: best_forward(results, name) for name in runtimes}
    rows = []
    for name in runtimes:
        b1 = med(f"forward_b1/{name}")
        ceil = f.get(f"ceiling_images_per_s/{split_runtime(name)[1]}", float("nan"))
        nominal = f.get(f"nominal_images_per_s/{split_runtime(name)[1]}", float("nan"))
        best = fastest[name][0]
        piped, coalesced = med(f"worker_path_k/{name}"), med(f"worker_path_kb/{name}")
        rows.append([name, b1, med(f"forward_b{args.batch}/{name}"), med(f"diagnose_only/{name}"),
                     med(f"worker_path/{name}"), med(f"worker_path/{name}") / b1, piped, piped / b1,
                     coalesced, coalesced / b1, coalesced / med(f"forward_bk/{name}"), best / ceil, best / nominal,
                     med(f"probe_load_s/{name}"), med(f"probe_rss_mb/{name}")])
    k = args.in_flight
    common.print_table("1-2. Forward pass and worker path, one process (images/s, median)", rows,
                       ["runtime", "forward b1", f"forward b{args.batch}", "diagnose only", "worker path 1",
                        "path 1/forward b1", f"path {k} in flight", f"path {k}/forward b1",
                        f"path {k} + batching", f"path {k}b/forward b1", f"path {k}b/forward b{k}",
                        "best forward/measured ceiling", "best forward/nominal", "load s (fresh process)",
                        "RSS MB after load"])
    if "original" in results.samples:
        best = max(runtimes, key=lambda n: med(f"worker_path/{n}"))
        common.print_table("4. The original approach (eager call + 3 eager GradientTape passes)", [
            ["original", med("original"), ""],
            [f"worker path, {best}", med(f"worker_path/{best}"), med(f"worker_path/{best}") / med("original")],
        ], ["what", "images/s", "x original"])
    shapes = ", ".join(f"{n}^3" if chain == 1 else f"{chain} chained {n}^3" for n, chain in CEILING_SHAPES)
    ceilings = [[p, f[f"ceiling_gflops/{p}"], f[f"ceiling_images_per_s/{p}"], f[f"nominal_gflops/{p}"],
                 f[f"nominal_images_per_s/{p}"]]
                for p in sorted({split_runtime(n)[1] for n in runtimes})]
    per_cycle = nominal_flops_per_cycle()
    common.print_table(f"Compute ceiling (measured: best OpenVINO matmul of {shapes}, all CPUs; nominal at "
                       f"{args.boost_ghz} GHz x {per_cycle['f32']} f32 / {per_cycle['bf16']} bf16 FLOP/cycle/core; "
                       "ResNet50 = 8.2 GFLOP at 224)", ceilings,
                       ["precision", "measured GFLOP/s", "images/s", "nominal GFLOP/s", "images/s"])
    common.print_table("The fastest forward pass of each runtime, any layout and batch (images/s)", [
        [n, rate, where, rate / f[f"ceiling_images_per_s/{split_runtime(n)[1]}"],
         rate / f[f"nominal_images_per_s/{split_runtime(n)[1]}"]] for n, (rate, where) in fastest.items()],
        ["runtime", "images/s", "where", "/ measured ceiling", "/ nominal"])
    if streamed := [n for n in runtimes if f"forward_streams/{n}" in results.samples]:
        common.print_table(f"2s. {args.streams} OpenVINO streams in one process, {args.stream_in_flight} studies in "
                           "flight (threads), images/s", [
            [n, med(f"forward_streams/{n}"), med(f"worker_path_streams/{n}"),
             med(f"worker_path_streams/{n}") / med(f"forward_streams/{n}"),
             med(f"worker_path_streams/{n}") / med(f"forward_b1/{n}")] for n in streamed],
            ["runtime", f"bare forward, {args.streams} streams busy", "worker path", "path / bare (same streams)",
             "path / forward b1 (1 stream)"])
    if any(k.startswith("layout_") for k in results.samples):
        b = args.batch
        common.print_table("Threads versus processes: bare forward b1 and the worker path (images/s, whole machine)", [
            [n, med(f"layout_1x2/{n}"), med(f"layout_2x1/{n}"), med(f"layout_2x1/{n}") / med(f"layout_1x2/{n}"),
             med(f"layout_b{b}_1x2/{n}"), med(f"layout_b{b}_2x1/{n}"),
             med(f"layout_path_1x2/{n}"), med(f"layout_path_1x2/{n}") / med(f"layout_1x2/{n}"),
             med(f"layout_path_2x1/{n}"), med(f"layout_path_2x1/{n}") / med(f"layout_2x1/{n}")]
            for n in runtimes], ["runtime", "bare 1 proc x 2 threads", "bare 2 procs x 1 thread", "ratio",
                                 f"bare b{b} 1x2", f"bare b{b} 2x1",
                                 "path 1x2", "path/bare 1x2", "path 2x1", "path/bare 2x1"])
        if extra := extra_layouts(args):
            common.print_table("More layouts: bare forward b1 and the worker path (images/s, whole machine)", [
                [n, layout, med(f"layout_{layout}/{n}"), med(f"layout_path_{layout}/{n}"),
                 med(f"layout_path_{layout}/{n}") / med(f"layout_{layout}/{n}"),
                 med(f"layout_path_{layout}/{n}") / med(f"layout_2x1/{n}")]
                for n in runtimes for layout in extra],
                ["runtime", "layout", "bare", "path", "path / bare (same layout)", "path / bare 2x1"])
    if any(k.startswith("path_stage_ms_") for k in results.samples):
        rows = []
        for n in runtimes:
            for layout, shape in probe_layouts(args).items():
                t = study_time(results, n, layout, shape.processes)
                rows.append([n, layout, t["bare"], t["path"], t["forward"], t["forward"] - t["bare"], t["decode"],
                             t["write"], t["other"], t["rest"], t["bare"] / t["path"]])
        common.print_table("Where a study's time goes: ms per study and process (bare: per image), the stages' mean "
                           "per study from the rows, median over repeats", rows,
                           ["runtime", "layout", "bare forward", "path", "forward in path", "forward - bare",
                            "decode", "sheet durable (wait)", "read, preprocess, CAMs, boxes, sheet encode",
                            "rest (SQL, Python, off CPU)", "path / bare"])
    if any(k.startswith("outside_forward_cpu_ms/") for k in results.samples):
        common.print_table("The bound: CPU per study outside the forward pass (one study at a time, the forward "
                           "replayed; warm: studies back to back in this process; in 2 x 1: in both probe "
                           "processes at once, warm and each right after a real forward pass) against the "
                           "forward pass's CPU per image", [bound_row(results, n) for n in runtimes],
                           ["runtime", "forward CPU ms / image", "outside CPU ms / study", "bound F / (F + O)",
                            "2x1 outside warm", "2x1 outside after a pass", "bound after a pass",
                            "measured path / bare 2x1"])
    if e2e:
        rows = []
        for name in e2e:
            for layout in e2e_layouts(args):
                rate = med(f"e2e/{name}/{layout}")
                rss = f.get(f"e2e_rss_mb/{name}/{layout}", {})
                rows.append([name, layout, rate, rate / med(f"forward_b1/{name}"),
                             ", ".join(f"{mb:.0f}" for mb in rss.get("pool_processes", [])),
                             f.get(f"e2e_first_batch_s/{name}/{layout}", float("nan"))])
        common.print_table(f"3. End to end: {args.e2e_images} studies uploaded until the last is done (studies/s)",
                           rows, ["runtime", "worker pool", "studies/s", "/ forward b1 (1 proc)",
                                  "RSS MB per pool process", "first batch s (incl. model load)"])
    for name in runtimes:
        stages = f.get(f"stages_ms/{name}")
        if stages:
            print(f"\nstages (median ms per study) {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    if "heatmap_encoding" in f:
        common.print_table("Heatmap layers, 14 per study", [[r["variant"], r["ms_per_study"], r["kb_per_study"]]
                                                            for r in f["heatmap_encoding"]],
                           ["variant", "ms per study", "KB per study"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe"]:
        return probe_main(argv[1:])
    args = parse_args(argv)
    runtimes = usable_runtimes(args.runtimes)
    e2e = usable_runtimes(args.e2e_runtimes) if args.e2e_runtimes else []
    if not runtimes:
        print("no usable runtime", file=sys.stderr)
        return 2
    from worker.allocator import keep_freed_memory

    keep_freed_memory()  # as worker.runtime does in every model-holding worker process
    results = Results()
    with tempfile.TemporaryDirectory(prefix="xray-bench-") as tmp:
        scratch = args.scratch or Path(tmp)
        bundle = common.ensure_bundle(args.bundle, scratch)
        from shared.classifier import read_card
        from shared.runtime import load_predictor

        card = read_card(bundle)
        for name in runtimes:  # convert (and cache) OpenVINO IRs before anything is timed
            if name.startswith("openvino"):
                start = time.perf_counter()
                load_predictor(bundle, *split_runtime(name))
                results.figures[f"first_load_s/{name}"] = time.perf_counter() - start
        load_before = common.load_average()
        print(f"machine: {common.machine_description()}; load average {load_before}", flush=True)
        print(f"bundle {bundle} (version {card.version}, input {card.input_size}, trained {card.trained}); "
              f"{args.images} images (half nih-full, half kermany-224), {args.repeats} repeats + warm-up",
              flush=True)
        try:
            if not args.skip_probes:
                probes(args, runtimes, bundle, results)
            in_process(args, runtimes, bundle, scratch, results)
            if e2e:
                end_to_end(args, e2e, bundle, scratch, results)
        finally:  # report what was measured even when a later part fails
            ceiling(results, runtimes, card.input_size, args.boost_ghz)
            results.figures["load_average"] = {"before": load_before, "after": common.load_average()}
            report(args, runtimes, e2e, results)
            print(f"\nload average before {load_before}, after {common.load_average()}")
            if args.json:
                args.json.write_text(json.dumps({"figures": results.figures, "samples": results.samples}, indent=2,
                                                default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
