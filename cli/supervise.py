"""Run several child processes together (what `xray up` uses): a child that dies is started again
after a backoff and the death is reported; Ctrl-C or SIGTERM stops them all."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

STOP_GRACE_S = 20.0
# Waits before restarting a child that died: 1, 2, 4 ... capped at 30 s; a child that stayed up
# for STABLE_AFTER_S starts again at the first step (a one-off crash is fixed in a second, a crash
# loop does not spin).
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0


def log(message: str) -> None:
    print(f"xray up: {message}", file=sys.stderr, flush=True)


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float = 0.0
    next_delay_s: float = BACKOFF_FIRST_S
    restart_at: float | None = None  # set while the child is dead and waiting for its restart
    restarts: int = 0

    def start(self) -> None:
        # Each child leads its own process group so that stopping it also stops what it forked
        # (Celery's pool processes, gunicorn's workers).
        self.process = subprocess.Popen(list(self.argv), env=self.env, start_new_session=True)
        self.started_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def schedule_restart(self, now: float) -> float:
        """Note the death; return the wait before the restart (the backoff step)."""
        if now - self.started_at >= STABLE_AFTER_S:
            self.next_delay_s = BACKOFF_FIRST_S
        delay = self.next_delay_s
        self.next_delay_s = min(BACKOFF_MAX_S, delay * 2)
        self.restart_at = now + delay
        return delay


class Supervisor:
    """Starts children in order, restarts any that dies, and stops them all when told to."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self._stopping = False

    def start(self, child: Child) -> Child:
        child.start()
        self.children.append(child)
        return child

    def wait(self, poll_s: float = 0.5) -> int:
        """Keep the children running until SIGINT or SIGTERM; then stop them all and return 0."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self._stopping:
                now = time.monotonic()
                for child in self.children:
                    if child.restart_at is None and not child.running:
                        self._on_death(child, now)
                    elif child.restart_at is not None and now >= child.restart_at:
                        child.restart_at = None
                        child.restarts += 1
                        child.start()
                        log(f"{child.name} started again (restart {child.restarts}, pid {child.process.pid})")
                time.sleep(poll_s)
            return 0
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_death(self, child: Child, now: float) -> None:
        how = describe_exit(child.process.returncode if child.process else None)
        # What it forked (a pool process, a gunicorn worker) goes with it, so the new one starts clean.
        child.signal_group(signal.SIGKILL)
        delay = child.schedule_restart(now)
        log(f"{child.name} {how} after {now - child.started_at:.0f} s; restarting it in {delay:.0f} s")

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self._stopping = True

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop children in reverse order: SIGTERM to each group, then SIGKILL after the grace time."""
        for child in reversed(self.children):
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in reversed(self.children):
            if child.process is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            # Anything left in the group (a stuck pool child) is killed.
            child.signal_group(signal.SIGKILL)
            if child.process.poll() is None:
                child.process.wait(timeout=5)
