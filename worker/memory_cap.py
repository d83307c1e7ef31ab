"""`worker_max_memory_per_child` for pools that run tasks in the worker's main process (threads, solo).

A prefork child whose resident memory passes `worker_max_memory_per_child` after a task is replaced
by a fresh one; that is how a slow leak (a native library, a fragmented heap) never takes a machine
down. The threads and solo pools have no child to replace, and Celery silently ignores the setting
there. `MemoryCap` restores the same rule for the whole process: after each task it reads the
process's resident memory and, past the cap, logs a WARNING and asks the worker for a WARM shutdown
(SIGTERM to itself): it stops taking messages, lets the studies in flight finish and acknowledge,
and exits with code 0. Whatever restarts the worker (docker compose `restart: unless-stopped`,
systemd `Restart=always`) starts a fresh process with the model loaded again; messages still in
Redis wait for it or go to the other workers. Nothing is lost: a study is acknowledged only when done.

The cap is `XRAY_WORKER_MAX_MEMORY_MB` (settings.worker_max_memory_mb), the same number the prefork
pool gets as `worker_max_memory_per_child`.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

import psutil

from shared.config import MiB

log = logging.getLogger(__name__)


def resident_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def warm_shutdown() -> None:
    """What Ctrl-C / `docker stop` do to a Celery worker: finish the tasks in flight, then exit."""
    os.kill(os.getpid(), signal.SIGTERM)


class MemoryCap:
    """After each task: past `limit_mb` of resident memory, log once and call `shutdown` once."""

    def __init__(self, limit_mb: int, *, rss: Callable[[], int] = resident_bytes,
                 shutdown: Callable[[], None] = warm_shutdown) -> None:
        if limit_mb <= 0:
            raise ValueError(f"the memory cap must be positive, got {limit_mb} MB")
        self.limit_mb = int(limit_mb)
        self._rss = rss
        self._shutdown = shutdown
        self.fired = False

    def after_task(self) -> bool:
        """One look; True when this look asked for the shutdown."""
        if self.fired:
            return False
        used_mb = self._rss() / MiB
        if used_mb <= self.limit_mb:
            return False
        self.fired = True
        log.warning(
            "worker process %d uses %.0f MB, past XRAY_WORKER_MAX_MEMORY_MB=%d: it finishes the "
            "studies in flight, takes no new ones and exits (code 0) to be restarted fresh "
            "(docker compose restart:, systemd Restart=)", os.getpid(), used_mb, self.limit_mb)
        self._shutdown()
        return True


# -- the process's cap (installed by worker.celery_app for threads/solo pools) ---------------------

_active: MemoryCap | None = None


def install(limit_mb: int) -> MemoryCap:
    global _active
    _active = MemoryCap(limit_mb)
    log.info("memory cap: this worker process restarts itself after a task that leaves it above "
             "%d MB resident", _active.limit_mb)
    return _active


def uninstall() -> None:
    global _active
    _active = None


def check_after_task() -> None:
    """Called after every task; nothing when no cap is installed (prefork: Celery's own rule)."""
    if _active is not None:
        _active.after_task()
