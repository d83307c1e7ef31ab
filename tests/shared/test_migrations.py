"""The Alembic migrations build exactly the schema of shared/models.py, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from migrations import MIGRATIONS_DIR, alembic_config, current, head, upgrade
from shared.db import make_engine
from shared.models import Base

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The CLI of the code under test (not whatever the environment has installed), run from elsewhere.
_THIS_CHECKOUT = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT)}


def _assert_matches_models(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
            inspector = inspect(conn)
            tables = set(inspector.get_table_names())
            study_indexes = {ix["name"] for ix in inspector.get_indexes("studies")}
            uniques = inspector.get_unique_constraints("findings")
    finally:
        engine.dispose()
    assert diff == [], f"schema differs from the models: {diff}"
    assert {"batches", "studies", "findings", "alembic_version"} <= tables
    assert {"ix_studies_worklist", "ix_studies_batch_status", "ix_studies_status_updated"} <= study_indexes
    assert [(u["name"], u["column_names"]) for u in uniques] == [
        ("uq_findings_study_label", ["study_id", "label"])
    ]


def test_empty_sqlite_database_is_unmigrated(tmp_path: Path) -> None:
    assert current(f"sqlite:///{tmp_path / 'x.db'}") is None


def test_upgrade_sqlite_matches_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'xray.db'}"
    upgrade(url)
    assert current(url) == head()
    _assert_matches_models(url)
    upgrade(url)  # a second upgrade is a no-op
    assert current(url) == head()
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_downgrade_to_base_and_back(tmp_path: Path) -> None:
    from alembic import command


    url = f"sqlite:///{tmp_path / 'xray.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    engine = make_engine(url)
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) == {"alembic_version"}
    engine.dispose()
    upgrade(url)
    _assert_matches_models(url)


@pytest.mark.postgres
def test_upgrade_postgres_matches_models(postgres_url: str) -> None:
    assert current(postgres_url) is None
    upgrade(postgres_url)
    assert current(postgres_url) == head()
    _assert_matches_models(postgres_url)


def test_migrations_located_without_current_directory(tmp_path: Path) -> None:
    assert (MIGRATIONS_DIR / "alembic.ini").is_file()
    assert (MIGRATIONS_DIR / "env.py").is_file()
    db = tmp_path / "cli.db"
    env = {"DATABASE_URL": f"sqlite:///{db}", "XRAY_VAR_DIR": str(tmp_path / "var"), **_THIS_CHECKOUT}
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "db", "upgrade"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert head() in run.stdout
    shown = subprocess.run(
        [sys.executable, "-m", "cli.main", "db", "current"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"current:  {head()}" in shown.stdout


def test_db_current_reports_unmigrated(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}", **_THIS_CHECKOUT}
    shown = subprocess.run(
        [sys.executable, "-m", "cli.main", "db", "current"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert shown.returncode == 3
    assert "run `xray db upgrade`" in shown.stdout
