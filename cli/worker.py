"""`xray worker [--concurrency N] [--loglevel LEVEL]`: a Celery worker (prefork: N processes, each
with its own model) for the configured queue (XRAY_QUEUE) on REDIS_URL, diagnosing into DATABASE_URL
and the storage (STORAGE_URL, or the folder STORAGE_DIR) with the bundle at MODEL_DIR. Stop it with
SIGTERM or Ctrl-C (warm shutdown: the running studies finish)."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("worker", help="run a worker that diagnoses queued studies")
    parser.add_argument("--concurrency", "-c", type=int, default=1,
                        help="pool processes, each with its own copy of the model (default 1; one per "
                             "core or two is the usual choice, see docs/OPERATING.md)")
    parser.add_argument("--loglevel", "-l", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.set_defaults(func=run)


def preflight(settings: object) -> str | None:
    """What stops a worker from working, as a message for the operator; None when all is well.

    Checks the environment without importing TensorFlow (the main process must not load the model).
    """
    from shared.config import Settings

    assert isinstance(settings, Settings)
    if settings.redis_url and not (settings.model_dir / "card.json").is_file():  # (no queue: said below)
        return (f"no model bundle at {settings.model_dir} (MODEL_DIR): `git checkout models/demo`, "
                "train one with `xray train`, or create an untrained one with `xray model init DIR`")
    return services_problem(settings)


def services_problem(settings: object) -> str | None:
    """What stops a process that takes in or works on studies (a worker, the DICOM receiver): no
    queue, no database at the current schema, or an object store it cannot use."""
    from migrations import current, head
    from shared.config import Settings

    assert isinstance(settings, Settings)
    if not settings.redis_url:
        return ("REDIS_URL is not set: point it at the Redis server the web sends studies to "
                "(or use `xray up`, which starts an embedded one)")
    try:
        revision = current(settings.database_url)
    except Exception as exc:  # noqa: BLE001 - reported to the operator
        return f"cannot reach the database (DATABASE_URL): {exc}"
    if revision != head():
        return f"the database schema is at {revision or 'nothing'}, not {head()}: run `xray db upgrade`"
    return storage_problem(settings)


def storage_problem(settings: object) -> str | None:
    """For an object store: does the bucket exist, and do the credentials work? (A local folder is
    made on the first write.) `xray storage check` tests writing too."""
    from shared.config import Settings
    from shared.storage import StorageError, make_storage
    from shared.storage_s3 import S3Storage

    assert isinstance(settings, Settings)
    try:
        storage = make_storage(settings)
        if isinstance(storage, S3Storage):
            storage.check_bucket()
    except (ValueError, StorageError) as exc:
        return f"cannot use the storage (STORAGE_URL): {exc}"
    return None


def describe_mode(concurrency: int, settings: object) -> str:
    """The worker's runtime and processes in words, printed at start (resolves `auto`)."""
    from shared.config import Settings
    from shared.runtime import resolve_auto

    assert isinstance(settings, Settings)
    runtime, precision = resolve_auto(settings.inference_runtime, settings.inference_precision)
    return f"{max(1, concurrency)} process(es), each with its own model, on {runtime}-{precision}"


def start_metrics(settings: object) -> str | None:
    """With XRAY_WORKER_METRICS_PORT: an empty multiprocess folder for the pool processes (set before
    anything imports prometheus_client), and the metrics server in this main process. Returns what
    went wrong, for the operator."""
    from pathlib import Path

    from shared.config import Settings
    from shared.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

    assert isinstance(settings, Settings)
    port = settings.worker_metrics_port
    if port is None:
        return None
    folder = Path(os.environ.get(MULTIPROC_ENV) or settings.var_dir / "metrics" / f"worker-{port}")
    prepare_multiprocess_dir(folder)
    from worker.metrics import serve

    try:
        serve(port, settings.worker_metrics_address)
    except OSError as exc:
        return (f"cannot serve metrics on {settings.worker_metrics_address}:{port} "
                f"(XRAY_WORKER_METRICS_PORT): {exc.strerror or exc}")
    print(f"xray worker: metrics on http://{settings.worker_metrics_address}:{port}/metrics "
          f"(pool processes write to {folder})", flush=True)
    return None


def celery_argv(settings: object, concurrency: int, loglevel: str) -> list[str]:
    from shared.config import Settings

    assert isinstance(settings, Settings)
    return [
        "worker",
        f"--queues={settings.queue_name}",
        "--pool=prefork",
        f"--concurrency={max(1, concurrency)}",
        f"--loglevel={loglevel}",
        f"--hostname=xray-{os.getpid()}@%h",
        # No gossip, mingle or event heartbeats: this service does not use them, and they slow startup.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


# glibc's malloc keeps freed memory for the next study: each study allocates the same large buffers
# (the inflated PNG, the levels, the model's input and outputs), and without this they are fresh,
# page-faulting pages every time. Read by glibc only when a process starts, so `xray worker` runs
# itself again with it (before anything heavy is imported); the pool processes inherit it.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=536870912"


def with_malloc_tunables(env: dict[str, str]) -> dict[str, str] | None:
    """The environment to run the worker again with, or None when it already has the tunables."""
    current = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.mmap_threshold" in current:
        return None
    return {**env, "GLIBC_TUNABLES": f"{current}:{MALLOC_TUNABLES}" if current else MALLOC_TUNABLES}


def run(args: argparse.Namespace) -> int:
    tuned = with_malloc_tunables(dict(os.environ))
    if tuned is not None and sys.platform.startswith("linux"):
        os.execve(sys.executable, [sys.executable, "-m", "cli.main", *sys.argv[1:]], tuned)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is imported anywhere
    from shared.config import load_settings

    settings = load_settings()
    problem = preflight(settings)
    if problem:
        print(f"xray worker: {problem}", file=sys.stderr)
        return 2
    problem = start_metrics(settings)
    if problem:
        print(f"xray worker: {problem}", file=sys.stderr)
        return 2
    from worker.celery_app import app

    print(f"xray worker: queue {settings.queue_name} on {_redacted(settings.redis_url or '')}, "
          f"model {settings.model_dir}, {describe_mode(args.concurrency, settings)}", flush=True)
    try:
        app.worker_main(celery_argv(settings, args.concurrency, args.loglevel))
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


def _redacted(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
