"""Hostile input, end to end.

Through the API: every case of `tests.hostile_corpus.hostile_cases()` in ONE multipart batch together
with valid X-rays: each hostile file is rejected with its own specific message, the valid ones are
accepted (so one bad file has no effect on the others). Valid files whose client names carry path
separators, `..`, NUL, control characters or 300 characters are accepted under a sanitised display
name that is never used as a storage path. A body over the upload limit is a 413 with a JSON error.

Through the worker: the hostile bytes are stored directly as Study originals (web validation
bypassed), interleaved with valid studies; a real `xray worker` ends each hostile study `failed` with
its specific reason and goes on to diagnose the next valid study.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from sqlalchemy import func, select

from migrations import upgrade
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.images import sniff_format
from shared.models import Batch, Study
from shared.queue import TASK_DIAGNOSE, enqueue_diagnosis, make_celery
from shared.storage import LocalStorage
from tests.faults.support import (
    all_finished,
    fault_env,
    files_under,
    insert_studies,
    kermany_payloads,
    log_tail,
    study_states,
)
from tests.hostile_corpus import hostile_cases
from tests.service_harness import delete_queue_keys, wait_until, worker_process
from tests.web.support import make_app, session_for

# Client names that try to escape or confuse, and the display name each must become. A raw backslash
# inside a quoted multipart `filename="..."` is an escape character (RFC 9110 quoted-pair), so Werkzeug
# drops it before the app sees the name; what is left is still only a display name.
NASTY_NAMES = [
    ("../../../../etc/cron.d/evil.jpeg", "evil.jpeg"),
    ("..\\..\\windows\\system32\\drivers.jpeg", "....windowssystem32drivers.jpeg"),
    ("ward4/day1/scan.jpeg", "scan.jpeg"),
    ("/absolute/path/abs.jpeg", "abs.jpeg"),
    ("nul\x00byte.jpeg", "nulbyte.jpeg"),
    ("bell\x07and\ttab.jpeg", "bellandtab.jpeg"),
    ("..", "unnamed"),
    ("y" * 300 + ".jpeg", "y" * 255),
]


def _post(client, files: list[tuple[bytes, str]]):  # type: ignore[no-untyped-def]
    data = {"files": [(io.BytesIO(content), name) for content, name in files]}
    return client.post("/api/v1/batches", data=data, content_type="multipart/form-data")


def test_every_hostile_case_rejected_in_one_batch_with_valid_files(settings: Settings,
                                                                   kermany_dir: Path) -> None:
    cases = hostile_cases()
    valid = kermany_payloads(kermany_dir, 1 + len(NASTY_NAMES))
    files = [(case.data, case.filename) for case in cases]
    files.insert(len(files) // 2, (valid[0][1], valid[0][0]))  # a valid X-ray in the middle of the hostile ones
    files += [(data, raw) for (_, data), (raw, _) in zip(valid[1:], NASTY_NAMES, strict=True)]
    app, producer = make_app(settings)
    response = _post(app.test_client(), files)
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()

    rejected = body["rejected"]
    assert len(rejected) == len(cases)
    for case, rejection in zip(cases, rejected, strict=True):
        assert rejection["filename"] == case.filename
        assert case.expected in rejection["reason"], (case.name, rejection["reason"])

    accepted = body["accepted"]
    assert [a["filename"] for a in accepted] == [valid[0][0]] + [shown for _, shown in NASTY_NAMES]
    for a in accepted:
        assert not set(a["filename"]) & {"/", "\\", "\x00", "\x07", "\t"} and len(a["filename"]) <= 255
    assert all(a["status"] == "queued" and a["enqueued"] for a in accepted)
    assert len({a["id"] for a in accepted}) == len(accepted)
    assert sorted(args[0] for name, args in producer.sent if name == TASK_DIAGNOSE) == sorted(
        a["id"] for a in accepted)

    # Storage holds exactly the valid originals, each under its sha256; no client name reached the disk.
    stored = files_under(settings.storage_dir)
    expected = {f"{hashlib.sha256(data).hexdigest()}.jpg" for _, data in valid}
    assert {p.name for p in stored} == expected and len(stored) == len(expected)
    assert all(p.parent.parent == settings.storage_dir / "originals" for p in stored)
    leftovers = {p.name for p in settings.var_dir.parent.rglob("*")} & {"etc", "cron.d", "evil.jpeg", "windows",
                                                                       "absolute", "ward4", "scan.jpeg"}
    assert leftovers == set()
    with session_for(settings) as session:
        names = dict(session.execute(select(Study.id, Study.original_filename)).all())
        paths = list(session.scalars(select(Study.stored_path)))
    assert sorted(names.values()) == sorted(a["filename"] for a in accepted)
    assert all(p.startswith("originals/") and ".." not in p and "\x00" not in p for p in paths)


def test_body_over_upload_limit_is_413_json_and_stores_nothing(settings: Settings, kermany_dir: Path) -> None:
    small = settings.with_overrides(max_upload_bytes=64 * 1024)
    app, producer = make_app(small)
    files = kermany_payloads(kermany_dir, 20)
    assert sum(len(d) for _, d in files) > 64 * 1024
    response = _post(app.test_client(), [(data, name) for name, data in files])
    assert response.status_code == 413
    assert response.is_json and "limit" in response.get_json()["error"]
    assert producer.sent == [] and files_under(small.storage_dir) == []
    with session_for(small) as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 0


def _claimed_format(data: bytes, filename: str) -> str:
    """The format a row would carry: sniffed when the bytes say, else what the file name claims."""
    try:
        return sniff_format(data)
    except Exception:  # noqa: BLE001 - not an image at all
        return {"png": "png", "jpg": "jpeg", "dcm": "dicom"}[filename.rsplit(".", 1)[1]]


@pytest.mark.slow
def test_worker_fails_each_hostile_study_with_its_reason_and_keeps_going(
        settings: Settings, redis_url: str, service_bundle: Path, kermany_dir: Path, tmp_path: Path) -> None:
    cases = hostile_cases()
    valid = kermany_payloads(kermany_dir, 400 + len(cases))[400:]
    payloads: list[tuple[str, bytes]] = []
    formats: list[str] = []
    for case, good in zip(cases, valid, strict=True):  # hostile, valid, hostile, valid, ...
        payloads += [(case.filename, case.data), good]
        formats += [_claimed_format(case.data, case.filename), "jpeg"]
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    ids = insert_studies(factory, LocalStorage(settings.storage_dir), payloads, "hostile originals", formats)
    hostile_ids, valid_ids = ids[0::2], ids[1::2]
    producer = make_celery(settings, redis_url)
    log_path = tmp_path / "worker.log"

    def describe() -> str:
        return f"{study_states(factory, ids)}; worker log tail:\n{log_tail(log_path)}"

    try:
        with worker_process(fault_env(settings, redis_url, service_bundle), log_path) as proc:
            for study_id in ids:
                enqueue_diagnosis(producer, study_id)
            wait_until(lambda: all_finished(factory, ids), 300, interval_s=1.0, describe=describe)
            assert proc.poll() is None, "a hostile file must never take the worker down"
        states = study_states(factory, ids)
        for case, study_id in zip(cases, hostile_ids, strict=True):
            state = states[study_id]
            assert state.status == "failed" and state.findings == 0, (case.name, state)
            assert case.expected in (state.error or ""), (case.name, state.error)
            assert state.attempts == 1, (case.name, "a bad image is not retried")
        for study_id in valid_ids:
            assert states[study_id].status == "done" and states[study_id].findings == 14, states[study_id]
    finally:
        delete_queue_keys(redis_url, settings.queue_name)
        engine.dispose()
