"""JSON API reads: batch progress, study detail with findings, the worklist (order, pagination,
validation), and JSON errors on /api/ routes."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest

from shared.config import Settings
from shared.findings import FINDINGS
from shared.models import Batch, Finding, StudyStatus
from tests.web.support import add_study, make_app, session_for, utc


@pytest.fixture
def client_and_settings(settings: Settings):  # type: ignore[no-untyped-def]
    app, _ = make_app(settings)
    return app.test_client(), settings


def test_batch_counts_and_studies(client_and_settings) -> None:  # type: ignore[no-untyped-def]
    client, settings = client_and_settings
    with session_for(settings) as session:
        batch = Batch(label="morning")
        session.add(batch)
        for status in ("queued", "queued", "processing", "done", "failed"):
            add_study(session, batch, status=status, name=f"{status}.png",
                      error="the image could not be decoded" if status == "failed" else None)
        session.commit()
        batch_id = batch.id
    body = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert body["counts"] == {"queued": 2, "processing": 1, "done": 1, "failed": 1, "total": 5}
    assert body["complete"] is False and body["label"] == "morning"
    assert [s["status"] for s in body["studies"]] == ["queued", "queued", "processing", "done", "failed"]
    assert body["studies"][4]["error"] == "the image could not be decoded"
    assert body["studies"][0]["url"] == f"/api/v1/studies/{body['studies'][0]['id']}"


def test_study_json_shape_with_findings(client_and_settings) -> None:  # type: ignore[no-untyped-def]
    client, settings = client_and_settings
    with session_for(settings) as session:
        batch = Batch()
        session.add(batch)
        study = add_study(
            session, batch, due_at=utc(9), urgency=0.9, model_version="abc123", model_trained=False,
            timings={"decode": 6.1, "forward": 90.5}, format="dicom", patient_id="P1",
            patient_name="DOE^JANE", accession_number="ACC9", modality="CR", view_position="PA",
            body_part="CHEST", study_date="20250106", study_instance_uid="1.2.3",
        )
        # Inserted in reverse order: the API returns them in canonical order.
        for index, label in reversed(list(enumerate(FINDINGS))):
            session.add(Finding(
                study=study, label=label, probability=index / 20, threshold=0.3,
                positive=index / 20 >= 0.3,
                heatmap_path=f"heatmaps/{study.id}/{label}.png" if label == "Edema" else None,
                **({"box_x": 10, "box_y": 20, "box_w": 300, "box_h": 400} if label == "Edema" else {}),
            ))
        session.commit()
        study_id = study.id
    body = client.get(f"/api/v1/studies/{study_id}").get_json()
    assert body["status"] == "done" and body["error"] is None
    assert body["model_version"] == "abc123" and body["model_trained"] is False
    assert body["timings_ms"] == {"decode": 6.1, "forward": 90.5}
    assert body["due_at"] == "2025-01-06T09:00:00+00:00"
    assert body["image_url"] == f"/studies/{study_id}/image"
    assert body["dicom"] == {
        "patient_id": "P1", "patient_name": "DOE^JANE", "study_instance_uid": "1.2.3",
        "accession_number": "ACC9", "study_date": "20250106", "modality": "CR",
        "view_position": "PA", "body_part_examined": "CHEST",
    }
    findings = body["findings"]
    assert [f["label"] for f in findings] == list(FINDINGS)
    edema = findings[FINDINGS.index("Edema")]
    assert set(edema) >= {"label", "probability", "threshold", "positive", "heatmap_url", "box"}
    assert edema["probability"] == pytest.approx(3 / 20) and edema["threshold"] == 0.3
    assert edema["positive"] is False
    assert edema["heatmap_url"] == f"/studies/{study_id}/heatmaps/Edema.png"
    assert edema["box"] == {"x": 10, "y": 20, "width": 300, "height": 400}
    hernia = findings[FINDINGS.index("Hernia")]
    assert hernia["heatmap_url"] is None and hernia["box"] is None
    assert findings[FINDINGS.index("Pneumothorax")]["positive"] is True


def test_png_study_has_no_dicom_block(client_and_settings) -> None:  # type: ignore[no-untyped-def]
    client, settings = client_and_settings
    with session_for(settings) as session:
        batch = Batch()
        session.add(batch)
        study = add_study(session, batch, status="queued")
        session.commit()
        study_id = study.id
    body = client.get(f"/api/v1/studies/{study_id}").get_json()
    assert body["dicom"] is None and body["findings"] == [] and body["status"] == "queued"


def _worklist_fixture(settings: Settings) -> list[int]:
    """Done studies with due times out of insertion order, a tie, and studies not yet done."""
    with session_for(settings) as session:
        batch = Batch()
        session.add(batch)
        late = add_study(session, batch, due_at=utc(12), name="late.png")
        tie_b = add_study(session, batch, due_at=utc(8), name="tie-b.png")
        urgent = add_study(session, batch, due_at=utc(7), name="urgent.png")
        tie_a = add_study(session, batch, due_at=utc(8), name="tie-a.png")
        add_study(session, batch, status=StudyStatus.QUEUED.value, due_at=utc(1))
        add_study(session, batch, status=StudyStatus.FAILED.value, due_at=utc(1))
        add_study(session, batch, status=StudyStatus.PROCESSING.value, due_at=utc(1))
        session.add(Finding(study=urgent, label="Pneumothorax", probability=0.9, threshold=0.4, positive=True))
        session.add(Finding(study=urgent, label="Effusion", probability=0.95, threshold=0.5, positive=True))
        session.add(Finding(study=urgent, label="Mass", probability=0.1, threshold=0.5, positive=False))
        session.commit()
        return [urgent.id, tie_b.id, tie_a.id, late.id]


def test_worklist_orders_done_studies_by_due_at_then_id(client_and_settings) -> None:  # type: ignore[no-untyped-def]
    client, settings = client_and_settings
    expected = _worklist_fixture(settings)
    body = client.get("/api/v1/worklist").get_json()
    assert body["total"] == 4 and body["limit"] == 50 and body["offset"] == 0
    assert [s["id"] for s in body["studies"]] == expected
    first = body["studies"][0]
    assert [p["label"] for p in first["positives"]] == ["Effusion", "Pneumothorax"]  # most probable first
    assert body["studies"][1]["positives"] == []


def test_worklist_pagination(client_and_settings) -> None:  # type: ignore[no-untyped-def]
    client, settings = client_and_settings
    expected = _worklist_fixture(settings)
    pages = [client.get(f"/api/v1/worklist?limit=3&offset={o}").get_json() for o in (0, 3, 6)]
    assert [[s["id"] for s in p["studies"]] for p in pages] == [expected[:3], expected[3:], []]
    assert all(p["total"] == 4 for p in pages)


def test_worklist_limit_is_capped(client_and_settings) -> None:  # type: ignore[no-untyped-def]
    client, settings = client_and_settings
    with session_for(settings) as session:
        batch = Batch()
        session.add(batch)
        for i in range(205):
            add_study(session, batch, due_at=utc(0) + timedelta(minutes=i))
        session.commit()
    body = client.get("/api/v1/worklist?limit=1000").get_json()
    assert body["limit"] == 200 and len(body["studies"]) == 200 and body["total"] == 205


@pytest.mark.parametrize("query", ["limit=abc", "limit=0", "limit=-5", "offset=-1", "offset=1.5", "limit=2e3"])
def test_worklist_bad_query_is_400(client_and_settings, query: str) -> None:  # type: ignore[no-untyped-def]
    client, _ = client_and_settings
    response = client.get(f"/api/v1/worklist?{query}")
    assert response.status_code == 400
    name = query.split("=")[0]
    assert f"'{name}'" in response.get_json()["error"]


@pytest.mark.parametrize(("method", "url", "status"), [
    ("get", "/api/v1/studies/999", 404),
    ("get", "/api/v1/batches/999", 404),
    ("get", "/api/v1/no-such-thing", 404),
    ("delete", "/api/v1/worklist", 405),
    ("put", "/api/v1/batches", 405),
])
def test_api_errors_are_json(client_and_settings, method: str, url: str, status: int) -> None:  # type: ignore[no-untyped-def]
    client, _ = client_and_settings
    response = getattr(client, method)(url)
    assert response.status_code == status
    assert response.is_json and isinstance(response.get_json()["error"], str)


def test_unexpected_error_is_json_500(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import web.api

    app, _ = make_app(settings)

    def broken(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("internal detail that must not leak")

    monkeypatch.setattr(web.api, "worklist", broken)
    response = app.test_client().get("/api/v1/worklist")
    assert response.status_code == 500
    assert "internal detail" not in response.get_json()["error"]


def test_a_study_that_is_not_a_frontal_chest_x_ray_says_so_everywhere(client_and_settings) -> None:  # type: ignore[no-untyped-def]
    client, settings = client_and_settings
    reason = "the DICOM modality is CT (computed tomography), not a radiograph"
    with session_for(settings) as session:
        batch = Batch()
        session.add(batch)
        flagged = add_study(session, batch, due_at=utc(9), urgency=0.0, not_frontal=True, not_frontal_reason=reason,
                            name="slice.dcm")
        fine = add_study(session, batch, due_at=utc(10), urgency=0.4, not_frontal=False, name="chest.png")
        for study in (flagged, fine):
            for label in FINDINGS:
                session.add(Finding(study=study, label=label, probability=0.9, threshold=0.5, positive=True))
        session.commit()
        ids = flagged.id, fine.id
    body = client.get(f"/api/v1/studies/{ids[0]}").get_json()
    assert body["frontal_check"] == {"flagged": True, "reason": reason,
                                     "label": "not a frontal chest X-ray: findings unreliable"}
    assert body["summary"].startswith(f"The image does not look like a frontal chest X-ray ({reason})")
    assert client.get(f"/api/v1/studies/{ids[1]}").get_json()["frontal_check"]["flagged"] is False
    items = {s["id"]: s for s in client.get("/api/v1/worklist").get_json()["studies"]}
    assert items[ids[0]]["not_frontal"] is True and items[ids[0]]["not_frontal_reason"] == reason
    assert items[ids[1]]["not_frontal"] is False
    page = client.get(f"/studies/{ids[0]}").get_data(as_text=True)
    assert "Not a frontal chest X-ray: findings unreliable." in page and reason in page
    assert "Not a frontal chest X-ray" not in client.get(f"/studies/{ids[1]}").get_data(as_text=True)
    exported = list(csv.DictReader(io.StringIO(client.get("/api/v1/worklist.csv").get_data(as_text=True))))
    flags = {int(row["study_id"]): row["not_frontal"] for row in exported}
    assert flags == {ids[0]: "true", ids[1]: "false"}
