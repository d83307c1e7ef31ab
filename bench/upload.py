"""Upload speed while workers are busy: `python -m bench.upload [--files 500] [--repeats 3]`.

Posts --files kermany-224 JPEGs (distinct real images) to the web API (gunicorn, as in production)
in requests of --chunk files, first with no worker running (idle machine), then while an
`xray worker` with --workers processes diagnoses the queue those uploads filled (busy machine). Also
times a small read (GET of the batch's JSON) in both states. Real Redis (db 11, a unique queue
name; only that queue's keys are deleted), SQLite and storage in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import common


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
    batch_id = 0
    for i in range(0, len(paths), chunk):
        body = web.upload(paths[i:i + chunk])
        batch_id = body["batch_id"]
        if len(body["accepted"]) != len(paths[i:i + chunk]):
            raise RuntimeError(f"not every file was accepted: {body['rejected'][:3]}")
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
    from shared.migrate import upgrade

    paths = common.kermany_images(args.files)
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    runtime, _, precision = args.runtime.partition("-")
    with tempfile.TemporaryDirectory(prefix="xray-bench-upload-") as tmp:
        scratch = Path(tmp)
        bundle = common.ensure_bundle(args.bundle, scratch)
        settings = common.bench_settings(scratch)
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.database_url)
        env = common.service_env(settings, args.redis_url, bundle, XRAY_RUNTIME=runtime,
                                 XRAY_PRECISION=precision or "f32")
        port = common.free_port()
        web = common.WebClient(f"http://127.0.0.1:{port}", common.bench_token(settings.database_url))
        print(f"machine: {common.machine_description()}; load average {common.load_average()}", flush=True)
        results: dict[str, list[float]] = {"idle": [], "busy": []}
        reads: dict[str, float] = {}
        try:
            with common.process(common.web_argv(port), env, scratch / "web.log"):
                common.wait_until(web.up, 60, what="the web server")
                for repeat in range(args.repeats + 1):
                    seconds, batch_id = upload_seconds(web, paths, args.chunk)
                    if repeat:
                        results["idle"].append(seconds)
                reads["idle"] = read_ms(web, batch_id)
                with common.process(common.worker_argv(args.workers), env, scratch / "worker.log") as worker:
                    common.wait_until(lambda: web.counts(batch_id).get("done", 0) > 0 or worker.poll() is not None,
                                      300, what="the workers to start diagnosing")
                    for _ in range(args.repeats):
                        seconds, batch_id = upload_seconds(web, paths, args.chunk)
                        results["busy"].append(seconds)
                    reads["busy"] = read_ms(web, batch_id)
                    done = web.counts(batch_id)
        finally:
            common.delete_queue_keys(args.redis_url, settings.queue_name)
    rows = [[state, common.median(v), args.files / common.median(v), megabytes / common.median(v), reads[state]]
            for state, v in results.items()]
    common.print_table(f"Upload of {args.files} kermany-224 files ({megabytes:.1f} MB) in requests of {args.chunk}, "
                       f"median of {args.repeats}", rows,
                       ["workers", "seconds", "files/s", "MB/s", "GET batch JSON ms"])
    print(f"\nbusy state: {args.workers} x {args.runtime} workers were diagnosing throughout (last batch counts "
          f"at the end: {done}); load average {common.load_average()}; pid {os.getpid()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
