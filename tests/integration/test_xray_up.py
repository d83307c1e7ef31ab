"""`xray up` itself: start it on a free port with the embedded Redis, upload, poll to done, stop it
with Ctrl-C (SIGINT), and check that no process it started is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from cli.up import free_port
from shared.config import PROJECT_ROOT
from tests.service_harness import wait_until

pytestmark = pytest.mark.slow


def test_xray_up_runs_and_stops_cleanly(tmp_path: Path, nih_full_images: list[Path]) -> None:
    from shared.classifier import init_bundle

    bundle = tmp_path / "bundle"
    init_bundle(bundle, input_size=96, seed=2)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL", "STORAGE_DIR"}}
    env.update({"XRAY_VAR_DIR": str(tmp_path / "var"), "MODEL_DIR": str(bundle), "TF_CPP_MIN_LOG_LEVEL": "2"})
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "up", "--port", str(port), "--workers", "1"],
                            env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    descendants: set[int] = set()
    try:
        def log_says_running() -> bool:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            return "is running: " in (tmp_path / "up.log").read_text()

        wait_until(log_says_running, 120, describe=lambda: (tmp_path / "up.log").read_text()[-3000:])
        descendants = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        assert len(descendants) >= 3  # redis, worker, web at least

        # Nobody is let in until the first admin exists, which the start-up message explains.
        assert " user add NAME --role admin" in (tmp_path / "up.log").read_text()
        files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in nih_full_images[:2]]
        assert requests.post(f"{base}/api/v1/batches", files=files, timeout=30).status_code == 401
        cli = [sys.executable, "-m", "cli.main", "user"]
        subprocess.run([*cli, "add", "first-admin", "--role", "admin", "--password-stdin"], env=env, cwd=PROJECT_ROOT,
                       input=b"a long enough password\n", check=True, capture_output=True)
        token = subprocess.run([*cli, "token", "first-admin"], env=env, cwd=PROJECT_ROOT, check=True,
                               capture_output=True, text=True).stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        response = requests.post(f"{base}/api/v1/batches", files=files, headers=headers, timeout=30)
        assert response.status_code == 201, response.text
        batch_url = f"{base}/api/v1/batches/{response.json()['batch_id']}"
        wait_until(lambda: requests.get(batch_url, headers=headers, timeout=10).json()["counts"].get("done", 0) == 2,
                   300,
                   interval_s=1.0, describe=lambda: (tmp_path / "up.log").read_text()[-3000:])
        descendants |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    time.sleep(0.5)
    left = [pid for pid in descendants if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert left == [], f"processes left behind: {left}"
