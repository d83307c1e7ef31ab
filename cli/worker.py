"""`xray worker [--concurrency N] [--pool prefork|solo|threads] [--loglevel LEVEL]`: a Celery worker
for the configured queue (XRAY_QUEUE) on REDIS_URL, diagnosing into DATABASE_URL and STORAGE_DIR with
the bundle at MODEL_DIR. Stop it with SIGTERM or Ctrl-C (warm shutdown: the running study finishes).

`--pool prefork --concurrency N`: N child processes, each with its own model. `--pool threads
--concurrency K`: ONE process, ONE model, K studies in flight (decoding, heatmaps and SQL of some
overlap the forward pass of another; forward passes take turns). Celery enforces no time limits
there: worker/watchdog.py ends the process at the hard limit, so run it under a restarting
supervisor. See docs/OPERATING.md."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("worker", help="run a worker that diagnoses queued studies")
    parser.add_argument("--concurrency", "-c", type=int, default=1,
                        help="prefork: pool processes, each with its own copy of the model; threads: "
                             "studies in flight in this one process, sharing one model (default 1)")
    parser.add_argument("--pool", choices=("prefork", "solo", "threads"), default="prefork",
                        help="prefork (default): model loaded in each child after the fork; "
                             "threads: one process, one model, --concurrency K studies in flight (for "
                             "I/O-heavy deployments; forward passes take turns, XRAY_WORKER_BATCH "
                             "joins waiting ones; no Celery time limits: a watchdog ends the process "
                             "at XRAY_TASK_TIME_LIMIT, so run it under a restarting supervisor; for "
                             "more, run several worker processes or containers); solo: one study at "
                             "a time in this process")
    parser.add_argument("--loglevel", "-l", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.set_defaults(func=run)


def preflight(settings: object) -> str | None:
    """What stops a worker from working, as a message for the operator; None when all is well.

    Checks the environment without importing TensorFlow (the main process must not load the model).
    """
    from migrations import current, head
    from shared.config import Settings

    assert isinstance(settings, Settings)
    if not settings.redis_url:
        return ("REDIS_URL is not set: point it at the Redis server the web sends studies to "
                "(or use `xray up`, which starts an embedded one)")
    if not (settings.model_dir / "card.json").is_file():
        return (f"no model bundle at {settings.model_dir} (MODEL_DIR): `git checkout models/demo`, "
                "train one with `xray train`, or create an untrained one with `xray model init DIR`")
    try:
        revision = current(settings.database_url)
    except Exception as exc:  # noqa: BLE001 - reported to the operator
        return f"cannot reach the database (DATABASE_URL): {exc}"
    if revision != head():
        return f"the database schema is at {revision or 'nothing'}, not {head()}: run `xray db upgrade`"
    return None


def describe_mode(pool: str, concurrency: int, settings: object) -> str:
    """The worker's mode in words, printed at start."""
    from shared.config import Settings

    assert isinstance(settings, Settings)
    k = max(1, concurrency)
    if pool == "threads":
        return (f"pool threads: {k} studies in flight in this one process sharing one model (forward "
                f"passes take turns, up to {settings.worker_batch_size} image(s) per pass); no Celery "
                f"time limits: the watchdog ends this process if a study passes "
                f"{settings.task_time_limit_s} s")
    if pool == "solo":
        return (f"pool solo: one study at a time in this process; the watchdog ends this process if a "
                f"study passes {settings.task_time_limit_s} s")
    return f"pool prefork: {k} process(es), each with its own model"


def celery_argv(settings: object, concurrency: int, pool: str, loglevel: str) -> list[str]:
    from shared.config import Settings

    assert isinstance(settings, Settings)
    return [
        "worker",
        f"--queues={settings.queue_name}",
        f"--pool={pool}",
        f"--concurrency={max(1, concurrency)}",
        f"--loglevel={loglevel}",
        f"--hostname=xray-{os.getpid()}@%h",
        # No gossip, mingle or event heartbeats: this service does not use them, and they slow startup.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is imported anywhere
    from shared.config import load_settings

    settings = load_settings()
    problem = preflight(settings)
    if problem:
        print(f"xray worker: {problem}", file=sys.stderr)
        return 2
    from worker.celery_app import app

    print(f"xray worker: queue {settings.queue_name} on {_redacted(settings.redis_url or '')}, "
          f"model {settings.model_dir}, {describe_mode(args.pool, args.concurrency, settings)}", flush=True)
    try:
        app.worker_main(celery_argv(settings, args.concurrency, args.pool, args.loglevel))
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
