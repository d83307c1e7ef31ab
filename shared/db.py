"""Engine and session factory. SQLite runs in WAL mode with a busy timeout; PostgreSQL as is.

Every engine hides SQL parameters (`hide_parameters=True`): a statement's values (patient names and
IDs, file names) never reach an exception message, so never a log line. `describe_db_error` names a
failure for a log line without the driver's message, which may quote a value (PostgreSQL's DETAIL).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _normalise_url(url: str) -> str:
    # "postgresql://" means psycopg 3 here (the only driver we install).
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://"):]
    return url


def make_engine(database_url: str) -> Engine:
    url = _normalise_url(database_url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, hide_parameters=True)


def describe_db_error(exc: BaseException) -> str:
    """A database failure for a log line: its classes, SQLSTATE and the statement's first words, never
    the driver's message or the parameters (either may hold a patient identifier)."""
    parts = [type(exc).__name__]
    orig = getattr(exc, "orig", None)
    if orig is not None:
        parts.append(f"{type(orig).__module__}.{type(orig).__name__}")
        sqlstate = getattr(orig, "sqlstate", None)
        if sqlstate:
            parts.append(f"SQLSTATE {sqlstate}")
    statement = getattr(exc, "statement", None)
    if isinstance(statement, str) and statement:
        parts.append("in " + " ".join(statement.split()[:4]))
    return ", ".join(parts)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
