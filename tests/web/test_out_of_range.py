"""Out-of-range input is answered 400 or 404, never 500: 30-digit ids in every study and batch route,
`batch=`, `offset=`, cursors (huge ids, deep JSON), the widest dates, deeply nested JSON in a review.
A CSV export with a bad parameter is refused before it starts; one that fails mid-way ends with a
line saying it is incomplete and the transfer is cut (no clean end)."""

from __future__ import annotations

import base64
import csv
import json

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from shared.config import Settings
from shared.db import make_engine
from shared.models import Batch, StudyStatus
from tests.web.support import add_study, make_app, session_for
from web.export import INCOMPLETE_MARKER

HUGE = "9" * 30


@pytest.fixture
def app(settings: Settings) -> Flask:
    return make_app(settings)[0]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("method,url", [
    ("GET", f"/api/v1/studies/{HUGE}"), ("GET", f"/api/v1/studies/{HUGE}/export.json"),
    ("GET", f"/studies/{HUGE}"), ("GET", f"/studies/{HUGE}/image"), ("GET", f"/studies/{HUGE}/heatmaps/Mass.png"),
    ("GET", f"/api/v1/batches/{HUGE}"), ("GET", f"/api/v1/batches/{HUGE}.csv"), ("GET", f"/batches/{HUGE}"),
    ("POST", f"/api/v1/studies/{HUGE}/review"), ("POST", f"/api/v1/batches/{HUGE}/files"),
    ("GET", "/api/v1/studies/2147483648"),
])
def test_huge_ids_in_routes_are_not_found(client: FlaskClient, method: str, url: str) -> None:
    response = client.open(url, method=method, json={} if method == "POST" else None)
    assert response.status_code == 404, (url, response.status_code)


@pytest.mark.parametrize("query", [
    f"batch={HUGE}", f"offset={HUGE}", f"limit={HUGE}&offset={HUGE}",
    "after=" + _cursor(json.dumps({"d": None, "i": int(HUGE)})),
    "after=" + _cursor(json.dumps({"d": "2025-01-01T00:00:00+00:00", "i": -5})),
    "after=" + _cursor("[" * 100_000 + "]" * 100_000),
])
def test_out_of_range_worklist_parameters_are_bad_requests(client: FlaskClient, query: str) -> None:
    for url in (f"/api/v1/worklist?{query}", f"/api/v1/worklist.csv?{query}"):
        if url.startswith("/api/v1/worklist.csv") and ("after=" in query or "offset=" in query):
            continue  # the CSV export takes neither
        response = client.get(url)
        assert response.status_code == 400, (url, response.status_code)
        assert "Query parameter" in response.get_json()["error"]


def test_the_widest_dates_are_answered(client: FlaskClient) -> None:
    for url in ("/api/v1/worklist?status=all&from=0001-01-01&to=9999-12-31",
                "/api/v1/worklist.csv?status=all&from=0001-01-01&to=9999-12-31"):
        response = client.get(url)
        assert response.status_code == 200, url
        response.get_data()  # the stream runs to its end


def test_deeply_nested_json_in_a_review(client: FlaskClient, settings: Settings) -> None:
    with session_for(settings) as session:
        study = add_study(session, Batch())
        session.commit()
        study_id = study.id
    for body in ("[" * 100_000 + "]" * 100_000, '{"note": ' + "[" * 50_000 + "]" * 50_000 + "}"):
        response = client.post(f"/api/v1/studies/{study_id}/review", data=body, content_type="application/json")
        assert response.status_code == 400, response.status_code
        assert "nested" in response.get_json()["error"] or "object" in response.get_json()["error"]


def _chunks_until_failure(response) -> tuple[str, BaseException | None]:  # type: ignore[no-untyped-def]
    received: list[bytes] = []
    try:
        for chunk in response.response:
            received.append(chunk if isinstance(chunk, bytes) else chunk.encode())
    except Exception as exc:  # the server cuts the transfer: no clean end
        return b"".join(received).decode(), exc
    return b"".join(received).decode(), None


def test_a_csv_export_that_fails_midway_says_so(app: Flask, settings: Settings) -> None:
    with session_for(settings) as session:
        batch = Batch()
        for _ in range(700):  # more than one chunk of audit events (500)
            add_study(session, batch, status=StudyStatus.DONE.value)
        session.commit()
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:  # the audit log refuses the second chunk, as a full disk would
        conn.execute(text("CREATE TRIGGER refuse_late BEFORE INSERT ON audit_events WHEN NEW.study_id > 500 "
                          "BEGIN SELECT RAISE(ABORT, 'refused for the test'); END"))
    engine.dispose()
    response = app.test_client().get("/api/v1/worklist.csv?status=all", buffered=False)
    assert response.status_code == 200
    body, error = _chunks_until_failure(response)
    lines = body.splitlines()
    assert error is not None, "the transfer must not end cleanly"
    assert len(lines) == 1 + 500 + 1, len(lines)
    last = next(csv.reader([lines[-1]]))
    assert len(last) == 1 and last[0].startswith(INCOMPLETE_MARKER) and "500" in last[0]

    # A complete export has no such line.
    complete = app.test_client().get("/api/v1/worklist.csv?status=all&batch=999")
    assert complete.status_code == 200 and INCOMPLETE_MARKER not in complete.get_data(as_text=True)
