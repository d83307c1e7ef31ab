"""Worklist and review: studies.reviewed_at, the reviews audit table, worklist/filter indexes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 10:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "status = 'done' AND reviewed_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
    # The open worklist (done, not yet reviewed) in due order; keyset pagination walks it.
    op.create_index("ix_studies_open_due", "studies", ["due_at", "id"],
                    sqlite_where=sa.text(OPEN), postgresql_where=sa.text(OPEN))
    # Other status views (reviewed, failed, ...) in due order, and the upload-date filter.
    op.create_index("ix_studies_status_due_id", "studies", ["status", "due_at", "id"])
    op.create_index("ix_studies_created_at", "studies", ["created_at"])
    # "finding X above threshold" filter: an index-only EXISTS probe per study.
    op.create_index("ix_findings_label_positive", "findings", ["label", "positive", "study_id"])
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("reviewer", sa.String(length=200), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("verdicts", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_reviews_study_id", "reviews", ["study_id"])


def downgrade() -> None:
    op.drop_index("ix_reviews_study_id", table_name="reviews")
    op.drop_table("reviews")
    op.drop_index("ix_findings_label_positive", table_name="findings")
    op.drop_index("ix_studies_created_at", table_name="studies")
    op.drop_index("ix_studies_status_due_id", table_name="studies")
    op.drop_index("ix_studies_open_due", table_name="studies")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("reviewed_at")
