"""Worklist search by part of a patient name or file name through trigram indexes (PostgreSQL only).

The worklist's `q=` matches `lower(patient_name) LIKE '%term%'` and the same on `original_filename`
(web/worklist.py); a B-tree cannot serve a pattern with a leading wildcard, so without these indexes
every search reads the whole table. GIN indexes with `gin_trgm_ops` on exactly those expressions let
the planner answer the LIKE from the index. They need the `pg_trgm` extension: created here when the
database role may (it is a trusted extension from PostgreSQL 13: the database's owner may); when it
may not, the indexes are skipped with a warning and search still works, by a scan. SQLite: nothing.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 21:30:00+00:00
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from alembic import op
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

# Index name -> the searched column (the index is on lower(column), as the query is).
INDEXES = {"ix_studies_patient_name_trgm": "patient_name", "ix_studies_filename_trgm": "original_filename"}


def _has_trgm() -> bool:
    """Whether pg_trgm is installed, installing it if this role may (in a savepoint: a refusal must
    not abort the migration's transaction)."""
    bind = op.get_bind()
    if bind.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")).first():
        return True
    try:
        with bind.begin_nested():
            bind.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except DBAPIError as exc:
        log.warning("pg_trgm could not be installed (%s): the worklist's search by name or file name will "
                    "scan the table. To index it, a superuser runs `CREATE EXTENSION pg_trgm` in this database "
                    "and then this migration's CREATE INDEX statements (docs/OPERATING.md).",
                    type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__)
        return False
    return True


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql" or not _has_trgm():
        return
    for name, column in INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON studies USING gin (lower({column}) gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
