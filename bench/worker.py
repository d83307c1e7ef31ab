"""The bare forward pass and the worker path, side by side: `python -m bench.worker [options]`.

For each runtime (TensorFlow f32, OpenVINO f32 and bf16 by default; one the CPU cannot run is
skipped with the runtime's own message) and each --processes count P, P probe processes load the
model as worker children do (the machine's CPUs split between them) and, alternating with every
other runtime and P within each repeat, run the same real images (half nih-full 1024 px PNGs, half
kermany-224 JPEGs):
- bare: the forward pass alone, at batch 1 and at --batch, in all P processes at once;
- path: the images as studies through worker.processing.process_study, one at a time in each
  process, against its own SQLite and storage (what `xray worker --concurrency P` children do):
  read, decode, preprocess, forward, CAMs and boxes, the heatmaps written, the rows committed.
Figures are whole-machine images/s (studies/s for the path), medians over --repeats after a warm-up;
path / bare b1 is the share of the bare pass the worker keeps. Also each process's load time and RSS.
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
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench import common  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--runtimes", default="tensorflow-f32,openvino-f32,openvino-bf16",
                        help="runtime-precision pairs, comma-separated")
    parser.add_argument("--processes", default="2", help="probe processes per runtime, e.g. 2 or 1,2")
    parser.add_argument("--images", type=int, default=32, help="images per measurement (half PNG, half JPEG)")
    parser.add_argument("--batch", type=int, default=8, help="the larger bare pass's batch size")
    parser.add_argument("--repeats", type=int, default=5, help="measured repeats (after one warm-up)")
    parser.add_argument("--bundle", type=Path, help="model bundle (default: models/demo, else an untrained 224)")
    parser.add_argument("--json", type=Path, help="also write every sample to this JSON file")
    return parser.parse_args(argv)


def split_runtime(name: str) -> tuple[str, str]:
    runtime, _, precision = name.partition("-")
    return runtime, precision or "f32"


def usable_runtimes(names: str) -> list[str]:
    from shared.runtime import RuntimeUnavailable, choose_runtime

    usable = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        try:
            choose_runtime(*split_runtime(name))
            usable.append(name)
        except RuntimeUnavailable as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
    return usable


# ----------------------------------------------------------------------------- probe process


class WorkerPath:
    """worker.processing.process_study against its own SQLite and storage in `scratch`."""

    def __init__(self, scratch: Path, paths: list[Path]) -> None:
        from shared.config import load_settings
        from shared.db import make_engine, make_session_factory
        from shared.storage import LocalStorage

        self.settings = load_settings({"XRAY_VAR_DIR": str(scratch / "var")})
        self.settings.var_dir.mkdir(parents=True, exist_ok=True)
        env = common.tree_env(common.PROJECT_ROOT, XRAY_VAR_DIR=str(self.settings.var_dir),
                              DATABASE_URL=self.settings.database_url)
        common.xray(common.PROJECT_ROOT, env, "db", "upgrade")
        self.engine = make_engine(self.settings.database_url)
        self.factory = make_session_factory(self.engine)
        self.storage = LocalStorage(self.settings.storage_dir)
        self.originals = [(p.name, p.read_bytes()) for p in paths]

    def add_studies(self) -> list[int]:
        """One queued study per image, as the web's intake leaves them."""
        from shared.db import session_scope
        from shared.models import Batch, Study

        with session_scope(self.factory) as session:
            batch = Batch(label="bench")
            studies = []
            for name, data in self.originals:
                fmt = "png" if data[:4] == b"\x89PNG" else "jpeg"
                studies.append(Study(batch=batch, original_filename=name, sha256=hashlib.sha256(data).hexdigest(),
                                     stored_path=self.storage.put_original(data, fmt), format=fmt,
                                     size_bytes=len(data)))
            session.add_all(studies)
            session.flush()
            return [s.id for s in studies]

    def run(self, diagnoser: Any) -> None:
        """Every image once through process_study, one at a time; every study must end done."""
        from worker.processing import process_study

        for study_id in self.add_studies():
            outcome = process_study(self.factory, self.storage, diagnoser, study_id, settings=self.settings)
            if outcome.status != "done":
                raise RuntimeError(f"study {study_id} ended {outcome.status}: {outcome.reason}")


def probe_main(argv: list[str]) -> int:
    """`python -m bench.worker --probe RUNTIME PRECISION PROCESSES BUNDLE IMAGE...`: load the model
    (timed), say ready, then answer each stdin line: 'bare N' (the forward pass over the images at
    batch N) or 'path' (the images through the worker path)."""
    import numpy as np
    import psutil

    runtime, precision, processes, bundle, *images = argv
    start = time.perf_counter()
    from shared.config import ImageLimits
    from shared.diagnosis import Diagnoser
    from shared.frontal import FrontalReference
    from shared.images import read_image_file
    from shared.runtime import load_predictor

    predictor = load_predictor(bundle, runtime, precision, processes=int(processes))
    paths = [Path(p) for p in images]
    batch = np.stack([predictor.preprocess(read_image_file(p, ImageLimits()).pixels) for p in paths])
    predictor.predict(batch[:1])
    load_s = time.perf_counter() - start
    diagnoser = Diagnoser(predictor, FrontalReference.load(bundle, predictor.card.frontal))
    with tempfile.TemporaryDirectory(prefix="xray-bench-probe-") as scratch:
        path = WorkerPath(Path(scratch), paths)
        path.run(diagnoser)  # warm: SQLite, storage folders, the resize weights
        _say({"event": "ready", "load_s": load_s, "rss_mb": psutil.Process().memory_info().rss / 1e6})
        for line in sys.stdin:
            command, *size = line.split()
            if command == "bare":
                for i in range(0, len(batch), int(size[0])):
                    predictor.predict(batch[i:i + int(size[0])])
            elif command == "path":
                path.run(diagnoser)
            else:
                break
            _say({"event": "done"})
        path.engine.dispose()
    return 0


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


# ----------------------------------------------------------------------------- the run


def start_probe(name: str, processes: int, bundle: Path, images: list[Path]) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "bench.worker", "--probe", *split_runtime(name), str(processes), str(bundle),
            *map(str, images)]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=common.PROJECT_ROOT)


def ask(group: list[subprocess.Popen[str]], command: str) -> float:
    """Send `command` to every probe of a group at once; seconds until the last has answered."""
    start = time.perf_counter()
    for proc in group:
        assert proc.stdin is not None
        proc.stdin.write(f"{command}\n")
        proc.stdin.flush()
    for proc in group:
        read_answer(proc)
    return time.perf_counter() - start


def read_answer(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"probe {proc.pid} ended without an answer (exit {proc.wait()})")


def measure(args: argparse.Namespace, runtimes: list[str], bundle: Path) -> dict[str, list[float]]:
    """Samples by key 'what/runtime/P': bare_b1, bare_bN, path (whole-machine rates), load_s, rss_mb."""
    images = common.mixed_images(args.images)
    counts = [int(p) for p in args.processes.split(",")]
    commands = {"bare_b1": "bare 1", f"bare_b{args.batch}": f"bare {args.batch}", "path": "path"}
    samples: dict[str, list[float]] = defaultdict(list)
    groups: dict[str, list[subprocess.Popen[str]]] = {}
    try:
        for name in runtimes:
            for processes in counts:
                key = f"{name}/{processes}"
                groups[key] = []
                for _ in range(processes):  # one load at a time: the first converts an OpenVINO IR (cached),
                    proc = start_probe(name, processes, bundle, images)  # no load time is inflated by another
                    groups[key].append(proc)
                    ready = read_answer(proc)
                    samples[f"load_s/{key}"].append(ready["load_s"])
                    samples[f"rss_mb/{key}"].append(ready["rss_mb"])
        for repeat in range(args.repeats + 1):
            for key, group in groups.items():
                for what, command in commands.items():
                    rate = len(images) * len(group) / ask(group, command)
                    if repeat:
                        samples[f"{what}/{key}"].append(rate)
            print(f"  repeat {repeat}{' (warm-up)' if not repeat else ''} done, load {os.getloadavg()[0]:.2f}",
                  file=sys.stderr, flush=True)
    finally:
        for group in groups.values():
            for proc in group:
                if proc.stdin:
                    proc.stdin.close()
                proc.wait(timeout=60)
    return samples


def report(args: argparse.Namespace, samples: dict[str, list[float]]) -> None:
    med = common.median
    rows = []
    for key in [k.split("/", 1)[1] for k in samples if k.startswith("load_s/")]:
        name, processes = key.split("/")
        bare, path = med(samples[f"bare_b1/{key}"]), med(samples[f"path/{key}"])
        rows.append([name, processes, bare, med(samples[f"bare_b{args.batch}/{key}"]), path, path / bare,
                     med(samples[f"load_s/{key}"]), med(samples[f"rss_mb/{key}"])])
    common.print_table(f"Bare forward pass and worker path, {args.images} images, whole machine, median of "
                       f"{args.repeats}", rows,
                       ["runtime", "processes", "bare b1 images/s", f"bare b{args.batch} images/s",
                        "path studies/s", "path / bare b1", "load s", "RSS MB per process"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe"]:
        return probe_main(argv[1:])
    args = parse_args(argv)
    runtimes = usable_runtimes(args.runtimes)
    if not runtimes:
        print("no usable runtime", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="xray-bench-") as scratch:
        bundle = common.ensure_bundle(args.bundle, Path(scratch))
        print(f"machine: {common.machine_description()}; bundle {bundle}", flush=True)
        samples = measure(args, runtimes, bundle)
    report(args, samples)
    print(f"\nload average after: {os.getloadavg()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(samples, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
