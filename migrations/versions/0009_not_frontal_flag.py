"""studies.not_frontal and not_frontal_reason: the image is not a frontal chest X-ray (shared.frontal).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 00:30:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("not_frontal", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("not_frontal_reason", sa.String(300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("not_frontal_reason")
        batch.drop_column("not_frontal")
