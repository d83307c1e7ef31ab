"""Nothing answered Success is lost: a real `xray dicom listen` process is killed (SIGKILL) while
storescu is sending it a series; every instance storescu saw acknowledged has its committed study
row, and each of them is on the queue."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image
from sqlalchemy import select

from cli.up import free_port
from migrations import upgrade
from shared.config import Settings
from shared.db import make_engine, make_session_factory, session_scope
from shared.models import Study
from tests.dicom_factory import dicom_from_array
from tests.gateway.support import need
from tests.service_harness import PROJECT_ROOT, delete_queue_keys, service_env, wait_until
from worker.reconcile import waiting_study_ids

pytestmark = pytest.mark.slow


def test_receiver_killed_mid_association_loses_nothing_it_acknowledged(
        settings: Settings, redis_url: str, nih_full_images: list[Path], tmp_path: Path) -> None:
    storescu = need("storescu", "dcmtk")
    upgrade(settings.database_url)
    port = free_port()
    files = []
    for index, path in enumerate(nih_full_images[:6] * 10):  # 60 distinct files: one pixel differs
        grey = np.asarray(Image.open(path).convert("L").resize((256, 256)), dtype=np.uint8).copy()
        grey[0, 0] = index
        target = tmp_path / f"{index}.dcm"
        target.write_bytes(dicom_from_array(grey, window="full"))
        files.append(str(target))
    env = service_env(settings, redis_url, tmp_path, XRAY_DICOM_ALLOWED_AETS="*", XRAY_DICOM_PORT=str(port),
                      XRAY_DICOM_HOST="127.0.0.1")
    log = (tmp_path / "receiver.log").open("wb")
    receiver = subprocess.Popen([sys.executable, "-m", "cli.main", "dicom", "listen"], env=env, cwd=PROJECT_ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
    engine = make_engine(settings.database_url)
    try:
        wait_until(lambda: subprocess.run([need("echoscu", "dcmtk"), "-aec", "XRAY", "127.0.0.1", str(port)],
                                          capture_output=True, timeout=30).returncode == 0, 60)
        sender = subprocess.Popen([storescu, "-v", "-aec", "XRAY", "127.0.0.1", str(port), *files],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        assert sender.stdout is not None
        for line in sender.stdout:  # kill the receiver once a few instances are through
            lines.append(line)
            if sum("Received Store Response (Success)" in seen for seen in lines) == 5:
                receiver.send_signal(signal.SIGKILL)
                break
        receiver.wait(timeout=30)
        output = "".join(lines) + sender.communicate(timeout=60)[0]
        acknowledged = len(re.findall(r"Received Store Response \(Success\)", output))
        with session_scope(make_session_factory(engine)) as session:
            ids = session.scalars(select(Study.id).order_by(Study.id)).all()
        assert acknowledged >= 1, output[-2000:]
        assert acknowledged < len(files), "the receiver was killed too late to test anything"
        assert len(ids) >= acknowledged  # each Success came after its row was committed
        # Each committed study is on the queue, but perhaps the one whose enqueueing the kill cut short:
        # that one stays `queued` in the database, where the reconciler finds it.
        queued = waiting_study_ids(redis.Redis.from_url(redis_url), settings.queue_name)
        assert len(set(ids) - queued) <= 1
    finally:
        if receiver.poll() is None:
            receiver.kill()
        log.close()
        engine.dispose()
        delete_queue_keys(redis_url, settings.queue_name)
