"""The few queries the API and the pages share (the worklist is in web/worklist.py)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from shared.models import Study


def batch_counts(session: Session, batch_id: int) -> dict[str, int]:
    rows = session.execute(
        select(Study.status, func.count()).where(Study.batch_id == batch_id).group_by(Study.status)
    )
    return {status: count for status, count in rows}


def batch_studies(session: Session, batch_id: int) -> list[Study]:
    return list(session.scalars(select(Study).where(Study.batch_id == batch_id).order_by(Study.id)))


def study_with_findings(session: Session, study_id: int) -> Study | None:
    return session.scalar(
        select(Study).where(Study.id == study_id).options(selectinload(Study.findings))
    )
