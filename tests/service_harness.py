"""Real processes for integration tests and benchmarks (bench/ imports it too): a Celery worker
subprocess on the real Redis, and clean-up that removes only the keys this run wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil

from shared.config import PROJECT_ROOT, Settings

WORKER_START_TIMEOUT_S = 180.0


def service_env(settings: Settings, redis_url: str, model_dir: Path, **extra: str) -> dict[str, str]:
    """The environment a worker (or web) process needs: exactly what a second machine would get."""
    env = dict(os.environ)
    env.update({
        "XRAY_VAR_DIR": str(settings.var_dir),
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": redis_url,
        "STORAGE_DIR": str(settings.storage_dir),
        "MODEL_DIR": str(model_dir),
        "XRAY_QUEUE": settings.queue_name,
        "OPENBLAS_NUM_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **extra,
    })
    return env


def delete_queue_keys(redis_url: str, queue_name: str) -> None:
    """Remove the keys of this test's queue (its list, kombu's bindings and heartbeats); nothing else."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{queue_name}*"))
    # kombu keeps exchange bindings in `_kombu.binding.<exchange>` / `_kombu.binding_permanent.<queue>`.
    keys += [k for k in client.scan_iter(match="_kombu.binding*") if queue_name.encode() in k]
    # Only the sets: kombu 5.5+ also keeps a sorted set, `_kombu.binding_deadlines`, under that prefix.
    for key in client.scan_iter(match="_kombu.binding*", _type="set"):
        for member in client.smembers(key):
            if queue_name.encode() in member:
                client.srem(key, member)
    if keys:
        client.delete(*keys)


@contextmanager
def worker_process(env: dict[str, str], log_path: Path, concurrency: int = 1,
                   cwd: Path = PROJECT_ROOT) -> Iterator[subprocess.Popen[bytes]]:
    """`xray worker` as a real subprocess in its own process group; always stopped afterwards. With
    `cwd` outside the project (a machine of its own), the code is found through PYTHONPATH."""
    with _service_process([sys.executable, "-m", "cli.main", "worker", "--concurrency", str(concurrency)],
                          env, log_path, cwd) as proc:
        yield proc


@contextmanager
def web_process(env: dict[str, str], log_path: Path, port: int, cwd: Path = PROJECT_ROOT,
                processes: int = 2) -> Iterator[subprocess.Popen[bytes]]:
    """The web app under gunicorn (as in production) on 127.0.0.1:`port`, answering /healthz once
    yielded; always stopped afterwards."""
    import requests

    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(processes),
            "--timeout", "120", "web.wsgi:app"]
    with _service_process(argv, env, log_path, cwd) as proc:
        def answers() -> bool:
            assert proc.poll() is None, f"the web exited: {log_path.read_text(errors='replace')[-3000:]}"
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)  # any answer: it serves
                return True
            except requests.RequestException:
                return False

        wait_until(answers, WORKER_START_TIMEOUT_S, describe=lambda: log_path.read_text(errors="replace")[-3000:])
        yield proc


@contextmanager
def _service_process(argv: list[str], env: dict[str, str], log_path: Path,
                     cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))}
    log = log_path.open("wb")
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_process_group(proc)
        log.close()


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.5,
               describe: Callable[[], str] = lambda: "") -> None:
    """Poll until predicate() is true; fail with a description after timeout_s (bounded test time)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout_s:.0f} s. {describe()}")
        time.sleep(interval_s)


@dataclass
class UpService:
    """A running `xray up` (see `xray_up`): its process, URL, environment and output."""

    proc: subprocess.Popen[bytes]
    base: str
    env: dict[str, str]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def child(self, marker: str) -> psutil.Process:
        """The direct child whose command line mentions `marker` ("redis-server", "worker", "gunicorn")."""
        found = [p for p in psutil.Process(self.proc.pid).children() if marker in " ".join(p.cmdline())]
        assert len(found) == 1, f"{marker}: {found}"
        return found[0]

    def descendants(self) -> set[int]:
        return {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}

    def admin_token(self, name: str = "first-admin") -> dict[str, str]:
        """Create an admin with the CLI and return the headers of a fresh API token."""
        cli = [sys.executable, "-m", "cli.main", "user"]
        subprocess.run([*cli, "add", name, "--role", "admin", "--password-stdin"], env=self.env, cwd=PROJECT_ROOT,
                       input=b"a long enough password\n", check=True, capture_output=True)
        token = subprocess.run([*cli, "token", name], env=self.env, cwd=PROJECT_ROOT, check=True,
                               capture_output=True, text=True).stdout.strip()
        return {"Authorization": f"Bearer {token}"}


@contextmanager
def xray_up(tmp_path: Path, bundle: Path, port: int, dicom_port: int = 0, **extra: str) -> Iterator[UpService]:
    """`xray up --port PORT --dicom-port DICOM_PORT` (0: no receiver) with the embedded Redis and its
    state under tmp_path/var, until it says it is running. Afterwards it is stopped with Ctrl-C
    (SIGINT); when the body passed, it must exit 0 leaving no process it started behind."""
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL", "STORAGE_DIR"}}
    env.update({"XRAY_VAR_DIR": str(tmp_path / "var"), "MODEL_DIR": str(bundle), "TF_CPP_MIN_LOG_LEVEL": "2",
                **extra})
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "up", "--port", str(port), "--workers", "1",
                                 "--dicom-port", str(dicom_port)],
                                env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
        service = UpService(proc, f"http://127.0.0.1:{port}", env, log_path)
        descendants: set[int] = set()
        try:
            def says_running() -> bool:
                assert proc.poll() is None, service.log_text()
                return "is running: " in service.log_text()

            wait_until(says_running, 180, describe=lambda: service.log_text()[-3000:])
            descendants = service.descendants()
            yield service
            descendants |= service.descendants()
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
    assert code == 0, service.log_text()[-3000:]
    time.sleep(0.5)
    left = [pid for pid in descendants if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert left == [], f"processes left behind: {left}"
