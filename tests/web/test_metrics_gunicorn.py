"""/metrics under a real gunicorn with several processes, as deployed: `-c python:web.gunicorn_conf`
clears PROMETHEUS_MULTIPROC_DIR at start, and a scrape adds up every process's counts; a scraper
address in XRAY_METRICS_ALLOW needs no token. JSON logs from gunicorn's processes too."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from migrations import upgrade
from shared.config import PROJECT_ROOT, Settings

pytestmark = pytest.mark.slow
REQUESTS = 24


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_gunicorn_processes_add_up(settings: Settings, tmp_path: Path) -> None:
    upgrade(settings.database_url)
    port = _free_port()
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_999999.db").write_bytes(b"left by an earlier run: unreadable if not cleared")
    env = dict(os.environ)
    env.update({
        "XRAY_VAR_DIR": str(settings.var_dir), "DATABASE_URL": settings.database_url,
        "REDIS_URL": "redis://127.0.0.1:1/0",  # no Redis: /healthz answers 503, which is counted all the same
        "STORAGE_DIR": str(settings.storage_dir), "XRAY_QUEUE": settings.queue_name,
        "SECRET_KEY": "gunicorn-metrics-test-key-0123456789abcdef", "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "XRAY_METRICS_ALLOW": "127.0.0.1/32", "XRAY_LOG_FORMAT": "json",
    })
    err_path = tmp_path / "gunicorn.err"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:web.gunicorn_conf", "--bind", f"127.0.0.1:{port}",
             "--workers", "2", "--threads", "2", "web.wsgi:app"],
            env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with suppress(OSError):
                if _get(f"{base}/healthz")[0] in (200, 503):
                    break
            assert time.monotonic() < deadline, err_path.read_text()[-2000:]
            time.sleep(0.3)
        for _ in range(REQUESTS - 1):
            assert _get(f"{base}/healthz?q=PID-SECRET-4711")[0] == 503  # a query may name a patient
        status, text = _get(f"{base}/metrics")
        assert status == 200, text
        samples = {(s.name, frozenset(s.labels.items())): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        count = samples[("xray_http_request_duration_seconds_count",
                         frozenset({"route": "/healthz", "method": "GET", "status": "503"}.items()))]
        assert count == REQUESTS
        assert not (folder / "counter_999999.db").exists()
        pids = {path.stem.rsplit("_", 1)[-1] for path in folder.glob("histogram_*.db")}
        assert pids and all(pid.isdigit() for pid in pids)
        # From an address outside the allowed range (none here but 127.0.0.1), a token is needed.
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    # Every line is JSON: gunicorn's (master, access log) and the app's (the health check's warnings).
    entries = [json.loads(line) for line in err_path.read_text().splitlines() if line.strip()]
    assert any(e["logger"] == "gunicorn.error" for e in entries)
    access = [e for e in entries if e["logger"] == "gunicorn.access"]
    assert len(access) == REQUESTS + 1 and '"GET /healthz HTTP/1.1" 503' in access[-2]["message"]
    assert "PID-SECRET" not in err_path.read_text()
    assert any(e["logger"] == "web.health" and e["level"] == "WARNING" for e in entries), err_path.read_text()[-2000:]
