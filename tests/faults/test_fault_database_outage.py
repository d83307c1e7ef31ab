"""Fault: the database goes away for a few seconds while a worker is writing results.

A fresh PostgreSQL database (the `postgres_url` fixture; the server itself is never stopped) and a real
`xray worker` on the real Redis diagnose 50 distinct kermany-224 X-rays. Mid-batch the test refuses new
connections to that database (`ALTER DATABASE ... ALLOW_CONNECTIONS false`), terminates the worker's
open ones (`pg_terminate_backend`), waits a few seconds longer than the first retry delays, then allows
connections again. The worker sees real `OperationalError`s (connection terminated, connection refused)
on claim, record and fail: the transient-error path, with Celery retries and exponential backoff.
Every study must still end `done` exactly once, none left queued or processing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from migrations import upgrade
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.queue import enqueue_diagnosis, make_celery
from shared.storage import LocalStorage
from tests.conftest import TEST_POSTGRES_ADMIN_URL
from tests.faults.support import (
    FINISH_TIMEOUT_S,
    all_finished,
    assert_done_exactly_once,
    count_by_status,
    fault_env,
    insert_studies,
    kermany_payloads,
    log_tail,
)
from tests.service_harness import delete_queue_keys, wait_until, worker_process

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

BATCH = 50
OUTAGE_S = 8.0


@contextmanager
def database_outage(database: str) -> Iterator[None]:
    """No connections to `database` inside the block (existing ones are terminated); allowed again after."""
    admin = create_engine(TEST_POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": database})
        try:
            yield
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
    finally:
        admin.dispose()


def test_database_outage_mid_batch(settings: Settings, redis_url: str, postgres_url: str, service_bundle: Path,
                                   kermany_dir: Path, tmp_path: Path) -> None:
    settings = settings.with_overrides(database_url=postgres_url)
    database = postgres_url.rsplit("/", 1)[1]
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    storage = LocalStorage(settings.storage_dir)
    ids = insert_studies(factory, storage, kermany_payloads(kermany_dir, 200 + BATCH)[200:], "database outage")
    producer = make_celery(settings, redis_url)
    log_path = tmp_path / "worker.log"

    def describe() -> str:
        try:
            counts: object = count_by_status(factory, ids)
        except OperationalError as exc:
            counts = f"(database unreachable: {exc.__class__.__name__})"
        return f"{counts}; worker log tail:\n{log_tail(log_path)}"

    try:
        with worker_process(fault_env(settings, redis_url, service_bundle), log_path, concurrency=1) as proc:
            for study_id in ids:
                enqueue_diagnosis(producer, study_id)
            wait_until(lambda: count_by_status(factory, ids).get("done", 0) >= 5, FINISH_TIMEOUT_S,
                       interval_s=0.2, describe=describe)
            engine.dispose()  # the test's own connections go too; it reconnects after the outage
            with database_outage(database):
                time.sleep(OUTAGE_S)
            assert count_by_status(factory, ids).get("done", 0) < BATCH, "the outage came after the batch"
            wait_until(lambda: all_finished(factory, ids), FINISH_TIMEOUT_S, interval_s=1.0, describe=describe)
            assert proc.poll() is None
        assert_done_exactly_once(factory, ids)
        # The outage really hit the worker: it saw the database go away and retried.
        log = log_path.read_text(errors="replace")
        assert "the database was unavailable; retrying in" in log, log_tail(log_path)
    finally:
        delete_queue_keys(redis_url, settings.queue_name)
        engine.dispose()
