"""Review: POST /api/v1/studies/<id>/review records who/when/note/per-finding verdicts in a Review row
(audit, never overwritten), takes the study off the open worklist (visible with status=reviewed),
and refuses bad input (400), unknown studies (404) and studies not done (409)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from shared.config import Settings
from shared.models import Batch, Review, Study
from tests.web.support import add_study, make_app, session_for, utc


@pytest.fixture
def client_ids(settings: Settings):  # type: ignore[no-untyped-def]
    app, _ = make_app(settings)
    with session_for(settings) as session:
        batch = Batch()
        session.add(batch)
        done = add_study(session, batch, due_at=utc(8)).id
        other = add_study(session, batch, due_at=utc(9)).id
        queued = add_study(session, batch, status="queued").id
        session.commit()
    client = app.test_client()
    client.reviewer = app.config["TEST_ACCOUNT"].username  # type: ignore[attr-defined]
    return client, settings, done, other, queued


def test_review_is_recorded_and_takes_the_study_off_the_worklist(client_ids) -> None:  # type: ignore[no-untyped-def]
    client, settings, done, other, _ = client_ids
    assert [s["id"] for s in client.get("/api/v1/worklist").get_json()["studies"]] == [done, other]
    response = client.post(f"/api/v1/studies/{done}/review", json={
        "reviewer": "Dr Okafor", "note": "Small left effusion; no pneumothorax.",
        "verdicts": {"Effusion": "agree", "Pneumothorax": "disagree"},
    })
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    # The reviewer is the logged-in account, not what the client claims.
    reviewer = client.reviewer
    assert body["reviewer"] == reviewer and body["verdicts"] == {"Effusion": "agree", "Pneumothorax": "disagree"}
    assert [s["id"] for s in client.get("/api/v1/worklist").get_json()["studies"]] == [other]
    assert [s["id"] for s in client.get("/api/v1/worklist?status=reviewed").get_json()["studies"]] == [done]
    # A second review adds to the trail; nothing is overwritten.
    assert client.post(f"/api/v1/studies/{done}/review", json={}).status_code == 201
    detail = client.get(f"/api/v1/studies/{done}").get_json()
    assert detail["reviewed_at"] is not None and detail["status"] == "done"
    assert [(r["reviewer"], r["note"]) for r in detail["reviews"]] == [
        (reviewer, "Small left effusion; no pneumothorax."), (reviewer, None)]
    with session_for(settings) as session:
        rows = list(session.scalars(select(Review).order_by(Review.id)))
        assert [r.study_id for r in rows] == [done, done] and rows[0].created_at is not None
        assert session.get(Study, done).reviewed_at is not None  # type: ignore[union-attr]


def test_review_from_the_page_form(client_ids) -> None:  # type: ignore[no-untyped-def]
    client, _, done, _, _ = client_ids
    response = client.post(f"/api/v1/studies/{done}/review",
                           data={"note": "ok", "verdict_Mass": "agree", "verdict_Edema": ""})
    assert response.status_code == 201 and response.get_json()["verdicts"] == {"Mass": "agree"}
    html = client.get(f"/studies/{done}").get_data(as_text=True)
    assert 'id="review-form"' in html and "Mass: agree" in html


@pytest.mark.parametrize(("body", "fragment"), [
    ({"verdicts": {"Cancer": "agree"}}, "Unknown finding"),
    ({"verdicts": {"Mass": "maybe"}}, "agree"),
    ({"verdicts": ["Mass"]}, "verdicts"),
    ({"note": "x" * 5001}, "longer than"),
    ({"reviewer": 5}, "text"),
])
def test_bad_review_is_400(client_ids, body: dict, fragment: str) -> None:  # type: ignore[no-untyped-def, type-arg]
    client, settings, done, _, _ = client_ids
    response = client.post(f"/api/v1/studies/{done}/review", json=body)
    assert response.status_code == 400 and fragment in response.get_json()["error"]
    with session_for(settings) as session:
        assert session.get(Study, done).reviewed_at is None  # type: ignore[union-attr]


def test_review_of_missing_or_unfinished_study(client_ids) -> None:  # type: ignore[no-untyped-def]
    client, _, _, _, queued = client_ids
    assert client.post("/api/v1/studies/9999/review", json={}).status_code == 404
    response = client.post(f"/api/v1/studies/{queued}/review", json={})
    assert response.status_code == 409 and "queued" in response.get_json()["error"]


def test_cross_site_review_is_refused(client_ids) -> None:  # type: ignore[no-untyped-def]
    client, _, done, _, _ = client_ids
    response = client.post(f"/api/v1/studies/{done}/review", json={}, headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
