"""Run several child processes together and stop them together (what `xray up` uses)."""

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


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        # Each child leads its own process group so that stopping it also stops what it forked
        # (Celery's pool processes, gunicorn's workers).
        self.process = subprocess.Popen(list(self.argv), env=self.env, start_new_session=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)


class Supervisor:
    """Starts children in order; when one exits or the user presses Ctrl-C, stops them all."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self._stopping = False

    def start(self, child: Child) -> Child:
        child.start()
        self.children.append(child)
        return child

    def wait(self, poll_s: float = 0.5) -> int:
        """Block until a child exits or we are told to stop; return the exit status to use."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self._stopping:
                for child in self.children:
                    if not child.running:
                        code = child.process.returncode if child.process else 1
                        print(f"xray up: {child.name} exited with status {code}; stopping everything",
                              file=sys.stderr, flush=True)
                        return code or 1
                time.sleep(poll_s)
            return 0
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

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
