"""The worker's Celery app: `celery -A worker.celery_app worker` (or `xray worker`, which adds the
queue and concurrency). Configuration comes from `shared.queue.make_celery` and the environment
(`shared.config.load_settings`).

Prefork only: the main process holds no model; each child loads it in `worker_process_init`, after
the fork, and starts its heartbeat. The main process runs the reconciler's timer thread
(worker/reconcile.py) from `worker_ready` to shutdown, outside the queue, so a backlog cannot delay it.
"""

from __future__ import annotations

import os

# One BLAS thread per process, set before anything imports numpy or TensorFlow.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import logging  # noqa: E402
from typing import Any  # noqa: E402

from celery import Celery, signals  # noqa: E402

from shared.config import Settings, load_settings  # noqa: E402
from shared.logs import configure_logging  # noqa: E402
from shared.queue import make_celery  # noqa: E402
from worker import runtime  # noqa: E402
from worker.reconcile import Reconciler  # noqa: E402

log = logging.getLogger(__name__)

# Used only when REDIS_URL is unset and the app is imported directly; `xray worker` requires REDIS_URL.
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


def create_app(settings: Settings) -> Celery:
    app = make_celery(settings, settings.redis_url or DEFAULT_BROKER_URL, name="xray-worker")
    app.conf.imports = ("worker.tasks",)
    return app


settings = load_settings()
app = create_app(settings)
_pool_processes = 1  # set in the main process before the fork; the children inherit it
_reconciler: Reconciler | None = None


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    global _pool_processes
    if sender is not None:
        _pool_processes = max(1, int(getattr(sender, "concurrency", 1) or 1))


@signals.setup_logging.connect
def _on_setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    # Connected, so Celery leaves logging to shared.logs (plain text or XRAY_LOG_FORMAT=json).
    configure_logging(loglevel or logging.INFO)


@signals.worker_process_init.connect
def _on_worker_process_init(**_: Any) -> None:
    from worker import metrics

    try:
        rt = runtime.start_runtime(settings, settings.redis_url, processes=_pool_processes)
    except Exception:
        log.exception("could not load the model bundle from %s", settings.model_dir)
        raise
    predictor = rt.diagnoser.classifier  # type: ignore[attr-defined]
    metrics.set_model_info(predictor.version, predictor.runtime_name)


@signals.worker_process_shutdown.connect
def _on_worker_process_shutdown(**_: Any) -> None:
    from worker import metrics

    runtime.stop_runtime()
    metrics.process_exited()


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    global _reconciler
    _reconciler = Reconciler(app, settings)
    _reconciler.start()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    if _reconciler is not None:
        _reconciler.stop()
