"""Export: the worklist (with its filters) and a batch as CSV, formula injection neutralised; a
study's result as a JSON attachment."""

from __future__ import annotations

import csv
import io
import json

import pytest

from shared.config import Settings
from shared.findings import FINDINGS
from shared.models import Batch, Finding
from tests.web.support import add_study, make_app, session_for, utc
from web.export import safe_cell


@pytest.mark.parametrize(("value", "expected"), [
    ("=HYPERLINK(\"http://evil\")", "'=HYPERLINK(\"http://evil\")"), ("+1+1", "'+1+1"), ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\t=1", "'\t'=1"), ("a;=1", "a;'=1"), ("a, -1", "a, '-1"), (" =1", "' =1"),
    ("DOE^JANE", "DOE^JANE"), (-0.5, -0.5), (3, 3),
    (None, ""), (True, "true"),
])
def test_safe_cell(value: object, expected: object) -> None:
    assert safe_cell(value) == expected


@pytest.fixture
def exported(settings: Settings):  # type: ignore[no-untyped-def]
    app, _ = make_app(settings)
    with session_for(settings) as session:
        batch = Batch(label="=cmd|' /C calc'!A0")
        session.add(batch)
        evil = add_study(session, batch, due_at=utc(8), name="=cmd|' /C calc'!A0.png", format="dicom",
                         patient_name="@SUM(1+1)*cmd", patient_id="-P1", model_version="v1", model_trained=False,
                         urgency=0.85)
        plain = add_study(session, batch, due_at=utc(9), name="plain.png")
        failed = add_study(session, batch, status="failed", name="bad.png", error="+ not an image")
        for label in FINDINGS:
            session.add(Finding(study=evil, label=label, probability=0.9 if label == "Edema" else 0.1,
                                threshold=0.5, positive=label == "Edema"))
        session.commit()
        ids = (batch.id, evil.id, plain.id, failed.id)
    return app.test_client(), ids


def _rows(response) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


def test_worklist_csv_with_filters_and_no_formulas(exported) -> None:  # type: ignore[no-untyped-def]
    client, (_, evil, plain, _) = exported
    rows = _rows(client.get("/api/v1/worklist.csv"))
    assert [int(r["study_id"]) for r in rows] == [evil, plain]
    first = rows[0]
    assert first["filename"] == "'=cmd|' /C calc'!A0.png"
    assert first["patient_name"] == "'@SUM(1+1)*cmd" and first["patient_id"] == "'-P1"
    assert first["positive_findings"] == "Edema 0.900" and first["p_Edema"] == "0.9"
    assert first["model_trained"] == "false" and first["urgency"] == "0.85"
    assert "fluid in the lungs (pulmonary edema)" in first["summary"] and "an aid, not a diagnosis" in first["summary"]
    assert rows[1]["summary"] == ""  # no findings stored: no summary
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), value
    assert [int(r["study_id"]) for r in _rows(client.get("/api/v1/worklist.csv?finding=Edema"))] == [evil]
    assert client.get("/api/v1/worklist.csv?finding=Nope").status_code == 400


def test_batch_csv_includes_failed_with_reason(exported) -> None:  # type: ignore[no-untyped-def]
    client, (batch_id, evil, plain, failed) = exported
    rows = _rows(client.get(f"/api/v1/batches/{batch_id}.csv"))
    assert [int(r["study_id"]) for r in rows] == [evil, plain, failed]
    assert rows[2]["status"] == "failed" and rows[2]["error"] == "'+ not an image"
    assert client.get("/api/v1/batches/999.csv").status_code == 404


def test_study_json_export(exported) -> None:  # type: ignore[no-untyped-def]
    client, (_, evil, _, _) = exported
    client.post(f"/api/v1/studies/{evil}/review", json={"note": "seen", "verdicts": {"Edema": "agree"}})
    response = client.get(f"/api/v1/studies/{evil}/export.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.headers["Content-Disposition"] == f'attachment; filename="study-{evil}.json"'
    body = json.loads(response.get_data(as_text=True))
    assert body["id"] == evil and body["model_version"] == "v1" and body["model_trained"] is False
    assert [f["label"] for f in body["findings"]] == list(FINDINGS)
    assert body["reviews"][0]["verdicts"] == {"Edema": "agree"} and body["reviewed_at"]
    assert body["summary"].startswith("Warning: the software that produced these results is untrained")
    assert "fluid in the lungs (pulmonary edema)" in body["summary"]
    assert client.get("/api/v1/studies/999/export.json").status_code == 404


def test_large_worklist_csv_streams_every_row(settings: Settings) -> None:
    app, _ = make_app(settings)
    with session_for(settings) as session:
        batch = Batch()
        session.add(batch)
        for i in range(1203):
            add_study(session, batch, due_at=utc(0) if i % 2 else None, name=f"{i}.png")
        session.commit()
    rows = _rows(app.test_client().get("/api/v1/worklist.csv?status=all"))
    assert len(rows) == 1203 and len({r["study_id"] for r in rows}) == 1203


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_no_cell_starts_a_formula_whatever_the_spreadsheet_splits_on(settings: Settings, delimiter: str) -> None:
    """A spreadsheet set to `;` (or tab) splits a comma CSV inside text cells: no piece may begin a formula."""
    app, _ = make_app(settings)
    nasty = ["Doe;=HYPERLINK(\"http://evil\")", "a,+1+1", "b\t@SUM(A1)", "c\n-2+3", "d; =1", " =2",
             "e\"; =3", "f\r\n@4"]
    with session_for(settings) as session:
        batch = Batch(label="x")
        session.add(batch)
        for i, text in enumerate(nasty):
            add_study(session, batch, due_at=utc(8, i), name=f"{text}.png", patient_name=text, patient_id=text,
                      error=text)
        session.commit()
    body = app.test_client().get("/api/v1/worklist.csv?status=all").get_data(as_text=True)
    # Read as a spreadsheet that ignores quotes would: split lines and cells on the delimiter.
    for line in body.replace("\r", "\n").split("\n"):
        for cell in line.split(delimiter):
            assert not cell.lstrip(" \"").startswith(("=", "+", "-", "@")), (delimiter, cell)
    # And a reader that honours quotes gets every value back, neutralised but whole.
    rows = list(csv.DictReader(io.StringIO(body)))
    assert len(rows) == len(nasty)
    assert rows[0]["patient_name"] == "Doe;'=HYPERLINK(\"http://evil\")"
