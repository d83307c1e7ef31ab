"""Alembic migrations of the service's database, and the functions that run them
(`xray db upgrade`, `xray up`, the tests). The scripts are found next to this module, so nothing
depends on the current directory."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from shared.db import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(database_url: str) -> Config:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an attribute, not as a main option: ConfigParser would treat a '%' in the URL
    # (an escaped password character) as interpolation.
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at `database_url` to `revision` (creating the tables on an empty one)."""
    command.upgrade(alembic_config(database_url), revision)


def head() -> str:
    """The newest revision in the packaged migrations."""
    revision = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    if revision is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return revision


def current(database_url: str) -> str | None:
    """The revision the database is at; None for a database that was never migrated."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
