"""Privacy: the audit trail of uploads, views, exports and reviews (who, which study, when, from where),
reads refused when they cannot be recorded, no patient identifier in any log record during an upload
and view of a DICOM, and de-identification on intake (XRAY_DEIDENTIFY=1) end to end."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, text

from shared.config import Settings
from shared.deid import Pseudonymiser
from shared.logs import ContextFilter, make_formatter
from shared.models import AuditEvent, BatchUploader, Review, Study
from tests.conftest import Account
from tests.dicom_factory import dicom_from_array
from tests.web.support import make_app, mark_done, session_for

SECRETS = {"PatientID": "PID-SECRET-4711", "PatientName": "Zyxwv^Secretname", "AccessionNumber": "ACCSECRET99"}
KEY = "audit-test-secret-key-0123456789abcdef"


def _dicom(seed: int = 0) -> bytes:
    grey = np.random.default_rng(seed).integers(0, 256, size=(128, 112), dtype=np.uint8)
    return dicom_from_array(grey, metadata=dict(SECRETS), window="full")


def _upload(client, account: Account, data: bytes, name: str = "Secretname_chest.dcm"):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/batches", headers=account.headers, content_type="multipart/form-data",
                       data={"files": [(io.BytesIO(data), name)]})


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every record also written as XRAY_LOG_FORMAT=json would write it (shared.logs)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(make_formatter("json"))
    handler.addFilter(ContextFilter())
    logging.getLogger().addHandler(handler)
    yield out
    logging.getLogger().removeHandler(handler)


def _events(settings: Settings) -> list[AuditEvent]:
    with session_for(settings) as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_uploads_views_exports_and_reviews_are_audited_without_identifiers_in_logs(
        settings: Settings, account_factory: Callable[..., Account], caplog: pytest.LogCaptureFixture,
        json_log: io.StringIO) -> None:
    caplog.set_level(logging.DEBUG)
    app, producer = make_app(settings.with_overrides(secret_key=KEY), auth=False)
    client = app.test_client()
    uploader, radiologist = account_factory("uploader"), account_factory("radiologist")

    response = _upload(client, uploader, _dicom())
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    study_id, batch_id = body["accepted"][0]["id"], body["batch_id"]
    assert client.get(f"/api/v1/batches/{batch_id}", headers=uploader.headers).status_code == 200
    mark_done(settings, study_id)
    for url in (f"/studies/{study_id}", f"/api/v1/studies/{study_id}", f"/studies/{study_id}/image",
                f"/api/v1/studies/{study_id}/export.json"):
        assert client.get(url, headers=radiologist.headers).status_code == 200, url
    csv = client.get("/api/v1/worklist.csv?status=all", headers=radiologist.headers)
    assert csv.status_code == 200 and SECRETS["PatientID"] in csv.get_data(as_text=True)  # the export itself has them
    review = client.post(f"/api/v1/studies/{study_id}/review", headers=radiologist.headers,
                         json={"reviewer": "someone else", "note": "fine"})
    assert review.status_code == 201 and review.get_json()["reviewer"] == radiologist.username

    events = _events(settings)
    summary = [(e.action, e.username, e.study_id) for e in events]
    assert summary == [
        ("upload", uploader.username, study_id),
        ("view", radiologist.username, study_id),
        ("view", radiologist.username, study_id),
        ("view", radiologist.username, study_id),
        ("export", radiologist.username, study_id),
        ("export", radiologist.username, study_id),
        ("review", radiologist.username, study_id),
    ]
    assert all(e.ip == "127.0.0.1" and e.at is not None for e in events)
    assert events[0].batch_id == batch_id and events[5].batch_id == batch_id
    with session_for(settings) as session:
        assert session.scalars(select(Review.reviewer)).all() == [radiologist.username]
        assert session.get(BatchUploader, (batch_id, events[0].user_id)) is not None

    # No patient identifier in any log record (message or arguments) of all that.
    for record in caplog.records:
        rendered = record.getMessage() + repr(record.args) + (record.exc_text or "")
        for value in (*SECRETS.values(), "Secretname"):
            assert value not in rendered, (record.name, record.levelname)
    for value in SECRETS.values():
        assert value not in caplog.text
    # Nor in the JSON form: one object per line, each with its fields, the study's id where known.
    entries = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert all({"time", "level", "logger", "process", "message"} <= set(entry) for entry in entries)
    assert any(entry.get("batch_id") == batch_id and entry["logger"] == "shared.intake" for entry in entries), entries
    for value in (*SECRETS.values(), "Secretname"):
        assert value not in json_log.getvalue()
    # Nor in the audit rows.
    for event in events:
        assert not any(value in repr(event.detail) for value in SECRETS.values())


def test_reads_are_refused_when_the_audit_cannot_be_written(settings: Settings,
                                                             account_factory: Callable[..., Account]) -> None:
    app, _ = make_app(settings.with_overrides(secret_key=KEY), auth=False)
    client = app.test_client()
    admin = account_factory("admin")
    study_id = _upload(client, admin, _dicom(1)).get_json()["accepted"][0]["id"]
    mark_done(settings, study_id)
    from shared.db import make_engine

    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE audit_events"))
    engine.dispose()
    response = client.get(f"/api/v1/studies/{study_id}", headers=admin.headers)
    assert response.status_code == 500
    assert "audit" in response.get_json()["error"] and "findings" not in response.get_json()
    assert client.get(f"/studies/{study_id}/image", headers=admin.headers).status_code == 500


def test_deidentify_on_intake(settings: Settings, account_factory: Callable[..., Account]) -> None:
    deid = settings.with_overrides(secret_key=KEY, deidentify=True)
    app, _ = make_app(deid, auth=False)
    client = app.test_client()
    admin = account_factory("admin")
    original = _dicom(2)
    body = _upload(client, admin, original).get_json()
    study_id = body["accepted"][0]["id"]
    pseudo = Pseudonymiser(KEY)
    with session_for(settings) as session:
        study = session.get(Study, study_id)
        assert study is not None
        assert study.patient_id == pseudo.patient_id(SECRETS["PatientID"])
        assert study.patient_name == pseudo.patient_name(SECRETS["PatientName"])
        assert study.accession_number == pseudo.accession_number(SECRETS["AccessionNumber"])
        assert study.study_instance_uid is not None and study.study_instance_uid.startswith("2.25.")
        assert study.study_date is None
        assert "Secretname" not in study.original_filename and study.original_filename.endswith(".dcm")
        stored = Path(deid.storage_dir, study.stored_path).read_bytes()
    for value in (*SECRETS.values(), "20240105"):
        assert value.encode() not in stored
    detail = client.get(f"/api/v1/studies/{study_id}", headers=admin.headers).get_json()
    assert detail["dicom"]["patient_id"] == pseudo.patient_id(SECRETS["PatientID"])
    # The same file again is recognised as the same study (de-identification is deterministic).
    again = _upload(client, admin, original).get_json()
    assert again["accepted"][0]["id"] == study_id and again["accepted"][0]["duplicate"] is True


def test_a_search_is_audited_without_its_terms(settings: Settings, account_factory: Callable[..., Account]) -> None:
    app, _ = make_app(settings, auth=False)
    client = app.test_client()
    admin = account_factory("admin")
    study_id = _upload(client, admin, _dicom(3)).get_json()["accepted"][0]["id"]
    mark_done(settings, study_id)
    for term in (SECRETS["PatientID"], "secretname"):
        csv = client.get(f"/api/v1/worklist.csv?q={term}&status=all&finding=", headers=admin.headers)
        assert csv.status_code == 200 and SECRETS["PatientID"] in csv.get_data(as_text=True)
    exports = [e for e in _events(settings) if e.action == "export"]
    assert len(exports) == 2 and all(e.study_id == study_id for e in exports)
    for event in _events(settings):
        rendered = repr(event.detail).lower()
        assert SECRETS["PatientID"].lower() not in rendered and "secretname" not in rendered, event.detail
    assert all(e.detail["filters"] == {"status": "all", "search": True} for e in exports), exports[0].detail


def test_polling_a_study_records_one_view(settings: Settings, account_factory: Callable[..., Account]) -> None:
    from datetime import timedelta

    from web.audit_hooks import VIEW_WINDOW

    app, _ = make_app(settings, auth=False)
    client = app.test_client()
    admin, radiologist = account_factory("admin"), account_factory("radiologist")
    study_id = _upload(client, admin, _dicom(4)).get_json()["accepted"][0]["id"]
    for _ in range(6):  # the study page polls its JSON every few seconds while the study is queued
        assert client.get(f"/api/v1/studies/{study_id}", headers=radiologist.headers).status_code == 200
    assert client.get(f"/studies/{study_id}", headers=radiologist.headers).status_code == 200
    assert client.get(f"/studies/{study_id}", headers=radiologist.headers).status_code == 200
    assert client.get(f"/api/v1/studies/{study_id}", headers=admin.headers).status_code == 200
    views = [(e.username, e.detail["endpoint"]) for e in _events(settings) if e.action == "view"]
    assert views == [(radiologist.username, "api.get_study"), (radiologist.username, "pages.study"),
                     (admin.username, "api.get_study")]
    # Once the window has passed, the next look is a new view.
    with session_for(settings) as session:
        for event in session.scalars(select(AuditEvent)):
            event.at = event.at - VIEW_WINDOW - timedelta(seconds=1)
        session.commit()
    assert client.get(f"/api/v1/studies/{study_id}", headers=radiologist.headers).status_code == 200
    assert len([e for e in _events(settings) if e.action == "view"]) == 4
