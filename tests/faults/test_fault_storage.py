"""Fault: the storage folder is full or read-only.

Uploads: the Flask app (test client) stores originals on a tiny tmpfs of its own, so "full" is the
kernel's real ENOSPC and "read-only" its real EROFS (a read-only remount). Mounting needs root with
CAP_SYS_ADMIN; without it those tests skip, and the in-process variants below still run: `os.write`
patched to raise ENOSPC once a byte quota is used up (what a full disk does to `write(2)`), and a
storage root whose parent is a regular file (ENOTDIR: root can write anywhere, so permissions cannot
make a folder read-only for the tests, and chattr +i needs a file system that supports it).
Either way the answer is 507 (full) or 500 (cannot write) with a clear JSON message; no study row,
no batch, nothing enqueued, and nothing half written: every file left is a complete original.

Worker: a real `xray worker` whose storage fills up after the originals are stored cannot write
heatmaps: the study is retried (transient) and finishes once space is freed; left full, it ends
`failed` with the storage reason after XRAY_MAX_ATTEMPTS instead of looping.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from migrations import upgrade
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.models import Batch, Study
from shared.queue import enqueue_diagnosis, make_celery
from shared.storage import LocalStorage
from tests.faults.support import (
    all_finished,
    assert_done_exactly_once,
    count_by_status,
    fault_env,
    files_under,
    fill_disk,
    insert_studies,
    kermany_payloads,
    log_tail,
    remount,
    study_states,
    tmpfs,
)
from tests.service_harness import delete_queue_keys, wait_until, worker_process
from tests.web.support import make_app, session_for, upload


@pytest.fixture
def images(nih_full_images: list[Path]) -> list[tuple[bytes, str]]:
    return [(path.read_bytes(), path.name) for path in nih_full_images[:4]]


def _rows(settings: Settings) -> tuple[int, int]:
    with session_for(settings) as session:
        return (int(session.scalar(select(func.count()).select_from(Study)) or 0),
                int(session.scalar(select(func.count()).select_from(Batch)) or 0))


def _assert_only_complete_originals(root: Path, uploaded: list[bytes]) -> None:
    """No temporary file, nothing partial: each file is a whole upload under its own sha256."""
    by_digest = {hashlib.sha256(data).hexdigest(): data for data in uploaded}
    for path in files_under(root):
        if path.name == "filler.bin":
            continue
        digest = path.stem
        assert path.parent.parent.name == "originals" and digest in by_digest, f"unexpected file {path}"
        assert path.read_bytes() == by_digest[digest], f"partial file {path}"


def test_upload_to_full_tmpfs_is_507_and_leaves_nothing_half_written(settings: Settings,
                                                                    images: list[tuple[bytes, str]]) -> None:
    total = sum(len(data) for data, _ in images)
    with tmpfs("1m") as mount:
        assert total > 1024 * 1024, "the upload must not fit on the 1 MiB tmpfs"
        full = settings.with_overrides(storage_dir=mount / "storage")
        app, producer = make_app(full)
        response = upload(app.test_client(), images)
        assert response.status_code == 507, response.get_data(as_text=True)
        assert "storage is full" in response.get_json()["error"]
        assert "upload again" in response.get_json()["error"]
        assert producer.sent == []
        assert _rows(full) == (0, 0)
        _assert_only_complete_originals(mount, [data for data, _ in images])


def test_upload_to_read_only_tmpfs_is_500_with_message(settings: Settings,
                                                      images: list[tuple[bytes, str]]) -> None:
    with tmpfs("1m") as mount:
        (mount / "storage").mkdir()
        remount(mount, read_only=True)
        ro = settings.with_overrides(storage_dir=mount / "storage")
        app, producer = make_app(ro)
        response = upload(app.test_client(), images[:2])
        assert response.status_code == 500
        error = response.get_json()["error"]
        assert "cannot write to its storage folder" in error and "no study" in error
        assert producer.sent == [] and _rows(ro) == (0, 0)
        assert files_under(mount) == []


def test_upload_when_write_runs_out_of_space_in_process(settings: Settings, images: list[tuple[bytes, str]],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The same as the tmpfs test without mounting: `os.write` in shared.storage raises ENOSPC once
    a quota (room for the first file and half of the second) is used up."""
    import shared.storage

    app, producer = make_app(settings)
    quota = [len(images[0][0]) + len(images[1][0]) // 2]
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        if quota[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real_write(fd, bytes(data[: quota[0]]))
        quota[0] -= written
        return written

    monkeypatch.setattr(shared.storage.os, "write", write)
    response = upload(app.test_client(), images)
    monkeypatch.undo()
    assert response.status_code == 507 and "storage is full" in response.get_json()["error"]
    assert producer.sent == [] and _rows(settings) == (0, 0)
    _assert_only_complete_originals(settings.storage_dir, [data for data, _ in images])
    assert len(files_under(settings.storage_dir)) == 1  # the first file, whole


def test_upload_when_storage_root_cannot_be_created(settings: Settings, images: list[tuple[bytes, str]],
                                                    tmp_path: Path) -> None:
    blocker = tmp_path / "mounted-volume"
    blocker.write_bytes(b"a file where the storage volume should be mounted")
    broken = settings.with_overrides(storage_dir=blocker / "storage")
    app, producer = make_app(broken)
    response = upload(app.test_client(), images[:2])
    assert response.status_code == 500
    assert "cannot write to its storage folder" in response.get_json()["error"]
    assert producer.sent == [] and _rows(broken) == (0, 0)
    assert blocker.read_bytes().startswith(b"a file where")


@pytest.mark.slow
def test_worker_on_full_storage_retries_then_finishes_or_fails_with_reason(
        settings: Settings, redis_url: str, service_bundle: Path, kermany_dir: Path, tmp_path: Path) -> None:
    with tmpfs("8m") as mount:
        settings = settings.with_overrides(storage_dir=mount / "storage")
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        factory = make_session_factory(engine)
        storage = LocalStorage(settings.storage_dir)
        payloads = kermany_payloads(kermany_dir, 304)[300:]
        recover = insert_studies(factory, storage, payloads[:2], "full, then freed")
        give_up: list[int] = []
        producer = make_celery(settings, redis_url)
        log_path = tmp_path / "worker.log"

        def describe() -> str:
            return f"{study_states(factory, recover + give_up)}; worker log tail:\n{log_tail(log_path)}"

        filler = fill_disk(mount)
        try:
            with worker_process(fault_env(settings, redis_url, service_bundle, XRAY_MAX_ATTEMPTS="4"), log_path):
                for study_id in recover:
                    enqueue_diagnosis(producer, study_id)

                def both_retrying() -> bool:
                    log = log_path.read_text(errors="replace")
                    return all(f"study {i}: the server's storage is full; the file was not stored; retrying in"
                               in log for i in recover)

                # Both studies hit the full disk and wait for their next try (2 s, then 4 s, 8 s).
                wait_until(both_retrying, 180, interval_s=0.2, describe=describe)
                assert count_by_status(factory, recover) == {"processing": 2}
                filler.unlink()
                wait_until(lambda: all_finished(factory, recover), 180, describe=describe)
                assert_done_exactly_once(factory, recover)

                give_up.extend(insert_studies(factory, storage, payloads[2:], "full for good"))
                fill_disk(mount)
                for study_id in give_up:
                    enqueue_diagnosis(producer, study_id)
                wait_until(lambda: all_finished(factory, give_up), 180, describe=describe)
            for state in study_states(factory, give_up).values():
                assert state.status == "failed", describe()
                assert state.attempts == 4
                assert state.error == "gave up after 4 attempts: the server's storage is full; the file was not stored"
        finally:
            delete_queue_keys(redis_url, settings.queue_name)
            engine.dispose()
