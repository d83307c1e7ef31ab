"""The worker's Celery app: `celery -A worker.celery_app worker` (or `xray worker`, which adds the
queue, pool and concurrency). Configuration comes from `shared.queue.make_celery` and the environment
(`shared.config.load_settings`): REDIS_URL, DATABASE_URL, STORAGE_DIR, MODEL_DIR, XRAY_QUEUE, ...

Process lifecycle (signals below):
- prefork pool: nothing heavy in the main process; each child loads the model in
  `worker_process_init`, after the fork, and starts its heartbeat;
- solo/threads pool: tasks run in the main process, so it loads the model in `celeryd_after_setup`
  (after logging is set up, before the first message), once,
  with all of the machine's inference threads (processes=1): with `--pool threads --concurrency K`
  the K task threads share that one model through its `ForwardGate` (worker/runtime.py). Celery
  enforces no time limits in these pools, so the main process also runs the watchdog
  (worker/watchdog.py), which ends the process when a study passes the hard limit, and the memory
  cap (worker/memory_cap.py), which shuts it down warmly after a task that leaves it too big;
- the main process runs the reconcile timer (worker/reconcile.py) from `worker_ready` to shutdown.
"""

from __future__ import annotations

import os

# One BLAS thread per process, set before anything imports numpy or TensorFlow.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import logging  # noqa: E402
from typing import Any  # noqa: E402

from celery import Celery, signals  # noqa: E402

from shared.config import Settings, load_settings  # noqa: E402
from shared.queue import TASK_RECONCILE, make_celery  # noqa: E402
from worker import memory_cap, runtime, watchdog  # noqa: E402
from worker.reconcile import ReconcileTimer, reconcile_interval_s  # noqa: E402

log = logging.getLogger(__name__)

# Used only when REDIS_URL is unset and the app is imported directly; `xray worker` requires REDIS_URL.
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


def create_app(settings: Settings) -> Celery:
    app = make_celery(settings, settings.redis_url or DEFAULT_BROKER_URL, name="xray-worker")
    app.conf.imports = ("worker.tasks",)
    return app


settings = load_settings()
app = create_app(settings)
_timer: ReconcileTimer | None = None


def _runs_tasks_in_main_process(worker: Any) -> bool:
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool as PreforkPool

    pool = worker.pool_cls
    pool = get_implementation(pool) if isinstance(pool, str) else pool
    return not (isinstance(pool, type) and issubclass(pool, PreforkPool))


_pool_processes = 1  # set in the main process before the fork; prefork children inherit it
_tasks_in_main_process = False


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    global _pool_processes, _tasks_in_main_process
    if sender is None:
        return
    _tasks_in_main_process = _runs_tasks_in_main_process(sender)
    if not _tasks_in_main_process:
        _pool_processes = max(1, int(getattr(sender, "concurrency", 1) or 1))


@signals.celeryd_after_setup.connect
def _on_after_setup(**_: Any) -> None:
    """Solo/threads pools: load the model here, after Celery has set up logging (so its lines show)
    and before the consumer takes the first message (the worker's blueprint starts it next)."""
    if not _tasks_in_main_process:
        return
    # One model for the whole process, however many task threads: all inference threads to it.
    runtime.start_runtime(settings, settings.redis_url, processes=1)
    watchdog.start_watchdog(settings.task_time_limit_s)
    memory_cap.install(settings.worker_max_memory_mb)  # Celery's max-memory rule is prefork-only


@signals.worker_process_init.connect
def _on_worker_process_init(**_: Any) -> None:
    try:
        runtime.start_runtime(settings, settings.redis_url, processes=_pool_processes)
    except Exception:
        log.exception("could not load the model bundle from %s", settings.model_dir)
        raise


@signals.worker_process_shutdown.connect
def _on_worker_process_shutdown(**_: Any) -> None:
    runtime.stop_runtime()


def _send_reconcile() -> None:
    app.send_task(TASK_RECONCILE, queue=settings.queue_name, expires=reconcile_interval_s(settings))


@signals.task_postrun.connect
def _on_task_postrun(**_: Any) -> None:
    memory_cap.check_after_task()  # threads/solo pools; a no-op in prefork children


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    global _timer
    _timer = ReconcileTimer(_send_reconcile, reconcile_interval_s(settings))
    _timer.start()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    if _timer is not None:
        _timer.stop()
    watchdog.stop_watchdog()
    memory_cap.uninstall()
    runtime.stop_runtime()  # solo/threads pools: the main process holds the runtime
