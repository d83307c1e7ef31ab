"""Load test: a day's intake (the 5,840 kermany-224 X-rays) through the real service, every file
accounted for.

    python -m bench.load --mode embedded            # (a) `xray up`: SQLite, embedded Redis
    python -m bench.load --mode services --limit 500  # (b) this machine's Redis (db 11) and PostgreSQL

Each run starts `xray up` on a free port with its own XRAY_VAR_DIR (a temporary folder), uploads the
images over HTTP in chunks (the first chunk makes the batch, the rest are added to it), waits until no
study is queued or processing, and reads the outcome from the database (the truth). In `services`
mode `xray up` gets REDIS_URL (Redis database 11, a queue name of its own) and DATABASE_URL (a fresh
PostgreSQL database, dropped afterwards), so it starts no Redis of its own. Only this run's keys and
database are removed at the end.

Printed: files submitted / accepted (new studies + duplicates of earlier bytes) / rejected, studies
done / failed (with reasons) / left over, and the check that every submitted file is accounted for;
upload time, throughput (studies per minute, from the first byte uploaded to the last study finished)
and per-study latency percentiles (created -> finished). The exit status is 0 only when the check holds.
The bundle: models/demo if it exists, else an untrained one at 224 px (speed does not depend on weights).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from bench.common import bench_token
from shared.config import PROJECT_ROOT
from tests.service_harness import delete_queue_keys

DATA_DIR = Path(os.environ.get("XRAY_TEST_DATA", PROJECT_ROOT.parent / "shared" / "data"))
REDIS_URL = os.environ.get("XRAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
POSTGRES_ADMIN_URL = os.environ.get("XRAY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
DEMO_BUNDLE = PROJECT_ROOT / "models" / "demo"
START_TIMEOUT_S = 300.0


@dataclass
class Outcome:
    submitted: int
    accepted: int
    duplicates: int
    rejected: int
    studies: int
    done: int
    failed: int
    left: int
    failure_reasons: dict[str, int]
    upload_s: float
    wall_s: float
    latencies_s: list[float]
    worker_s: float


def kermany_paths(limit: int | None) -> list[Path]:
    root = DATA_DIR / "kermany-224"
    with (root / "labels.csv").open(newline="") as handle:
        paths = [root / row["path"] for row in csv.DictReader(handle)]
    if not paths:
        raise SystemExit(f"no images listed in {root / 'labels.csv'}")
    return paths[:limit] if limit else paths


def bundle_dir(scratch: Path) -> Path:
    if (DEMO_BUNDLE / "card.json").is_file():
        return DEMO_BUNDLE
    cached = PROJECT_ROOT / "var" / "bench" / "untrained-224"
    if not (cached / "card.json").is_file():
        from shared.classifier import init_bundle

        print(f"no models/demo: creating an untrained 224 px bundle in {cached}", flush=True)
        init_bundle(cached, input_size=224, seed=0)
    return cached


@contextmanager
def fresh_postgres() -> Iterator[str]:
    from sqlalchemy import create_engine, text

    name = f"xray_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()




@contextmanager
def xray_up(env: dict[str, str], port: int, workers: int, log_path: Path) -> Iterator[str]:
    """`xray up` in its own process group; stopped with Ctrl-C (SIGINT) like a person would."""
    import requests

    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up", "--port", str(port), "--workers", str(workers)],
            env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"xray up exited ({proc.returncode}); see {log_path}")
                with suppress(requests.RequestException):
                    health = requests.get(f"{base}/healthz", timeout=2)
                    # Ready when a worker has announced itself (the model is loaded).
                    if health.status_code == 200 and health.json().get("workers"):
                        break
                if time.monotonic() > deadline:
                    raise SystemExit(f"xray up not healthy within {START_TIMEOUT_S:.0f} s; see {log_path}")
                time.sleep(1.0)
            yield base
        finally:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def upload(base: str, paths: list[Path], chunk: int,
           headers: dict[str, str]) -> tuple[int | None, set[int], int, int, list[str]]:
    """Send every file; returns (batch id, study ids, accepted, duplicates, rejection reasons)."""
    import requests

    batch_id: int | None = None
    ids: set[int] = set()
    accepted = 0
    rejected: list[str] = []
    for start in range(0, len(paths), chunk):
        part = paths[start:start + chunk]
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in part]
        url = f"{base}/api/v1/batches" if batch_id is None else f"{base}/api/v1/batches/{batch_id}/files"
        response = requests.post(url, files=files, data={"label": "load test"}, headers=headers, timeout=600)
        if response.status_code not in (201, 422):
            raise SystemExit(f"upload of files {start}..{start + len(part)} failed: "
                             f"{response.status_code} {response.text[:500]}")
        body = response.json()
        batch_id = batch_id or body["batch_id"]
        accepted += len(body["accepted"])
        ids.update(int(a["id"]) for a in body["accepted"])
        rejected += [r["reason"] for r in body["rejected"]]
        print(f"  uploaded {min(start + chunk, len(paths))}/{len(paths)}", flush=True)
    duplicates = accepted - len(ids)
    return batch_id, ids, accepted, duplicates, rejected


def wait_finished(base: str, batch_id: int, timeout_s: float, headers: dict[str, str]) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        counts = requests.get(f"{base}/api/v1/batches/{batch_id}", headers=headers, timeout=30).json()["counts"]
        line = " ".join(f"{k}={v}" for k, v in counts.items())
        if line != last:
            print(f"  {time.strftime('%H:%M:%S')} {line}", flush=True)
            last = line
        if counts.get("queued", 0) + counts.get("processing", 0) == 0:
            return
        if time.monotonic() > deadline:
            print(f"  gave up waiting after {timeout_s:.0f} s", flush=True)
            return
        time.sleep(10.0)


def read_outcome(database_url: str, ids: set[int]) -> tuple[dict[str, int], dict[str, int], list[float], float]:
    from sqlalchemy import select

    from shared.db import make_engine, make_session_factory, session_scope
    from shared.models import Study

    engine = make_engine(database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            rows = session.execute(select(Study.id, Study.status, Study.error, Study.created_at,
                                          Study.started_at, Study.finished_at).where(Study.id.in_(ids))).all()
    finally:
        engine.dispose()
    statuses: dict[str, int] = {}
    reasons: dict[str, int] = {}
    latencies = []
    for row in rows:
        statuses[row.status] = statuses.get(row.status, 0) + 1
        if row.status == "failed":
            reasons[row.error or "(no reason)"] = reasons.get(row.error or "(no reason)", 0) + 1
        if row.finished_at is not None:
            latencies.append((row.finished_at - row.created_at).total_seconds())
    started = [r.started_at for r in rows if r.started_at is not None]
    finished = [r.finished_at for r in rows if r.finished_at is not None]
    worker_s = (max(finished) - min(started)).total_seconds() if started and finished else 0.0
    return statuses, reasons, latencies, worker_s


def run(mode: str, limit: int | None, chunk: int, workers: int, timeout_s: float) -> Outcome:
    from cli.up import free_port

    paths = kermany_paths(limit)
    with tempfile.TemporaryDirectory(prefix=f"xray-load-{mode}-") as scratch_name:
        scratch = Path(scratch_name)
        bundle = bundle_dir(scratch)
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "STORAGE_DIR")}
        env.update({"XRAY_VAR_DIR": str(scratch / "var"), "MODEL_DIR": str(bundle), "OPENBLAS_NUM_THREADS": "1",
                    "TF_CPP_MIN_LOG_LEVEL": "2"})
        queue = f"xray.load.{uuid.uuid4().hex[:8]}"
        with contextlib_exit_stack() as stack:
            if mode == "services":
                env["REDIS_URL"] = REDIS_URL
                env["XRAY_QUEUE"] = queue
                env["DATABASE_URL"] = stack.enter_context(fresh_postgres())
                stack.callback(delete_queue_keys, REDIS_URL, queue)
            database_url = env.get("DATABASE_URL") or f"sqlite:///{scratch / 'var' / 'xray.db'}"
            print(f"load test ({mode}): {len(paths)} files, bundle {bundle}, {workers} worker process(es)",
                  flush=True)
            base = stack.enter_context(xray_up(env, free_port(), workers, PROJECT_ROOT / "var" / f"load-{mode}.log"))
            headers = {"Authorization": f"Bearer {bench_token(database_url)}"}  # `xray up` has migrated it
            t0 = time.monotonic()
            batch_id, ids, accepted, duplicates, rejected = upload(base, paths, chunk, headers)
            upload_s = time.monotonic() - t0
            if batch_id is None:
                raise SystemExit("nothing was accepted")
            wait_finished(base, batch_id, timeout_s, headers)
            wall_s = time.monotonic() - t0
            statuses, reasons, latencies, worker_s = read_outcome(database_url, ids)
    reject_reasons: dict[str, int] = {}
    for reason in rejected:
        reject_reasons[reason] = reject_reasons.get(reason, 0) + 1
    return Outcome(
        submitted=len(paths), accepted=accepted, duplicates=duplicates, rejected=len(rejected),
        studies=len(ids), done=statuses.get("done", 0), failed=statuses.get("failed", 0),
        left=statuses.get("queued", 0) + statuses.get("processing", 0),
        failure_reasons={**reasons, **{f"rejected: {k}": v for k, v in reject_reasons.items()}},
        upload_s=upload_s, wall_s=wall_s, latencies_s=latencies, worker_s=worker_s,
    )


def contextlib_exit_stack():  # type: ignore[no-untyped-def]
    from contextlib import ExitStack

    return ExitStack()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def report(mode: str, outcome: Outcome) -> bool:
    accounted = outcome.accepted + outcome.rejected == outcome.submitted
    finished = outcome.done + outcome.failed == outcome.studies and outcome.left == 0
    lat = outcome.latencies_s
    summary = {
        "mode": mode,
        "submitted": outcome.submitted,
        "accepted": outcome.accepted,
        "duplicates_of_earlier_bytes": outcome.duplicates,
        "rejected": outcome.rejected,
        "studies": outcome.studies,
        "done": outcome.done,
        "failed": outcome.failed,
        "left_queued_or_processing": outcome.left,
        "failure_reasons": outcome.failure_reasons,
        "upload_s": round(outcome.upload_s, 1),
        "wall_s": round(outcome.wall_s, 1),
        "throughput_studies_per_min": round(60 * (outcome.done + outcome.failed) / outcome.wall_s, 1),
        "worker_throughput_studies_per_min": round(60 * (outcome.done + outcome.failed) / outcome.worker_s, 1)
        if outcome.worker_s else None,
        "latency_s": {"p50": round(percentile(lat, 50), 1), "p90": round(percentile(lat, 90), 1),
                      "p99": round(percentile(lat, 99), 1), "max": round(max(lat), 1) if lat else None,
                      "mean": round(statistics.fmean(lat), 1) if lat else None},
        "all_accounted_for": accounted and finished,
    }
    print(json.dumps(summary, indent=2), flush=True)
    print(f"CHECK: submitted {outcome.submitted} = accepted {outcome.accepted} + rejected {outcome.rejected}: "
          f"{'OK' if accounted else 'MISMATCH'}; studies {outcome.studies} = done {outcome.done} + failed "
          f"{outcome.failed} (left {outcome.left}): {'OK' if finished else 'MISMATCH'}", flush=True)
    return accounted and finished


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("embedded", "services"), default="embedded")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (default: all 5,840)")
    parser.add_argument("--chunk", type=int, default=200, help="files per upload request (default 200)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1, as `xray up`)")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds to wait for the batch")
    args = parser.parse_args(argv)
    outcome = run(args.mode, args.limit, args.chunk, args.workers, args.timeout)
    return 0 if report(args.mode, outcome) else 1


if __name__ == "__main__":
    sys.exit(main())
