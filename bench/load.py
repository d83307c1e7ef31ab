"""End to end: studies uploaded through the web until the last is done, by real workers, from one or
more source trees side by side: `python -m bench.load [options]`.

For each runtime, each --tree (default: this one) runs its own `xray up` with --workers prefork
processes (its web, workers and embedded Redis; SQLite and storage in a temporary folder; the model
bundle shared), all alive at once. After a warm-up batch (which also waits for the models to load),
each repeat uploads --studies files to every tree in turn (A B A B ...), in requests of --chunk files
(the first makes the batch, the rest join it; `rerun=1`, so every file is a new study), and times
from the first byte uploaded to the last study finished (its row's finished_at). Printed: studies/s
per repeat and tree, the medians, and each tree's median over the first tree's. Every study must
end done. The service is driven only through its command line and HTTP API, so a tree may be any
checkout of this project (with its C extensions built in place there).

    python -m bench.load --tree ../old --tree . --runtimes tensorflow-f32,openvino-bf16,openvino-f32
    python -m bench.load --images kermany --studies 5840 --workers 1 --repeats 1   # a day's intake
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import common

START_TIMEOUT_S = 600.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    parser.add_argument("--tree", type=Path, action="append",
                        help="a source tree to measure (repeat for side by side; default: this one)")
    parser.add_argument("--runtimes", default="tensorflow-f32,openvino-bf16,openvino-f32",
                        help="runtime-precision pairs, comma-separated (XRAY_RUNTIME-XRAY_PRECISION)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of each service (prefork)")
    parser.add_argument("--studies", type=int, default=128, help="files per batch")
    parser.add_argument("--images", choices=("mixed", "kermany"), default="mixed",
                        help="mixed: half nih-full 1024 px PNGs, half kermany-224 JPEGs; kermany: JPEGs only")
    parser.add_argument("--chunk", type=int, default=200, help="files per upload request")
    parser.add_argument("--repeats", type=int, default=3, help="measured batches per tree (after a warm-up)")
    parser.add_argument("--bundle", type=Path, help="model bundle (default: models/demo, else an untrained 224)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for one batch")
    parser.add_argument("--json", type=Path, help="also write every sample to this JSON file")
    return parser.parse_args(argv)


@dataclass
class Service:
    """One tree's `xray up`, reachable over HTTP, with its SQLite file (read for finish times)."""

    tree: Path
    web: common.WebClient
    database: Path


@contextmanager
def xray_up(tree: Path, runtime: str, bundle: Path, workers: int, folder: Path) -> Iterator[Service]:
    """`xray up` from `tree` on a free port, with its own var folder; stopped with Ctrl-C (SIGINT)."""
    precision = runtime.partition("-")[2] or "f32"
    env = common.tree_env(tree, XRAY_VAR_DIR=str(folder), MODEL_DIR=str(bundle),
                          XRAY_RUNTIME=runtime.partition("-")[0], XRAY_PRECISION=precision)
    folder.mkdir(parents=True)
    token = common.api_token(tree, env)  # migrates the database first
    port = common.free_port()
    argv = [sys.executable, "-m", "cli.main", "up", "--port", str(port), "--workers", str(workers)]
    with common.process(argv, env, folder / "up.log", cwd=tree, stop=signal.SIGINT) as proc:
        web = common.WebClient(f"http://127.0.0.1:{port}", token)
        common.wait_until(lambda: web.up() or proc.poll() is not None, 120, what=f"xray up in {tree}")
        if proc.poll() is not None:
            raise SystemExit(f"xray up in {tree} exited ({proc.returncode}); see {folder / 'up.log'}")
        yield Service(tree, web, folder / "xray.db")


def run_batch(service: Service, paths: list[Path], chunk: int, timeout_s: float) -> float:
    """Seconds from the first byte uploaded to the last study finished; every study must end done."""
    started = datetime.now(UTC)
    start = time.monotonic()
    batch_id = None
    for i in range(0, len(paths), chunk):
        batch_id = service.web.upload(paths[i:i + chunk], batch_id)["batch_id"]
    assert batch_id is not None

    def finished() -> bool:
        counts = service.web.counts(batch_id)
        return counts["done"] + counts["failed"] >= len(paths)

    common.wait_until(finished, timeout_s, interval_s=0.25, what=f"batch {batch_id} in {service.tree}")
    polled_s = time.monotonic() - start
    counts = service.web.counts(batch_id)
    if counts["done"] != len(paths):
        raise RuntimeError(f"batch {batch_id} in {service.tree}: {counts}; see its up.log")
    last = last_finished(service.database, batch_id)
    return (last - started).total_seconds() if last else polled_s


def last_finished(database: Path, batch_id: int) -> datetime | None:
    """The batch's last finished_at as its rows record it (UTC), or None where it cannot be read."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
            (value,) = conn.execute("SELECT max(finished_at) FROM studies WHERE batch_id = ?", (batch_id,)).fetchone()
    except sqlite3.Error:
        return None
    moment = datetime.fromisoformat(value) if value else None
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment


def measure(args: argparse.Namespace, trees: list[Path], bundle: Path, scratch: Path) -> dict[str, list[float]]:
    """Studies/s samples keyed 'runtime/tree index'; the trees alternate within each repeat."""
    paths = (common.mixed_images if args.images == "mixed" else common.kermany_images)(args.studies)
    samples: dict[str, list[float]] = {}
    for runtime in filter(None, (r.strip() for r in args.runtimes.split(","))):
        with ExitStack() as stack:
            services = [stack.enter_context(xray_up(tree, runtime, bundle, args.workers, scratch / f"{runtime}-{i}"))
                        for i, tree in enumerate(trees)]
            for service in services:  # warm-up: waits for every worker process to hold its model
                run_batch(service, paths[:4 * args.workers], args.chunk, START_TIMEOUT_S)
            for repeat in range(args.repeats):
                for i, service in enumerate(services):
                    rate = len(paths) / run_batch(service, paths, args.chunk, args.timeout)
                    samples.setdefault(f"{runtime}/{i}", []).append(rate)
                    print(f"  {runtime} repeat {repeat + 1} tree {i}: {rate:.1f} studies/s", file=sys.stderr,
                          flush=True)
    return samples


def report(args: argparse.Namespace, trees: list[Path], samples: dict[str, list[float]]) -> None:
    rows = []
    for key, rates in samples.items():
        runtime, index = key.split("/")
        first = common.median(samples[f"{runtime}/0"])
        rows.append([runtime, f"{index}: {trees[int(index)]}", ", ".join(f"{r:.1f}" for r in rates),
                     common.median(rates), f"{common.median(rates) / first:.3f}"])
    common.print_table(f"End to end: {args.studies} {args.images} files uploaded until the last study is done, "
                       f"xray up with {args.workers} prefork worker(s) (studies/s)", rows,
                       ["runtime", "tree", "each repeat", "median", "median / tree 0's"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trees = [t.resolve() for t in (args.tree or [common.PROJECT_ROOT])]
    with tempfile.TemporaryDirectory(prefix="xray-bench-load-") as name:
        bundle = common.ensure_bundle(args.bundle, Path(name))
        print(f"machine: {common.machine_description()}; bundle {bundle}", flush=True)
        samples = measure(args, trees, bundle, Path(name))
    report(args, trees, samples)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(samples, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
