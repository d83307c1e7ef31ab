"""Fault: Redis stops and comes back in the middle of a batch of 50 studies.

The broker here is a redis-server of this test's own (AOF on, in a temporary folder, free port): the
shared Redis on 6379 is never stopped. A real `xray worker` diagnoses 50 distinct kermany-224 X-rays
inserted straight into SQLite. Mid-batch Redis is stopped (SIGTERM: AOF flushed; SIGKILL: up to a second
of writes may be lost), stays away a few seconds, and is restarted on the same folder and port. The
worker reconnects; messages Redis kept come back from the AOF and whatever was lost is re-sent by the
reconciler. Every study must end `done` exactly once, none left queued or processing.
"""

from __future__ import annotations

import time
from pathlib import Path

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
    own_redis,
)
from tests.service_harness import wait_until, worker_process

pytestmark = pytest.mark.slow

BATCH = 50
DOWN_S = 5.0


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_redis_restart_mid_batch(settings: Settings, service_bundle: Path, kermany_dir: Path, tmp_path: Path,
                                 kill: bool) -> None:
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    storage = LocalStorage(settings.storage_dir)
    offset = 100 if kill else 0  # other images for each run: nothing shared between them
    payloads = kermany_payloads(kermany_dir, offset + BATCH)[offset:]
    ids = insert_studies(factory, storage, payloads, f"redis restart ({'kill' if kill else 'term'})")
    log_path = tmp_path / "worker.log"

    def describe() -> str:
        return f"{count_by_status(factory, ids)}; worker log tail:\n{log_tail(log_path)}"

    try:
        with own_redis(tmp_path / "redis") as server:
            producer = make_celery(settings, server.url)
            with worker_process(fault_env(settings, server.url, service_bundle), log_path, concurrency=1) as proc:
                for study_id in ids:
                    enqueue_diagnosis(producer, study_id)
                wait_until(lambda: count_by_status(factory, ids).get("done", 0) >= 5, FINISH_TIMEOUT_S,
                           interval_s=0.2, describe=describe)
                server.stop(kill=kill)
                assert count_by_status(factory, ids).get("done", 0) < BATCH, "Redis stopped after the batch"
                time.sleep(DOWN_S)
                server.start()
                wait_until(lambda: all_finished(factory, ids), FINISH_TIMEOUT_S, interval_s=1.0,
                           describe=describe)
                assert proc.poll() is None, f"the worker must survive a Redis restart: {describe()}"
            producer.close()
        assert_done_exactly_once(factory, ids)
    finally:
        engine.dispose()
