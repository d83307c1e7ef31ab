"""Fault: under `xray up`, the embedded Redis and then the worker are killed with SIGKILL. Each is
started again (the log says which child died and that it is restarted), Redis on its append-only
file, and a study submitted after each death is diagnosed."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import requests

from cli.up import free_port
from tests.service_harness import UpService, wait_until, xray_up

pytestmark = pytest.mark.slow


def diagnose_one(up: UpService, headers: dict[str, str], image: Path) -> None:
    files = [("files", (image.name, image.read_bytes(), "application/octet-stream"))]
    response = requests.post(f"{up.base}/api/v1/batches", files=files, headers=headers, timeout=60)
    assert response.status_code == 201, response.text
    batch_url = f"{up.base}/api/v1/batches/{response.json()['batch_id']}"
    wait_until(lambda: requests.get(batch_url, headers=headers, timeout=10).json()["counts"].get("done", 0) == 1,
               300, interval_s=1.0, describe=lambda: up.log_text()[-3000:])


def kill_and_see_restart(up: UpService, marker: str, name: str) -> None:
    victim = up.child(marker)
    victim.send_signal(signal.SIGKILL)
    wait_until(lambda: f"{name} was killed by SIGKILL" in up.log_text() and f"{name} started again" in up.log_text(),
               60, describe=lambda: up.log_text()[-3000:])
    assert up.proc.poll() is None
    assert up.child(marker).pid != victim.pid


def test_up_restarts_a_killed_redis_and_worker(tmp_path: Path, nih_full_images: list[Path]) -> None:
    from shared.classifier import init_bundle

    bundle = tmp_path / "bundle"
    init_bundle(bundle, input_size=96, seed=2)
    with xray_up(tmp_path, bundle, free_port()) as up:
        headers = up.admin_token()
        diagnose_one(up, headers, nih_full_images[0])
        kill_and_see_restart(up, "redis-server", "redis")
        diagnose_one(up, headers, nih_full_images[1])
        kill_and_see_restart(up, "cli.main worker", "worker")
        diagnose_one(up, headers, nih_full_images[2])
