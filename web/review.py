"""A clinician's review of a done study: optional note, agree/disagree per finding, kept for audit.

Reviewing sets `Study.reviewed_at` (the study leaves the open worklist) and adds a `Review` row;
reviews are never edited, a second review adds another row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.findings import FINDINGS
from shared.models import Review, Study, StudyStatus

VERDICTS = ("agree", "disagree")
NOTE_MAX_CHARS = 5000
REVIEWER_MAX_CHARS = 200


class ReviewError(ValueError):
    """The review cannot be recorded; `status_code` 400 (bad input), 404 or 409 (study not done)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class ReviewInput:
    reviewer: str | None = None
    note: str | None = None
    verdicts: dict[str, str] = field(default_factory=dict)


def _text(value: Any, name: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ReviewError(400, f"'{name}' must be text.")
    value = value.replace("\x00", "").strip()
    if len(value) > limit:
        raise ReviewError(400, f"'{name}' is longer than {limit} characters.")
    return value or None


def parse_review(body: Mapping[str, Any]) -> ReviewInput:
    """From JSON `{"reviewer", "note", "verdicts": {label: "agree"|"disagree"}}` or the page's form
    (`verdict_<label>` fields; an empty value means no verdict)."""
    verdicts_raw = body.get("verdicts")
    if verdicts_raw is None:
        verdicts_raw = {k[len("verdict_"):]: v for k, v in body.items() if k.startswith("verdict_") and v}
    if not isinstance(verdicts_raw, Mapping):
        raise ReviewError(400, "'verdicts' must map a finding to \"agree\" or \"disagree\".")
    verdicts: dict[str, str] = {}
    for label, verdict in verdicts_raw.items():
        if label not in FINDINGS:
            raise ReviewError(400, f"Unknown finding {str(label)[:40]!r} in 'verdicts'.")
        if verdict not in VERDICTS:
            raise ReviewError(400, f"The verdict for {label} must be \"agree\" or \"disagree\".")
        verdicts[label] = verdict
    return ReviewInput(_text(body.get("reviewer"), "reviewer", REVIEWER_MAX_CHARS),
                       _text(body.get("note"), "note", NOTE_MAX_CHARS), verdicts)


def record_review(session: Session, study_id: int, given: ReviewInput, at: datetime | None = None) -> Review:
    """Add the review and take the study off the open worklist, in the caller's transaction."""
    at = at or datetime.now(UTC)
    study = session.get(Study, study_id)
    if study is None:
        raise ReviewError(404, f"Study {study_id} does not exist.")
    if study.status != StudyStatus.DONE.value:
        raise ReviewError(409, f"Study {study_id} is {study.status}: only a diagnosed (done) study can be reviewed.")
    review = Review(study_id=study_id, reviewer=given.reviewer, note=given.note, verdicts=given.verdicts,
                    created_at=at)
    session.add(review)
    session.execute(update(Study).where(Study.id == study_id).values(reviewed_at=at))
    session.flush()
    return review


def reviews_of(session: Session, study_id: int) -> list[Review]:
    return list(session.scalars(select(Review).where(Review.study_id == study_id).order_by(Review.id)))


def review_json(review: Review) -> dict[str, Any]:
    from web.serializers import iso

    return {"id": review.id, "study_id": review.study_id, "reviewer": review.reviewer, "note": review.note,
            "verdicts": review.verdicts, "created_at": iso(review.created_at)}
