"""The result downloads: GET /api/v1/studies/<id>/sr.dcm, /overlay.dcm and /fhir. A real X-ray is
uploaded through the API (as DICOM and as PNG), then given the findings and CAM sheet a worker writes
(without TensorFlow: the encoders themselves are tested on model output in tests/shared/test_results.py)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from flask.testing import FlaskClient
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage
from sqlalchemy import select

from shared.config import Settings
from shared.findings import FINDINGS
from shared.gradcam import cam_sheet_png
from shared.models import AuditEvent, Finding, Study
from shared.storage import LocalStorage
from tests.conftest import Account
from tests.dicom_factory import dicom_from_png
from tests.web.support import make_app, session_for, upload

ROUTES = {"sr.dcm": "application/dicom", "overlay.dcm": "application/dicom", "fhir": "application/fhir+json"}


def finish(settings: Settings, study_id: int, positive: tuple[str, ...] = ("Effusion", "Mass")) -> None:
    """Record the study as a worker would: 14 findings, boxes on the positive ones, one CAM sheet, done."""
    rng = np.random.default_rng(study_id)
    sheet = cam_sheet_png({label: rng.random((7, 7)) for label in FINDINGS})
    storage = LocalStorage(settings.storage_dir)
    with session_for(settings) as session:
        study = session.get(Study, study_id)
        assert study is not None
        path = storage.put_cam_sheet(study_id, sheet)
        for index, label in enumerate(FINDINGS):
            box = {"box_x": 100 + index, "box_y": 200, "box_w": 300, "box_h": 250} if label in positive else {}
            session.add(Finding(study_id=study_id, label=label, probability=0.9 if label in positive else 0.1,
                                threshold=0.5, positive=label in positive, heatmap_path=path, **box))
        moment = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
        study.status, study.model_version, study.model_trained = "done", "0123456789abcdef", False
        study.model_runtime, study.finished_at = "tensorflow-f32", moment
        session.commit()


@pytest.fixture
def app_and_studies(settings: Settings, nih_full_images: list[Path]):  # type: ignore[no-untyped-def]
    app, _ = make_app(settings)
    client = app.test_client()
    png = nih_full_images[0]
    response = upload(client, [(dicom_from_png(png, window="full"), "a.dcm"), (png.read_bytes(), "b.png")])
    assert response.status_code == 201, response.get_json()
    dicom_id, png_id = (item["id"] for item in response.get_json()["accepted"])
    finish(settings, dicom_id)
    finish(settings, png_id)
    return app, dicom_id, png_id


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_done_study_results_download(app_and_studies, route: str) -> None:  # type: ignore[no-untyped-def]
    app, dicom_id, png_id = app_and_studies
    client = app.test_client()
    for study_id in (dicom_id, png_id):
        response = client.get(f"/api/v1/studies/{study_id}/{route}")
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.mimetype == ROUTES[route]
        assert response.cache_control.private
        if route == "fhir":
            body = json.loads(response.get_data())
            report = DiagnosticReport.model_validate(body)
            assert len(report.result or []) == 14
            positives = [o for o in body["contained"] if o.get("interpretation", [{}])[0].get("coding", [{}])[0]
                         .get("code") == "POS"]
            assert sorted(o["code"]["coding"][0]["code"] for o in positives) == ["Effusion", "Mass"]
        else:
            assert response.headers["Content-Disposition"] == f'attachment; filename="study-{study_id}-{route}"'
            dataset = pydicom.dcmread(io.BytesIO(response.get_data()))
            expected = ComprehensiveSRStorage if route == "sr.dcm" else SecondaryCaptureImageStorage
            assert dataset.SOPClassUID == expected
        # Deterministic rendering: the ETag names the object; a revalidation costs nothing.
        again = client.get(f"/api/v1/studies/{study_id}/{route}", headers={"If-None-Match": response.headers["ETag"]})
        assert again.status_code == 304 and again.get_data() == b""


def test_results_only_for_done_studies(settings: Settings, nih_full_images: list[Path]) -> None:
    app, _ = make_app(settings)
    client = app.test_client()
    response = upload(client, [(nih_full_images[1].read_bytes(), "c.png")])
    study_id = response.get_json()["accepted"][0]["id"]
    for route in ROUTES:
        queued = client.get(f"/api/v1/studies/{study_id}/{route}")
        assert queued.status_code == 404
        assert queued.get_json()["error"] == f"Study {study_id} is queued: results exist only for done studies."
        missing = client.get(f"/api/v1/studies/999999/{route}")
        assert missing.status_code == 404 and missing.get_json()["error"] == "Study 999999 does not exist."


def test_results_need_read_access_and_are_audited_as_exports(
        app_and_studies, settings: Settings, account_factory: Callable[..., Account]) -> None:  # type: ignore[no-untyped-def]
    app, dicom_id, _ = app_and_studies
    uploader, radiologist = account_factory("uploader"), account_factory("radiologist")
    client = app.test_client()
    for route in ROUTES:
        url = f"/api/v1/studies/{dicom_id}/{route}"
        anonymous = FlaskClient(app)  # no token
        assert anonymous.get(url).status_code == 401
        assert client.get(url, headers=uploader.headers).status_code == 403
        assert client.get(url, headers=radiologist.headers).status_code == 200
    with session_for(settings) as session:
        events = list(session.scalars(select(AuditEvent).where(AuditEvent.study_id == dicom_id)
                                      .where(AuditEvent.action == "export")))
    assert sorted(event.detail["endpoint"] for event in events) == [
        "results.fhir", "results.overlay", "results.structured_report"]


def test_study_json_and_page_show_results_and_deliveries(app_and_studies, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from shared.models import Delivery

    app, dicom_id, _ = app_and_studies
    with session_for(settings) as session:
        session.add_all([
            Delivery(study_id=dicom_id, destination="PACS@10.0.0.5:104", status="sent", attempts=2,
                     sent_at=datetime(2026, 1, 5, 9, 31, tzinfo=UTC)),
            Delivery(study_id=dicom_id, destination="BACKUP@10.0.0.6:104", status="pending", attempts=1,
                     error="BACKUP@10.0.0.6:104 could not be reached"),
        ])
        session.commit()
    client = app.test_client()
    body = client.get(f"/api/v1/studies/{dicom_id}").get_json()
    assert body["results"] == {"dicom_sr": f"/api/v1/studies/{dicom_id}/sr.dcm",
                               "dicom_overlay": f"/api/v1/studies/{dicom_id}/overlay.dcm",
                               "fhir": f"/api/v1/studies/{dicom_id}/fhir"}
    assert [(d["destination"], d["status"], d["attempts"], d["error"]) for d in body["deliveries"]] == [
        ("PACS@10.0.0.5:104", "sent", 2, None),
        ("BACKUP@10.0.0.6:104", "pending", 1, "BACKUP@10.0.0.6:104 could not be reached")]
    assert body["deliveries"][0]["sent_at"] == "2026-01-05T09:31:00+00:00"
    page = client.get(f"/studies/{dicom_id}").get_data(as_text=True)
    assert f'href="/api/v1/studies/{dicom_id}/sr.dcm"' in page and "Sent to PACS" in page
    assert "BACKUP@10.0.0.6:104 could not be reached" in page


def test_missing_original_is_a_clear_404(app_and_studies, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    app, dicom_id, png_id = app_and_studies
    with session_for(settings) as session:
        for study_id in (dicom_id, png_id):
            study = session.get(Study, study_id)
            assert study is not None
            LocalStorage(settings.storage_dir).path(study.stored_path).unlink()
    client = app.test_client()
    for study_id, route in ((dicom_id, "sr.dcm"), (dicom_id, "fhir"), (png_id, "overlay.dcm")):
        response = client.get(f"/api/v1/studies/{study_id}/{route}")
        assert response.status_code == 404
        assert response.get_json()["error"] == f"A file of study {study_id} is missing from the server's storage."
