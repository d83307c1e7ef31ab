"""Bulk upload: validation by content, content-addressed storage, commit THEN enqueue, rejections,
sanitised names, storage failures (507/500), enqueue failure after commit, 413."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from shared.config import Settings
from shared.intake import sanitise_filename
from shared.models import Batch, Study
from shared.queue import TASK_DIAGNOSE
from tests.web.support import RecordingProducer, make_app, session_for, stored_originals, upload


@pytest.fixture
def images(nih_full_images: list[Path]) -> list[tuple[bytes, str]]:
    return [(path.read_bytes(), path.name) for path in nih_full_images[:3]]


def _count(settings: Settings, model: type) -> int:
    with session_for(settings) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.mark.parametrize(("raw", "expected"), [
    ("chest.png", "chest.png"),
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\dr\\Desktop\\scan 1.dcm", "scan 1.dcm"),
    ("day1/ward4/img.png", "img.png"),
    ("bad\x00name\x1f.png", "badname.png"),
    ("evil\u202egnp.exe", "evilgnp.exe"),  # a bidi override would make it read "exe.png"
    ("  spaced  ", "spaced"),
    ("", "unnamed"),
    (None, "unnamed"),
    ("folder/", "unnamed"),
    ("..", "unnamed"),
    ("x" * 300 + ".png", "x" * 255),
])
def test_sanitise_filename(raw: str | None, expected: str) -> None:
    assert sanitise_filename(raw) == expected


def test_accepted_files_are_stored_committed_then_enqueued(settings: Settings, images: list[tuple[bytes, str]]) -> None:
    seen_at_send: list[tuple[int, str]] = []

    def row_must_exist(name: str, args: list[Any]) -> None:
        assert name == TASK_DIAGNOSE
        # A separate connection: only committed rows are visible to it (and to a worker).
        with session_for(settings) as session:
            study = session.get(Study, args[0])
            assert study is not None, "enqueued before the study row was committed"
            seen_at_send.append((study.id, study.status))

    app, producer = make_app(settings, RecordingProducer(on_send=row_must_exist))
    bad = [(b"GIF89a not an x-ray at all", "cat.gif"), (b"", "empty.png"),
           (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "truncated.png")]
    response = upload(app.test_client(), [images[0], bad[0], images[1], bad[1], images[2], bad[2]],
                      label="Ward 4")

    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert [a["filename"] for a in body["accepted"]] == [name for _, name in images]
    assert all(a["status"] == "queued" and a["enqueued"] for a in body["accepted"])
    assert [r["filename"] for r in body["rejected"]] == ["cat.gif", "empty.png", "truncated.png"]
    assert all(r["reason"] for r in body["rejected"])
    assert "not a PNG, JPEG or DICOM" in body["rejected"][0]["reason"]
    assert "empty" in body["rejected"][1]["reason"]
    assert "warning" not in body

    ids = [a["id"] for a in body["accepted"]]
    assert producer.sent == [(TASK_DIAGNOSE, [i]) for i in ids]
    assert seen_at_send == [(i, "queued") for i in ids]

    with session_for(settings) as session:
        batch = session.get(Batch, body["batch_id"])
        assert batch is not None and batch.label == "Ward 4"
        for study_id, (content, name) in zip(ids, images, strict=True):
            study = session.get(Study, study_id)
            assert study is not None and study.batch_id == batch.id
            assert study.original_filename == name
            digest = hashlib.sha256(content).hexdigest()
            assert study.sha256 == digest and study.format == "png" and study.size_bytes == len(content)
            assert study.stored_path == f"originals/{digest[:2]}/{digest}.png"
            assert (settings.storage_dir / study.stored_path).read_bytes() == content
    # Only the three accepted files reached storage; nothing under a client-chosen name.
    assert len(stored_originals(settings)) == 3


def test_client_file_name_is_sanitised_and_never_used_for_storage(settings: Settings,
                                                                  images: list[tuple[bytes, str]]) -> None:
    app, _ = make_app(settings)
    response = upload(app.test_client(), [(images[0][0], "../../../tmp/evil\x07.png")])
    assert response.status_code == 201
    assert response.get_json()["accepted"][0]["filename"] == "evil.png"
    assert [p.name for p in stored_originals(settings)] == [f"{hashlib.sha256(images[0][0]).hexdigest()}.png"]
    assert not (settings.storage_dir.parent / "tmp").exists()


def test_every_file_rejected_is_422_with_reasons_and_nothing_written(settings: Settings) -> None:
    app, producer = make_app(settings)
    response = upload(app.test_client(), [(b"hello", "notes.txt"), (b"%PDF-1.7", "report.pdf")])
    assert response.status_code == 422
    body = response.get_json()
    assert body["batch_id"] is None and body["accepted"] == []
    assert [r["filename"] for r in body["rejected"]] == ["notes.txt", "report.pdf"]
    assert "rejected" in body["error"]
    assert producer.sent == []
    assert stored_originals(settings) == []
    assert _count(settings, Batch) == 0 and _count(settings, Study) == 0


def test_no_files_field_is_400(settings: Settings) -> None:
    app, _ = make_app(settings)
    response = app.test_client().post("/api/v1/batches", data={"other": "x"}, content_type="multipart/form-data")
    assert response.status_code == 400
    assert "files" in response.get_json()["error"]


def test_file_over_the_per_image_limit_is_rejected_without_failing_others(
        settings: Settings, images: list[tuple[bytes, str]]) -> None:
    small = settings.with_overrides(limits=settings.limits.__class__(
        max_bytes=len(images[0][0]) + 10, max_pixels=settings.limits.max_pixels, min_side=64))
    big = images[0][0] + b"\x00" * 100
    app, producer = make_app(small)
    response = upload(app.test_client(), [(big, "big.png"), images[0]])
    assert response.status_code == 201
    body = response.get_json()
    assert [r["filename"] for r in body["rejected"]] == ["big.png"]
    assert "limit" in body["rejected"][0]["reason"]
    assert len(body["accepted"]) == 1 and len(producer.sent) == 1


def test_request_over_max_upload_bytes_is_413_json(settings: Settings, images: list[tuple[bytes, str]]) -> None:
    app, producer = make_app(settings.with_overrides(max_upload_bytes=50_000))
    response = upload(app.test_client(), images[:1])
    assert response.status_code == 413
    assert "limit" in response.get_json()["error"]
    assert producer.sent == [] and stored_originals(settings) == []


def test_append_to_existing_batch_and_unknown_batch(settings: Settings, images: list[tuple[bytes, str]]) -> None:
    app, _ = make_app(settings)
    client = app.test_client()
    first = upload(client, images[:1]).get_json()
    second = upload(client, images[1:3], url=f"/api/v1/batches/{first['batch_id']}/files")
    assert second.status_code == 201
    assert second.get_json()["batch_id"] == first["batch_id"]
    assert client.get(f"/api/v1/batches/{first['batch_id']}").get_json()["counts"]["total"] == 3
    missing = upload(client, images[:1], url="/api/v1/batches/999/files")
    assert missing.status_code == 404 and "999" in missing.get_json()["error"]


def test_enqueue_failure_after_commit_keeps_studies_queued_and_says_so(
        settings: Settings, images: list[tuple[bytes, str]]) -> None:
    calls: list[int] = []

    def broker_down(_name: str, args: list[Any]) -> None:
        calls.append(args[0])
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    app, _ = make_app(settings, RecordingProducer(on_send=broker_down))
    response = upload(app.test_client(), images)
    assert response.status_code == 201
    body = response.get_json()
    assert len(body["accepted"]) == 3
    assert not any(a["enqueued"] for a in body["accepted"])
    assert "queued" in body["warning"]
    assert calls == [body["accepted"][0]["id"]]  # stop at the first broker failure
    with session_for(settings) as session:
        statuses = [session.get(Study, a["id"]).status for a in body["accepted"]]  # type: ignore[union-attr]
    assert statuses == ["queued"] * 3  # the reconciler re-sends them; nothing accepted is lost


@pytest.mark.parametrize(("err", "status", "words"), [
    (errno.ENOSPC, 507, "full"),
    (errno.EIO, 500, "could not store"),
])
def test_storage_failure_writes_nothing(settings: Settings, images: list[tuple[bytes, str]],
                                        monkeypatch: pytest.MonkeyPatch, err: int, status: int,
                                        words: str) -> None:
    import shared.storage

    app, producer = make_app(settings)
    real_write = os.write
    writes: list[int] = []

    def failing_write(fd: int, data: Any) -> int:
        writes.append(fd)
        if len(writes) >= 2:  # the first file is stored, the second hits the failure
            raise OSError(err, os.strerror(err))
        return real_write(fd, data)

    monkeypatch.setattr(shared.storage.os, "write", failing_write)
    response = upload(app.test_client(), images)
    assert response.status_code == status
    assert words in response.get_json()["error"]
    assert producer.sent == []
    assert _count(settings, Batch) == 0 and _count(settings, Study) == 0
    # No partial file: only the first, complete original and no temporary files.
    files = [p for p in (settings.storage_dir / "originals").rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in files] == [images[0][0]]


def test_cross_site_post_is_refused(settings: Settings, images: list[tuple[bytes, str]]) -> None:
    app, producer = make_app(settings)
    client = app.test_client()
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        response = client.post("/api/v1/batches", data={"files": [(io.BytesIO(images[0][0]), "a.png")]},
                               content_type="multipart/form-data", headers=headers)
        assert response.status_code == 403 and "error" in response.get_json()
    assert producer.sent == []
    same_origin = client.post("/api/v1/batches", data={"files": [(io.BytesIO(images[0][0]), "a.png")]},
                              content_type="multipart/form-data", headers={"Origin": "http://localhost"})
    assert same_origin.status_code == 201
    assert len(producer.sent) == 1
