"""The commands `xray up` (and `make run`) print run as printed: typed into a shell in another
folder, they create the first admin of this instance and give it a token."""

from __future__ import annotations

import os
import pty
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select as sql_select

from cli import up
from shared.config import PROJECT_ROOT, load_settings
from shared.db import make_engine, make_session_factory
from shared.models import User

PASSWORD = "a long enough password"


def shell_env() -> dict[str, str]:
    """The operator's other terminal: none of this instance's settings, only the import path a
    checkout's tests need (an installed copy needs none)."""
    env = {k: v for k, v in os.environ.items() if k not in {"XRAY_VAR_DIR", "DATABASE_URL", "STORAGE_DIR"}}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def run_in_terminal(command: str, cwd: Path, answers: list[str], timeout_s: float = 120) -> str:
    """Run `command` with `sh -c` on a real terminal (the password prompt needs one), answering each
    prompt in turn; return what it printed."""
    env = shell_env()
    pid, fd = pty.fork()
    if pid == 0:  # the child: straight into the shell, never back into pytest
        try:
            os.chdir(cwd)
            os.execve("/bin/sh", ["/bin/sh", "-c", command], env)
        finally:
            os._exit(127)
    out, answered_at, pending, deadline = b"", 0, list(answers), time.monotonic() + timeout_s
    try:
        while True:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break  # the terminal closed: the command ended
            if not chunk:
                break
            out += chunk
            # A prompt is a new line of output ending in ":" (the terminal does not echo passwords).
            if pending and out[answered_at:].rstrip().endswith(b":"):
                time.sleep(0.2)  # getpass flushes typed-ahead input as it turns echo off
                os.write(fd, pending.pop(0).encode() + b"\n")
                answered_at = len(out)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, f"{command!r} failed:\n{text}"
    return text


def printed_commands(hint: str) -> list[str]:
    return [line.strip() for line in hint.splitlines() if line.startswith("    ")]


def test_printed_first_admin_commands_run_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started_in, other_terminal = tmp_path / "service", tmp_path / "elsewhere"
    started_in.mkdir()
    other_terminal.mkdir()
    monkeypatch.chdir(started_in)
    for name in ("XRAY_VAR_DIR", "DATABASE_URL", "STORAGE_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    settings.var_dir.mkdir()

    add, token = printed_commands(up.first_admin_hint(settings, own_database_url=False))
    assert add.endswith(" user add NAME --role admin") and token.endswith(" user token NAME")
    run_in_terminal(add.replace("NAME", "first-admin"), other_terminal, [PASSWORD, PASSWORD])
    printed_token = run_in_terminal(token.replace("NAME", "first-admin"), other_terminal, []).split()[0]

    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as db:
        assert [u.username for u in db.scalars(sql_select(User))] == ["first-admin"]
    engine.dispose()
    assert printed_token.startswith("xray_") and len(printed_token) > 20
    assert not (other_terminal / "var").exists()  # nothing landed where the command was typed
    # With a user in place the hint shows the same working command for the next ones.
    assert printed_commands(up.first_admin_hint(settings, own_database_url=False)) == [
        add.removesuffix("admin") + "ROLE"]


def test_the_printed_xray_is_the_running_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make run` starts `.venv/bin/xray up` (a relative path): the hint names it absolutely."""
    script = tmp_path / "venv" / "bin" / "xray"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["venv/bin/xray", "up"])
    assert shlex.split(up.xray_command()) == [str(script)]
    monkeypatch.setattr(sys, "argv", [str(PROJECT_ROOT / "cli" / "main.py"), "up"])
    beside_python = Path(sys.executable).parent / "xray"
    expected = [str(beside_python)] if beside_python.is_file() else [sys.executable, "-m", "cli.main"]
    assert shlex.split(up.xray_command()) == expected
    assert subprocess.run([*expected, "--help"], env=shell_env(), cwd=tmp_path, capture_output=True).returncode == 0
