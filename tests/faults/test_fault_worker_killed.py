"""Fault: a worker pool process is killed with SIGKILL in the middle of a batch of 50 studies.

A real `xray worker` (prefork, one pool process) on the real Redis diagnoses 50 distinct kermany-224
X-rays inserted straight into SQLite. While a study is `processing`, the pool process is killed -9.
Celery requeues the unacknowledged message (late ack + reject on worker lost), the main process starts
a new pool process, and the reconciler is the backstop. Every study must end `done` exactly once: 14
findings rows each (the unique constraint holds), none left queued or processing.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from migrations import upgrade
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.queue import enqueue_diagnosis, make_celery
from shared.storage import LocalStorage
from tests.faults.support import (
    FINISH_TIMEOUT_S,
    all_finished,
    assert_done_exactly_once,
    count_by_status,
    fault_env,
    insert_studies,
    kermany_payloads,
    log_tail,
    study_states,
)
from tests.service_harness import delete_queue_keys, wait_until, worker_process

pytestmark = pytest.mark.slow

BATCH = 50
SLOW_INDEX = 10


def _pool_children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_kill_pool_process_mid_batch(settings: Settings, redis_url: str, service_bundle: Path, kermany_dir: Path,
                                     tmp_path: Path) -> None:
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    storage = LocalStorage(settings.storage_dir)
    # One study in the middle is a large (slow to decode) image: killing the pool process while that
    # study is `processing` is then certain to hit a study in flight, however fast the others are.
    payloads = kermany_payloads(kermany_dir, BATCH)
    payloads[SLOW_INDEX] = ("large.png", _large_png())
    formats = ["png" if i == SLOW_INDEX else "jpeg" for i in range(BATCH)]
    ids = insert_studies(factory, storage, payloads, "kill -9 test", formats)
    slow_id = ids[SLOW_INDEX]
    producer = make_celery(settings, redis_url)
    log_path = tmp_path / "worker.log"

    def describe() -> str:
        return f"{count_by_status(factory, ids)}; worker log tail:\n{log_tail(log_path)}"

    try:
        with worker_process(fault_env(settings, redis_url, service_bundle), log_path, concurrency=1) as proc:
            for study_id in ids:
                enqueue_diagnosis(producer, study_id)
            # Wait until the pool is on the slow study, then kill its process while that study is in it.
            killed: list[int] = []
            deadline = time.monotonic() + FINISH_TIMEOUT_S
            while not killed and time.monotonic() < deadline:
                slow = study_states(factory, [slow_id])[slow_id]
                children = _pool_children(proc.pid)
                if slow.status == "processing" and children:
                    for child in children:
                        os.kill(child.pid, signal.SIGKILL)
                        killed.append(child.pid)
                else:
                    time.sleep(0.02)
            assert killed, f"no study was ever seen processing: {describe()}"
            assert count_by_status(factory, ids).get("done", 0) < BATCH, "the kill came after the batch"
            # The main process replaces the dead pool process; the batch carries on.
            wait_until(lambda: all_finished(factory, ids), FINISH_TIMEOUT_S, interval_s=1.0, describe=describe)
            assert proc.poll() is None, "the worker's main process must survive a pool process's death"
            new_children = {c.pid for c in _pool_children(proc.pid)}
            assert new_children and not new_children & set(killed)
        states = assert_done_exactly_once(factory, ids)
        # The study the killed process held ran again.
        assert states[slow_id].attempts >= 2, f"the killed study was not re-run: {describe()}"
        assert "WorkerLostError" in log_path.read_text(errors="replace") or "SIGKILL" in log_path.read_text(
            errors="replace")
    finally:
        delete_queue_keys(redis_url, settings.queue_name)
        engine.dispose()


def _large_png(side: int = 7000) -> bytes:
    """A valid 49-megapixel PNG (under the 50,000,000 pixel limit): about half a second to decode,
    so the test can see the study `processing` and kill the pool process while it is on it."""
    import io

    import numpy as np
    from PIL import Image

    pixels = (np.add.outer(np.arange(side), np.arange(side)) % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def test_study_that_kills_its_worker_every_time_ends_failed(settings: Settings, redis_url: str, service_bundle: Path,
                                                            kermany_dir: Path, tmp_path: Path) -> None:
    """A study whose pool process dies on every attempt (as an image that exhausts memory would) is
    claimed at most XRAY_MAX_ATTEMPTS times and then ends `failed` with a reason instead of looping;
    the studies behind it are diagnosed."""
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    storage = LocalStorage(settings.storage_dir)
    poison = insert_studies(factory, storage, [("huge.png", _large_png())], "poison", ["png"])[0]
    others = insert_studies(factory, storage, kermany_payloads(kermany_dir, 503)[500:], "behind it")
    producer = make_celery(settings, redis_url)
    log_path = tmp_path / "worker.log"

    def describe() -> str:
        return f"{study_states(factory, [poison, *others])}; worker log tail:\n{log_tail(log_path)}"

    try:
        with worker_process(fault_env(settings, redis_url, service_bundle, XRAY_MAX_ATTEMPTS="3"), log_path) as proc:
            for study_id in [poison, *others]:
                enqueue_diagnosis(producer, study_id)
            kills = 0
            deadline = time.monotonic() + FINISH_TIMEOUT_S
            while study_states(factory, [poison])[poison].status not in ("done", "failed"):
                assert time.monotonic() < deadline, describe()
                state = study_states(factory, [poison])[poison]
                children = _pool_children(proc.pid)
                if state.status == "processing" and state.attempts > kills and children:
                    for child in children:
                        os.kill(child.pid, signal.SIGKILL)
                    kills = state.attempts
                time.sleep(0.02)
            wait_until(lambda: all_finished(factory, others), FINISH_TIMEOUT_S, describe=describe)
            assert proc.poll() is None
        state = study_states(factory, [poison])[poison]
        assert kills == 3, describe()
        assert state.status == "failed" and state.attempts == 3 and state.findings == 0, describe()
        assert state.error is not None and state.error.startswith("gave up after 3 attempts: the worker stopped")
        assert_done_exactly_once(factory, others)
    finally:
        delete_queue_keys(redis_url, settings.queue_name)
        engine.dispose()
