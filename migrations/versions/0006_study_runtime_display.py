"""Studies record the runtime that diagnosed them and the path of their display picture.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 21:45:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("model_runtime", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("display_path", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("display_path")
        batch.drop_column("model_runtime")
