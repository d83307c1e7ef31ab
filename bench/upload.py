"""Upload speed while workers are busy: `python -m bench.upload [--files 500] [--repeats 3]`.

Posts --files distinct kermany-224 JPEGs to the web API (gunicorn, 1 process x 4 threads) in
requests of --chunk files, first with no worker running, then while `xray worker --concurrency
--workers` diagnoses the queue those uploads filled; also times a small read (the batch's JSON) in
both states. Real Redis (db 11, a queue name of its own; only its keys are deleted afterwards),
SQLite and storage in a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import common
from tests.service_harness import delete_queue_keys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.upload", description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--chunk", type=int, default=500, help="files per request (500: one request)")
    parser.add_argument("--repeats", type=int, default=3, help="measured uploads per state (after a warm-up)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes in the busy state")
    parser.add_argument("--runtime", default="openvino-bf16", help="the busy workers' runtime-precision")
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--redis-url", default=common.BENCH_REDIS_URL)
    return parser.parse_args(argv)


def upload_seconds(web: common.WebClient, paths: list[Path], chunk: int) -> tuple[float, int]:
    start = time.perf_counter()
    batch_id = None
    for i in range(0, len(paths), chunk):
        batch_id = web.upload(paths[i:i + chunk], batch_id)["batch_id"]
    assert batch_id is not None
    return time.perf_counter() - start, batch_id


def read_ms(web: common.WebClient, batch_id: int, count: int = 20) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        web.counts(batch_id)
        times.append((time.perf_counter() - start) * 1000.0)
    return common.median(times)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = common.kermany_images(args.files)
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    runtime, _, precision = args.runtime.partition("-")
    queue = f"xray.bench.{uuid.uuid4().hex[:8]}"
    results: dict[str, list[float]] = {"idle": [], "busy": []}
    reads: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="xray-bench-upload-") as tmp:
        scratch = Path(tmp)
        env = common.tree_env(common.PROJECT_ROOT, XRAY_VAR_DIR=str(scratch / "var"), REDIS_URL=args.redis_url,
                              XRAY_QUEUE=queue, MODEL_DIR=str(common.ensure_bundle(args.bundle, scratch)),
                              XRAY_RUNTIME=runtime, XRAY_PRECISION=precision or "f32")
        (scratch / "var").mkdir()
        port = common.free_port()
        web = common.WebClient(f"http://127.0.0.1:{port}", common.api_token(common.PROJECT_ROOT, env))
        print(f"machine: {common.machine_description()}", flush=True)
        gunicorn = [sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", "4", "--bind",
                    f"127.0.0.1:{port}", "--log-level", "warning", "web.wsgi:app"]
        worker = [sys.executable, "-m", "cli.main", "worker", "--concurrency", str(args.workers), "-l", "WARNING"]
        try:
            with common.process(gunicorn, env, scratch / "web.log"):
                common.wait_until(web.up, 60, what="the web server")
                for repeat in range(args.repeats + 1):
                    seconds, batch_id = upload_seconds(web, paths, args.chunk)
                    if repeat:
                        results["idle"].append(seconds)
                reads["idle"] = read_ms(web, batch_id)
                with common.process(worker, env, scratch / "worker.log") as proc:
                    common.wait_until(lambda: web.counts(batch_id)["done"] > 0 or proc.poll() is not None,
                                      300, what="the workers to start diagnosing")
                    for _ in range(args.repeats):
                        seconds, batch_id = upload_seconds(web, paths, args.chunk)
                        results["busy"].append(seconds)
                    reads["busy"] = read_ms(web, batch_id)
        finally:
            delete_queue_keys(args.redis_url, queue)
    rows = [[state, common.median(v), args.files / common.median(v), megabytes / common.median(v), reads[state]]
            for state, v in results.items()]
    common.print_table(f"Upload of {args.files} kermany-224 files ({megabytes:.1f} MB) in requests of {args.chunk}, "
                       f"median of {args.repeats}; busy: {args.workers} x {args.runtime} workers diagnosing", rows,
                       ["workers", "seconds", "files/s", "MB/s", "GET batch JSON ms"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
