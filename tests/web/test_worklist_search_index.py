"""The worklist's search by part of a patient name or file name is answered from the trigram indexes of
migration 0008 on PostgreSQL (not a scan of the table), finds the same rows as before, and a database
without pg_trgm still gets its tables from the ORM."""

from __future__ import annotations

import pytest
from sqlalchemy import Select, create_engine, func, select, text

from bench.worklist import fill
from migrations import current, head, upgrade
from shared.db import make_engine, make_session_factory
from shared.models import Base, Study
from web.worklist import WorklistFilter, conditions, count, page_after

pytestmark = pytest.mark.postgres


def _plan(url: str, statement: Select) -> str:  # type: ignore[type-arg]
    """The plan of `statement` with sequential scans priced out: whether an index *can* answer it (the
    planner's own choice at a hospital's volume is measured by bench.worklist, docs/BENCHMARKS.md)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            compiled = statement.compile(dialect=conn.dialect)
            conn.exec_driver_sql("SET enable_seqscan = off")
            return "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params))
    finally:
        engine.dispose()


def test_search_by_part_of_a_name_uses_the_trigram_indexes(postgres_url: str) -> None:
    upgrade(postgres_url)
    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        indexes = {row[0]: row[1] for row in conn.execute(text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'studies' AND indexname LIKE '%trgm'"))}
    engine.dispose()
    assert set(indexes) == {"ix_studies_patient_name_trgm", "ix_studies_filename_trgm"}
    assert all("gin" in d and "gin_trgm_ops" in d and "lower(" in d for d in indexes.values()), indexes
    fill(postgres_url, 5_000)

    search = WorklistFilter(status="all", q="img_0049")
    plan = _plan(postgres_url, select(func.count()).select_from(Study).where(*conditions(search)))
    assert "Bitmap Index Scan on ix_studies_filename_trgm" in plan, plan
    assert "Bitmap Index Scan on ix_studies_patient_name_trgm" in plan, plan
    assert "Seq Scan" not in plan, plan

    session = make_session_factory(make_engine(postgres_url))()
    try:
        assert count(session, search) == 100  # img_004900 .. img_004999
        by_name = WorklistFilter(status="all", q="doe^patient4")  # any case; ^ is no pattern character
        names = {s.patient_name for s in page_after(session, by_name, 50, None)}
        assert names and all(n and "DOE^PATIENT4" in n for n in names)
        assert count(session, WorklistFilter(status="all", q="img_00%9")) == 0  # % is a character, not a wildcard
    finally:
        session.close()


def test_tables_without_pg_trgm_are_made_without_the_indexes(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    try:
        Base.metadata.create_all(engine)  # no extension in a fresh database: the indexes are left out
        with engine.connect() as conn:
            names = {row[0] for row in conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = "
                                                         "'studies'"))}
    finally:
        engine.dispose()
    assert "ix_studies_worklist" in names
    assert not {n for n in names if n.endswith("_trgm")}


def test_a_role_that_may_not_create_the_extension_migrates_without_the_indexes(
        postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The service's role owns its schema but may not create extensions in the database: the migration
    still reaches head, without the indexes, and says why and what to do."""
    import uuid

    role = f"xray_limited_{uuid.uuid4().hex[:8]}"
    database = postgres_url.rsplit("/", 1)[1]
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
            conn.execute(text(f'REVOKE CREATE ON DATABASE "{database}" FROM PUBLIC'))
            conn.execute(text(f'ALTER SCHEMA public OWNER TO "{role}"'))
        limited = postgres_url.replace("postgres@", f"{role}@", 1)
        with caplog.at_level("WARNING"):
            upgrade(limited)
        assert current(limited) == head()
        assert "pg_trgm could not be installed" in caplog.text and "CREATE EXTENSION pg_trgm" in caplog.text
        with admin.connect() as conn:
            names = {row[0] for row in conn.execute(text(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'studies'"))}
            assert "ix_studies_worklist" in names and not {n for n in names if n.endswith("_trgm")}
            conn.execute(text('ALTER SCHEMA public OWNER TO postgres'))
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()
