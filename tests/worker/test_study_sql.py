"""worker/study_sql.py: the worker's claim and record on the driver's connection store exactly what
SQLAlchemy's own execution stores, on SQLite and PostgreSQL, and fail the way it fails."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError, ProgrammingError

import worker.processing as processing
from migrations import upgrade
from shared.db import make_engine, make_session_factory, session_scope
from shared.models import Batch, Finding, Study
from worker.study_sql import StudySql, study_sql


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'x.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _studies(engine: Engine, count: int) -> list[int]:
    with session_scope(make_session_factory(engine)) as session:
        studies = [Study(batch=Batch(label="sql"), original_filename=f"{i}.png", format="png", size_bytes=1,
                         sha256=hashlib.sha256(b"%d" % i).hexdigest(), stored_path=f"originals/{i}.png")
                   for i in range(count)]
        session.add_all(studies)
        session.flush()
        return [s.id for s in studies]


def _row(engine: Engine, study_id: int) -> tuple[dict[str, object], list[tuple[object, ...]]]:
    with session_scope(make_session_factory(engine)) as session:
        study = session.get(Study, study_id)
        assert study is not None
        own = ("id", "batch_id", "original_filename", "sha256", "stored_path", "created_at")
        row = {c.name: getattr(study, c.name) for c in Study.__table__.columns if c.name not in own}
        query = select(Finding).where(Finding.study_id == study_id).order_by(Finding.label)
        findings = [(f.label, f.probability, f.threshold, f.positive, f.heatmap_path, f.box_x, f.box_y, f.box_w,
                     f.box_h) for f in session.scalars(query)]
    return row, findings


def test_claim_and_record_store_what_sqlalchemy_stores(engine: Engine) -> None:
    ours, theirs = _studies(engine, 2)
    at = datetime(2026, 12, 3, 9, 30, 15, 123456, tzinfo=UTC)
    record = {"model_version": "fda271d5837bacd3", "model_trained": True, "width": 1024, "height": 1000,
              "timings": {"decode": 2.5, "forward": 31.75}, "urgency": 0.625, "due_at": at + timedelta(minutes=90),
              "finished_at": at}
    findings = [{"label": label, "probability": p, "threshold": 0.5, "positive": p >= 0.5,
                 "heatmap_path": "heatmaps/00000/1.png", "box_x": 3 if box else None, "box_y": 4 if box else None,
                 "box_w": 50 if box else None, "box_h": 60 if box else None}
                for label, p, box in (("Mass", 0.75, True), ("Nodule", 0.125, False))]
    sql = study_sql(engine, processing._STATEMENTS)
    assert study_sql(engine, processing._STATEMENTS) is sql  # compiled once per engine

    with sql.transaction() as cursor:
        claimed = sql.execute(cursor, "claim", {"study_id": ours, "max_attempts": 3, "at": at}).fetchall()
    with sql.transaction() as cursor:
        assert sql.execute(cursor, "record", {"study_id": ours, **record}).rowcount == 1
        sql.executemany(cursor, "insert_findings", [{"study_id": ours, **f} for f in findings])

    with engine.begin() as connection:  # the same statements through SQLAlchemy
        expected = connection.execute(processing._CLAIM, {"study_id": theirs, "max_attempts": 3, "at": at}).all()
        assert connection.execute(processing._RECORD, {"study_id": theirs, **record}).rowcount == 1
        connection.execute(processing._INSERT_FINDINGS, [{"study_id": theirs, **f} for f in findings])

    assert [tuple(r) for r in claimed] == [("originals/0.png", 1)]
    assert [tuple(r) for r in expected] == [("originals/1.png", 1)]
    assert _row(engine, ours) == _row(engine, theirs)
    row, stored = _row(engine, ours)
    assert row["status"] == "done" and row["timings"] == record["timings"] and row["attempts"] == 1
    assert row["due_at"].replace(tzinfo=UTC) == record["due_at"]  # type: ignore[attr-defined]
    assert stored[0] == ("Mass", 0.75, 0.5, True, "heatmaps/00000/1.png", 3, 4, 50, 60)
    assert stored[1][3] is False and stored[1][5:] == (None, None, None, None)

    with sql.transaction() as cursor:  # a finished study is neither claimed nor recorded again
        assert sql.execute(cursor, "claim", {"study_id": ours, "max_attempts": 3, "at": at}).fetchall() == []
        assert sql.execute(cursor, "record", {"study_id": ours, **record}).rowcount == 0


def test_errors_are_sqlalchemys_and_the_transaction_is_rolled_back(engine: Engine) -> None:
    (study_id,) = _studies(engine, 1)
    at = datetime(2026, 12, 3, tzinfo=UTC)
    sql = StudySql(engine, processing._STATEMENTS)
    with pytest.raises((OperationalError, ProgrammingError)), sql.transaction() as cursor:
        sql.execute(cursor, "claim", {"study_id": study_id, "max_attempts": 3, "at": at})
        cursor.execute("SELECT * FROM no_such_table")
    assert _row(engine, study_id)[0]["status"] == "queued"  # the claim was rolled back
    with sql.transaction() as cursor:  # and the pool's connection is usable again
        assert len(sql.execute(cursor, "claim", {"study_id": study_id, "max_attempts": 3, "at": at}).fetchall()) == 1


def test_a_database_that_cannot_be_opened_is_an_operational_error(tmp_path: Path) -> None:
    (tmp_path / "a-folder").mkdir()
    engine = make_engine(f"sqlite:///{tmp_path / 'a-folder'}")
    with pytest.raises(OperationalError), StudySql(engine, processing._STATEMENTS).transaction():
        pass
    engine.dispose()
