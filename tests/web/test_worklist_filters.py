"""Worklist filters (finding positive, status views, batch, upload dates, model_trained), search by
patient ID/name, accession or file name, and keyset pagination (cursor pages cover every study
exactly once, in due order, undated ones last) on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.config import Settings
from shared.models import Batch, Finding, Study, StudyStatus
from tests.web.support import add_study, make_app, session_for, utc


def _fixture(settings: Settings) -> dict[str, int]:
    with session_for(settings) as session:
        morning, evening = Batch(label="morning"), Batch(label="evening")
        session.add_all([morning, evening])
        ids: dict[str, int] = {}
        ids["ptx"] = add_study(session, morning, due_at=utc(8), name="ptx.dcm", format="dicom", patient_id="P-001",
                               patient_name="DOE^JANE", accession_number="ACC-100", model_trained=True,
                               created_at=datetime(2025, 1, 5, 23, 0, tzinfo=UTC)).id
        ids["normal"] = add_study(session, morning, due_at=utc(11), name="normal_50%.png", model_trained=False,
                                  created_at=datetime(2025, 1, 6, 7, 0, tzinfo=UTC)).id
        ids["reviewed"] = add_study(session, evening, due_at=utc(7), name="seen.png", model_trained=False,
                                    reviewed_at=utc(9), created_at=datetime(2025, 1, 6, 7, 0, tzinfo=UTC)).id
        ids["failed"] = add_study(session, evening, status=StudyStatus.FAILED.value, name="bad.png",
                                  error="could not decode", created_at=datetime(2025, 1, 7, 1, 0, tzinfo=UTC)).id
        ids["effusion"] = add_study(session, evening, due_at=utc(9), name="eff.png", model_trained=False,
                                    patient_id="P-002", created_at=datetime(2025, 1, 7, 2, 0, tzinfo=UTC)).id
        session.add(Finding(study_id=ids["ptx"], label="Pneumothorax", probability=0.9, threshold=0.4, positive=True))
        session.add(Finding(study_id=ids["effusion"], label="Effusion", probability=0.8, threshold=0.5, positive=True))
        session.add(Finding(study_id=ids["normal"], label="Effusion", probability=0.2, threshold=0.5, positive=False))
        ids["morning"], ids["evening"] = morning.id, evening.id
        session.commit()
        return ids


def _ids(client, query: str = "") -> list[int]:  # type: ignore[no-untyped-def]
    response = client.get(f"/api/v1/worklist?{query}")
    assert response.status_code == 200, response.get_json()
    return [s["id"] for s in response.get_json()["studies"]]


@pytest.fixture
def setup(settings: Settings):  # type: ignore[no-untyped-def]
    app, _ = make_app(settings)
    return app.test_client(), _fixture(settings)


def test_views_and_filters(setup) -> None:  # type: ignore[no-untyped-def]
    client, ids = setup
    assert _ids(client) == [ids["ptx"], ids["effusion"], ids["normal"]]  # open: done, not reviewed, due order
    assert _ids(client, "status=reviewed") == [ids["reviewed"]]
    assert _ids(client, "status=done") == [ids["reviewed"], ids["ptx"], ids["effusion"], ids["normal"]]
    assert _ids(client, "status=failed") == [ids["failed"]]
    assert _ids(client, "status=all")[-1] == ids["failed"]  # undated last
    assert _ids(client, "finding=Effusion") == [ids["effusion"]]  # positive only, not the normal one
    assert _ids(client, "finding=Pneumothorax") == [ids["ptx"]]
    assert _ids(client, f"batch={ids['morning']}") == [ids["ptx"], ids["normal"]]
    assert _ids(client, "model_trained=true") == [ids["ptx"]]
    assert _ids(client, "model_trained=false") == [ids["effusion"], ids["normal"]]
    assert _ids(client, "from=2025-01-06&to=2025-01-06") == [ids["normal"]]
    assert _ids(client, "from=2025-01-07&status=all") == [ids["effusion"], ids["failed"]]
    assert _ids(client, "to=2025-01-05") == [ids["ptx"]]


@pytest.mark.parametrize(("q", "expected"), [
    ("P-001", ["ptx"]), ("ACC-100", ["ptx"]), ("jane", ["ptx"]), ("doe^", ["ptx"]), ("P-002", ["effusion"]),
    ("normal_50%", ["normal"]), ("_x", []), ("l%5", []), ("P-00", []),  # IDs match exactly; wildcards are literal
])
def test_search(setup, q: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    client, ids = setup
    from urllib.parse import quote

    assert _ids(client, f"q={quote(q)}") == [ids[name] for name in expected]


@pytest.mark.parametrize("query", ["status=nope", "finding=Cancer", "batch=x", "from=2025-13-01",
                                   "from=2025-02-01&to=2025-01-01", "model_trained=maybe", "after=garbage"])
def test_bad_filters_are_400_naming_the_parameter(setup, query: str) -> None:  # type: ignore[no-untyped-def]
    client, _ = setup
    response = client.get(f"/api/v1/worklist?{query}")
    assert response.status_code == 400
    assert response.get_json()["error"]


def _fill(settings: Settings, n_dated: int, n_undated: int) -> list[int]:
    """Studies with many equal due times (ties broken by id) plus done studies without a due time."""
    with session_for(settings) as session:
        batch = Batch()
        session.add(batch)
        expected = []
        for i in range(n_dated):
            expected.append((utc(8) + timedelta(minutes=(i * 7) % 13), add_study(session, batch, due_at=None).id))
        rows = sorted(expected)
        for due, study_id in rows:
            session.get(Study, study_id).due_at = due  # type: ignore[union-attr]
        undated = [add_study(session, batch, due_at=None).id for _ in range(n_undated)]
        session.commit()
        return [study_id for _, study_id in rows] + undated


def _walk(client, limit: int, query: str = "") -> list[int]:  # type: ignore[no-untyped-def]
    seen: list[int] = []
    url = f"/api/v1/worklist?limit={limit}{query}"
    pages = 0
    while url:
        body = client.get(url).get_json()
        seen += [s["id"] for s in body["studies"]]
        url = body["next"]
        pages += 1
        assert pages < 100
    return seen


def _check_pagination(settings: Settings) -> None:
    app, _ = make_app(settings)
    client = app.test_client()
    expected = _fill(settings, 47, 6)
    for limit in (1, 7, 50, 53, 200):
        assert _walk(client, limit) == expected
    body = client.get("/api/v1/worklist?limit=10").get_json()
    assert body["total"] == 53 and body["next_cursor"]
    # offset still works and agrees with the cursor order
    assert [s["id"] for s in client.get("/api/v1/worklist?limit=10&offset=45").get_json()["studies"]] == expected[45:55]


def test_keyset_pagination_sqlite(settings: Settings) -> None:
    _check_pagination(settings)


@pytest.mark.postgres
def test_keyset_pagination_and_filters_postgres(settings: Settings, postgres_url: str) -> None:
    pg = settings.with_overrides(database_url=postgres_url)
    _check_pagination(pg)


@pytest.mark.postgres
def test_filters_postgres(settings: Settings, postgres_url: str) -> None:
    pg = settings.with_overrides(database_url=postgres_url)
    app, _ = make_app(pg)
    ids = _fixture(pg)
    client = app.test_client()
    assert _ids(client) == [ids["ptx"], ids["effusion"], ids["normal"]]
    assert _ids(client, "finding=Effusion") == [ids["effusion"]]
    assert _ids(client, "q=jane") == [ids["ptx"]]
    assert _ids(client, "from=2025-01-06&to=2025-01-06") == [ids["normal"]]
