"""The hard time limit for pools that run tasks in the worker's main process (threads, solo).

Celery enforces `task_time_limit` / `task_soft_time_limit` only in pools that can interrupt a task:
prefork kills the child process, gevent/eventlet use a green timeout. The threads pool drops the
limits on the floor: `celery.concurrency.thread.TaskPool.on_apply` (Celery 5.7, in .venv) accepts the
`timeout`/`soft_timeout` arguments into `**_` and submits the task to a ThreadPoolExecutor, and the
solo pool has no timeouts either. Celery's own guide says so: "switching to another mode will
silently disable certain features like soft_timeout and max_tasks_per_child"
(https://docs.celeryq.dev/en/stable/userguide/concurrency/index.html).

So a study stuck in a threads-pool worker (a hung storage read, a wedged driver) would hold its
thread and its message forever. `Watchdog` is the replacement for the hard limit: a daemon thread
that knows when each in-flight study started and, when one has run longer than the limit, logs a
CRITICAL line and ends the whole process with `os._exit(WATCHDOG_EXIT_CODE)`. Nothing is
acknowledged on the way out (late ack): Redis hands the process's messages to another worker after
the visibility timeout (3 x the limit; kombu sweeps for them about every 100 s), and the reconciler
re-sends a study left `processing` after the limit + 60 s in any case, as after a prefork hard limit.
The study is claimed again and counted in `attempts`, so one that hangs every time ends `failed`
after XRAY_MAX_ATTEMPTS. A thread cannot be killed on its own, which is why the whole process goes
(the studies in flight beside the stuck one are retried too); run it under something that restarts
it.

The soft limit is NOT applied in these pools (no cooperative check): the only place a study could
be stopped gently is inside its own code, and the stuck cases the limit exists for (a blocking read,
a forward pass in native code) never come back to Python to notice. Prefork keeps both limits.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

log = logging.getLogger(__name__)

# EX_TEMPFAIL (sysexits.h): a temporary failure, start it again.
WATCHDOG_EXIT_CODE = 75


def check_interval_s(limit_s: float) -> float:
    """How often to look: a twentieth of the limit, between 0.05 s and 5 s (at most +5 % late)."""
    return min(5.0, max(0.05, limit_s / 20.0))


@dataclass(frozen=True)
class Overdue:
    study_id: int
    running_s: float


class Watchdog:
    """Tracks in-flight studies; ends the process (`exit`) when one runs past `limit_s`.

    `clock` (monotonic seconds) and `exit` are injectable for tests; `check()` is one look, the
    thread started by `start()` calls it every `interval_s`.
    """

    def __init__(self, limit_s: float, *, interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 exit: Callable[[int], object] = os._exit) -> None:
        if limit_s <= 0:
            raise ValueError(f"the time limit must be positive, got {limit_s}")
        self.limit_s = float(limit_s)
        self.interval_s = interval_s if interval_s is not None else check_interval_s(self.limit_s)
        self._clock = clock
        self._exit = exit
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._in_flight: dict[int, tuple[int, float]] = {}  # token -> (study id, start)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired = False

    # -- the task side (cheap: a lock, a clock read, a dict insert/delete) --------------------------

    def register(self, study_id: int) -> int:
        """Start the clock for one delivery of `study_id`; returns the token for `unregister`."""
        token = next(self._tokens)  # a token, not the id: one study may be delivered twice at once
        start = self._clock()
        with self._lock:
            self._in_flight[token] = (study_id, start)
        return token

    def unregister(self, token: int) -> None:
        with self._lock:
            self._in_flight.pop(token, None)

    @contextmanager
    def watching(self, study_id: int) -> Iterator[None]:
        token = self.register(study_id)
        try:
            yield
        finally:
            self.unregister(token)

    def in_flight(self) -> dict[int, float]:
        """Study id -> seconds it has been running (the longest delivery of each)."""
        now = self._clock()
        with self._lock:
            entries = list(self._in_flight.values())
        out: dict[int, float] = {}
        for study_id, start in entries:
            out[study_id] = max(out.get(study_id, 0.0), now - start)
        return out

    # -- the watchdog side ----------------------------------------------------------------------------

    def overdue(self) -> list[Overdue]:
        return sorted((Overdue(study_id, running) for study_id, running in self.in_flight().items()
                       if running > self.limit_s), key=lambda o: -o.running_s)

    def check(self) -> bool:
        """One look; past the limit: log, flush the logs and call `exit`. True when it fired."""
        late = self.overdue()
        if not late or self.fired:
            return False
        self.fired = True
        worst = late[0]
        others = sorted(set(self.in_flight()) - {worst.study_id})
        log.critical(
            "study %s has been diagnosing for %.1f s, past the hard time limit of %.0f s "
            "(XRAY_TASK_TIME_LIMIT); the threads pool cannot stop one study, so this worker process "
            "exits now (code %d) and its unacknowledged messages go back to the queue "
            "(other studies in flight: %s). Restart it (docker compose restart:, systemd Restart=).",
            worst.study_id, worst.running_s, self.limit_s, WATCHDOG_EXIT_CODE,
            ", ".join(map(str, others)) or "none")
        _flush_logs()
        self._exit(WATCHDOG_EXIT_CODE)
        return True

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="xray-watchdog", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self.check():
                    return  # os._exit does not return; an injected exit does: look no more
            except Exception:  # never let the watchdog die silently
                log.exception("watchdog check failed")


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with suppress(Exception):  # about to exit: a broken handler must not stop that
            handler.flush()


# -- the process's watchdog (started by worker.celery_app for threads/solo pools) ------------------

_active: Watchdog | None = None


def start_watchdog(limit_s: float) -> Watchdog:
    global _active
    if _active is None:
        _active = Watchdog(limit_s)
        _active.start()
        log.info("watchdog: a study running longer than %.0f s ends this worker process "
                 "(checked every %.2f s)", _active.limit_s, _active.interval_s)
    return _active


def stop_watchdog() -> None:
    global _active
    if _active is not None:
        _active.stop()
        _active = None


@contextmanager
def watching(study_id: int) -> Iterator[None]:
    """Time one study against the process's watchdog; nothing when none runs (prefork children)."""
    watchdog = _active
    if watchdog is None:
        yield
        return
    with watchdog.watching(study_id):
        yield
