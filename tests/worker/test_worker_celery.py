"""A real `xray worker` process (Celery on the real Redis, database 11, a queue of its own) diagnoses
studies inserted straight into a database (SQLite, then PostgreSQL), on the default runtime. Also:
the heartbeat key, the reconciler picking up a study whose message was lost, and a clean stop
(bounded waits; the process group is always killed at the end; only this test's keys removed).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from migrations import upgrade
from shared.config import PROJECT_ROOT, Settings
from shared.db import make_engine, make_session_factory, session_scope
from shared.gradcam import cam_from_png
from shared.models import Batch, Finding, Study
from shared.queue import enqueue_diagnosis, heartbeat_pattern, make_celery
from shared.runtime import resolve_auto
from shared.storage import LocalStorage, Storage

pytestmark = pytest.mark.slow

FINISH_TIMEOUT_S = 300.0


def _env(settings: Settings, redis_url: str, service_bundle: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "XRAY_VAR_DIR": str(settings.var_dir),
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": redis_url,
        "STORAGE_DIR": str(settings.storage_dir),
        "MODEL_DIR": str(service_bundle),
        "XRAY_QUEUE": settings.queue_name,
        "XRAY_RECONCILE_AFTER": "60",
        "OPENBLAS_NUM_THREADS": "1",
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    })
    return env


@contextmanager
def worker(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--concurrency", "1"],
            env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything left in the group (pool children)
            proc.wait(timeout=10)


def _delete_test_keys(client: redis.Redis, queue_name: str) -> None:
    """Every key naming this test's unique queue (its list, heartbeats, kombu's bindings)."""
    keys = list(client.scan_iter(match=f"*{queue_name}*"))
    if keys:
        client.delete(*keys)
    for key in client.scan_iter(match="_kombu.binding*", _type="set"):
        for member in client.smembers(key):
            if queue_name.encode() in member:
                client.srem(key, member)


def _wait(predicate, timeout_s: float, describe) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s:.0f} s: {describe()}")
        time.sleep(0.5)


def _run(settings: Settings, redis_url: str, service_bundle: Path, images: list[Path], tmp_path: Path) -> None:
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    storage = LocalStorage(settings.storage_dir)
    payloads = [(p.name, p.read_bytes()) for p in images] + [("broken.png", b"not an image\n" * 50)]
    with session_scope(factory) as session:
        batch = Batch(label="celery test")
        studies = [Study(batch=batch, original_filename=name, sha256=hashlib.sha256(data).hexdigest(),
                         stored_path=storage.put_original(data, "png"), format="png", size_bytes=len(data))
                   for name, data in payloads]
        # One more whose message was "lost": queued an hour ago and never sent. The reconciler's
        # first run (at worker start) must find it.
        lost = Study(batch=batch, original_filename="lost.png", sha256=studies[0].sha256,
                     stored_path=studies[0].stored_path, format="png", size_bytes=len(payloads[0][1]),
                     created_at=datetime.now(UTC) - timedelta(hours=1),
                     updated_at=datetime.now(UTC) - timedelta(hours=1))
        session.add_all([*studies, lost])
        session.flush()
        sent_ids = [s.id for s in studies]
        all_ids = [*sent_ids, lost.id]

    client = redis.Redis.from_url(redis_url)
    producer = make_celery(settings, redis_url)
    log_path = tmp_path / "worker.log"

    def statuses() -> dict[int, str]:
        with session_scope(factory) as session:
            return dict(session.execute(select(Study.id, Study.status).where(Study.id.in_(all_ids))).all())

    def finished() -> bool:
        return all(s in ("done", "failed") for s in statuses().values())

    def describe() -> str:
        return f"{statuses()}; worker log tail:\n{log_path.read_text(errors='replace')[-3000:]}"

    try:
        with worker(_env(settings, redis_url, service_bundle), log_path) as proc:
            for study_id in sent_ids:
                enqueue_diagnosis(producer, study_id)
            enqueue_diagnosis(producer, sent_ids[0])  # a duplicate delivery changes nothing
            _wait(finished, FINISH_TIMEOUT_S, describe)
            beats = [json.loads(client.get(k)) for k in client.scan_iter(match=heartbeat_pattern(settings))]
            assert len(beats) == 1, beats
            runtime = "-".join(resolve_auto("auto", "auto"))
            assert beats[0]["model_trained"] is False and beats[0]["runtime"] == runtime
            assert beats[0]["pid"] != proc.pid
            assert f"each with its own model, on {runtime}" in log_path.read_text()  # the start line says it
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, describe()
        # A clean stop removes the heartbeat.
        assert list(client.scan_iter(match=heartbeat_pattern(settings))) == []
        with session_scope(factory) as session:
            rows = {s.id: s for s in session.scalars(select(Study).where(Study.id.in_(all_ids)))}
            per_study = {i: len(session.scalars(select(Finding.id).where(Finding.study_id == i)).all())
                         for i in all_ids}
        broken_id = sent_ids[-1]
        for study_id in all_ids:
            row = rows[study_id]
            if study_id == broken_id:
                assert row.status == "failed" and "not a PNG, JPEG or DICOM file" in (row.error or "")
                assert per_study[study_id] == 0
                continue
            assert row.status == "done", (study_id, row.status, row.error)
            assert row.attempts == 1, "the duplicate message must not run the study again"
            assert per_study[study_id] == 14
            assert row.urgency is not None and row.due_at is not None
            assert row.model_runtime == runtime
            sheet = storage.read(Storage.cam_sheet_relpath(study_id))
            assert cam_from_png(sheet, "Pneumothorax").ndim == 2
    finally:
        _delete_test_keys(client, settings.queue_name)
        client.close()
        engine.dispose()


def test_celery_worker_sqlite_prefork(settings: Settings, redis_url: str, service_bundle: Path,
                                      nih_full_images: list[Path], tmp_path: Path) -> None:
    _run(settings, redis_url, service_bundle, nih_full_images[:3], tmp_path)


@pytest.mark.postgres
def test_celery_worker_postgres(settings: Settings, redis_url: str, postgres_url: str, service_bundle: Path,
                                     nih_full_images: list[Path], tmp_path: Path) -> None:
    settings = settings.with_overrides(database_url=postgres_url)
    _run(settings, redis_url, service_bundle, nih_full_images[3:6], tmp_path)


def test_worker_refuses_to_start_without_redis_or_schema(settings: Settings, service_bundle: Path,
                                                         tmp_path: Path) -> None:
    env = _env(settings, "", service_bundle)
    env.pop("REDIS_URL")
    run = subprocess.run([sys.executable, "-m", "cli.main", "worker"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "REDIS_URL is not set" in run.stderr
    env["REDIS_URL"] = "redis://127.0.0.1:6379/11"
    run = subprocess.run([sys.executable, "-m", "cli.main", "worker"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "run `xray db upgrade`" in run.stderr


def test_the_worker_runs_with_malloc_keeping_freed_memory() -> None:
    from cli.worker import MALLOC_TUNABLES, with_malloc_tunables

    assert with_malloc_tunables({})["GLIBC_TUNABLES"] == MALLOC_TUNABLES
    assert with_malloc_tunables({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})["GLIBC_TUNABLES"] == \
        f"glibc.malloc.hugetlb=1:{MALLOC_TUNABLES}"
    assert with_malloc_tunables({"GLIBC_TUNABLES": MALLOC_TUNABLES}) is None  # already run again: no loop
