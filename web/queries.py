"""The few queries the API and the pages share."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from shared.models import Finding, Study, StudyStatus


@dataclass(frozen=True)
class WorklistPage:
    total: int
    studies: list[Study]
    positives: dict[int, list[Finding]]


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


def worklist(session: Session, limit: int, offset: int) -> WorklistPage:
    """Completed studies, most urgent first: `due_at` ascending (a study's priority rises as it
    waits), then id; a done study without a due time sorts last."""
    done = Study.status == StudyStatus.DONE.value
    total = session.scalar(select(func.count()).select_from(Study).where(done)) or 0
    studies = list(session.scalars(
        select(Study).where(done)
        .order_by(Study.due_at.asc().nulls_last(), Study.id.asc())
        .limit(limit).offset(offset)
    ))
    positives: dict[int, list[Finding]] = {s.id: [] for s in studies}
    if studies:
        for finding in session.scalars(
            select(Finding).where(Finding.study_id.in_(positives), Finding.positive.is_(True))
        ):
            positives[finding.study_id].append(finding)
    return WorklistPage(total=total, studies=studies, positives=positives)
