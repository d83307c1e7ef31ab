"""The restart backoff of `xray up`'s supervisor: 1, 2, 4 ... 30 s while a child keeps dying, back to
1 s once it stayed up a while; and a real child that dies is started again, then stopped on request."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from cli.supervise import BACKOFF_MAX_S, STABLE_AFTER_S, Child, Supervisor


def test_backoff_doubles_to_the_cap_and_resets_after_a_stable_run() -> None:
    child = Child("c", ["true"], {})
    delays = []
    for _ in range(8):
        child.started_at = 1000.0
        delays.append(child.schedule_restart(1001.0))  # died a second after each start
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30] and BACKOFF_MAX_S == 30
    child.started_at = 2000.0
    assert child.schedule_restart(2000.0 + STABLE_AFTER_S) == 1


def test_a_dying_child_is_restarted_until_the_supervisor_is_stopped(capfd: pytest.CaptureFixture[str]) -> None:
    supervisor = Supervisor()
    child = supervisor.start(Child("short-lived", [sys.executable, "-c", "import time; time.sleep(0.2)"],
                                   dict(os.environ)))
    # SIGTERM to ourselves once the child has been restarted twice: the supervisor then stops all.
    def stop_later() -> None:
        deadline = time.monotonic() + 30
        while child.restarts < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_later, daemon=True).start()
    assert supervisor.wait(poll_s=0.1) == 0
    assert child.restarts >= 2
    err = capfd.readouterr().err
    assert "short-lived exited with status 0 after 0 s; restarting it in 1 s" in err
    assert "restarting it in 2 s" in err and "short-lived started again (restart 2" in err
