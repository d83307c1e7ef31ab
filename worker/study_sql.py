"""The statements every study runs (claim, record), compiled once per database and run on the
database driver's own connection.

Why not through SQLAlchemy's `Connection.execute`: a worker runs them right after a forward pass
that has pushed everything else out of the CPU's caches, and SQLAlchemy's execution path, a few
hundred Python functions per statement, then costs about as much as the rest of the study's
bookkeeping. Here the statements are still SQLAlchemy Core (`worker.processing`), compiled by the
engine's own dialect (its SQL and parameter style), and every parameter goes through its column
type's bind processor, so the values stored are the ones SQLAlchemy would store (tests compare both
ways on SQLite and PostgreSQL). Connections come from the engine's pool (pre-ping included); driver
errors come out as SQLAlchemy's exceptions (`DBAPIError.instance`: `OperationalError` and so on), and
a connection the dialect says is broken is invalidated in the pool, as SQLAlchemy does.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import Executable


class PreparedStatement:
    """One Core statement compiled for one dialect; `parameters(values)` gives what the driver's
    `execute` takes (a tuple or a dict, by the dialect's parameter style)."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self._order: Sequence[str] | None = compiled.positiontup if compiled.positional else None
        static: dict[str, Any] = {}
        self._required: dict[str, Callable[[Any], Any] | None] = {}
        for bind, name in compiled.bind_names.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if bind.required:
                self._required[name] = process
            else:  # a value written into the statement (a status, an increment): processed once
                static[name] = bind.value if process is None else process(bind.value)
        self._static = static

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        params = dict(self._static)
        for name, process in self._required.items():
            value = values[name]
            params[name] = value if process is None else process(value)
        if self._order is None:
            return params
        return tuple(params[name] for name in self._order)


class StudySql:
    """The prepared statements for one engine, and `transaction()` to run them in."""

    def __init__(self, engine: Engine, statements: Mapping[str, Executable]) -> None:
        self.engine = engine
        self._dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        self.prepared = {name: PreparedStatement(statement, engine.dialect) for name, statement in statements.items()}

    def execute(self, cursor: Any, name: str, values: Mapping[str, Any]) -> Any:
        prepared = self.prepared[name]
        cursor.execute(prepared.sql, prepared.parameters(values))
        return cursor

    def executemany(self, cursor: Any, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        prepared = self.prepared[name]
        cursor.executemany(prepared.sql, [prepared.parameters(row) for row in rows])

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A driver cursor in one transaction: committed when the block ends, rolled back if it
        raises. Driver errors are raised as SQLAlchemy's."""
        try:
            connection = self.engine.raw_connection()
        except self._dbapi_error as exc:  # could not connect (SQLAlchemy's connect() wraps this too)
            raise DBAPIError.instance(None, None, exc, self._dbapi_error, dialect=self.engine.dialect) from exc
        cursor = None
        try:
            cursor = connection.cursor()
            yield cursor
            connection.commit()
        except self._dbapi_error as exc:
            broken = self.engine.dialect.is_disconnect(exc, connection.dbapi_connection, cursor)
            if broken:
                connection.invalidate(exc)
            else:
                _rollback_quietly(connection)
            raise DBAPIError.instance(None, None, exc, self._dbapi_error, connection_invalidated=broken,
                                      dialect=self.engine.dialect) from exc
        except BaseException:
            _rollback_quietly(connection)
            raise
        finally:
            if cursor is not None:
                with suppress(self._dbapi_error):
                    cursor.close()
            connection.close()  # back to the pool (or discarded, if invalidated)


def _rollback_quietly(connection: Any) -> None:
    with suppress(Exception):  # the connection may be gone; the pool deals with it on return
        connection.rollback()


_by_engine: weakref.WeakKeyDictionary[Engine, StudySql] = weakref.WeakKeyDictionary()


def study_sql(engine: Engine, statements: Mapping[str, Executable]) -> StudySql:
    """The StudySql of `engine` for these statements (made once per engine)."""
    found = _by_engine.get(engine)
    if found is None:
        found = _by_engine[engine] = StudySql(engine, statements)
    return found
