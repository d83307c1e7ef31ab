"""Run the Alembic migrations programmatically (`xray db upgrade`, `xray up`, the tests).

The migration scripts live in the packaged `migrations` package; they are found through the import
system, so nothing here depends on the current directory.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from shared.db import make_engine


def migrations_dir() -> Path:
    import migrations

    # __path__ rather than __file__: an editable install may present the package as a namespace.
    return Path(next(iter(migrations.__path__))).resolve()


def alembic_config(database_url: str) -> Config:
    directory = migrations_dir()
    config = Config(str(directory / "alembic.ini"))
    config.set_main_option("script_location", str(directory))
    # Passed as an attribute, not as a main option: ConfigParser would treat a '%' in the URL
    # (an escaped password character) as interpolation.
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at `database_url` to `revision` (creating the tables on an empty one)."""
    command.upgrade(alembic_config(database_url), revision)


def head() -> str:
    """The newest revision in the packaged migrations."""
    script = ScriptDirectory.from_config(alembic_config(""))
    revision = script.get_current_head()
    if revision is None:
        raise RuntimeError(f"no migrations found in {migrations_dir()}")
    return revision


def current(database_url: str) -> str | None:
    """The revision the database is at; None for a database that was never migrated."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def is_current(database_url: str) -> bool:
    return current(database_url) == head()
