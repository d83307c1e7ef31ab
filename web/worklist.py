"""The worklist query: filters, search, and pagination that stays fast at 100,000 studies.

Order: `due_at` ascending (see shared/triage.py: a study's priority rises as it waits), then id;
studies without a due time (not yet done) last, by id. Pages are fetched by keyset (`after`, an
opaque cursor of the last row's (due_at, id)), which walks an index whatever the page number;
`offset` is still accepted for small jumps. Views (`status`):

- `open` (default): done and not yet reviewed: the clinician's worklist;
- `reviewed`: done and reviewed; `done`: both;
- `failed`, `queued`, `processing`: by processing state; `all`: everything.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import ColumnElement, Select, exists, func, literal, or_, select, tuple_
from sqlalchemy.orm import Session

from shared.findings import FINDINGS
from shared.models import Finding, Study, StudyStatus
from web.params import MAX_ID

VIEWS = ("open", "reviewed", "done", "failed", "queued", "processing", "all")
SEARCH_MAX_LENGTH = 100
DONE = StudyStatus.DONE.value


class FilterError(ValueError):
    """A bad query parameter; the message names it and says what is expected."""


@dataclass(frozen=True)
class WorklistFilter:
    status: str = "open"
    finding: str | None = None
    batch_id: int | None = None
    date_from: date | None = None  # upload (created_at) date, UTC, inclusive
    date_to: date | None = None
    model_trained: bool | None = None
    q: str | None = None  # patient ID / accession (exact) or patient name / file name (contains)

    def as_query(self) -> dict[str, str]:
        """The filter as query parameters (for links: CSV export, next page)."""
        out: dict[str, str] = {}
        if self.status != "open":
            out["status"] = self.status
        if self.finding:
            out["finding"] = self.finding
        if self.batch_id is not None:
            out["batch"] = str(self.batch_id)
        if self.date_from:
            out["from"] = self.date_from.isoformat()
        if self.date_to:
            out["to"] = self.date_to.isoformat()
        if self.model_trained is not None:
            out["model_trained"] = "true" if self.model_trained else "false"
        if self.q:
            out["q"] = self.q
        return out

    def for_audit(self) -> dict[str, str | bool]:
        """The filter for an audit row: that a search was made, never its terms (a patient's name or ID)."""
        out: dict[str, str | bool] = {k: v for k, v in self.as_query().items() if k != "q"}
        if self.q:
            out["search"] = True
        return out


@dataclass(frozen=True)
class Cursor:
    due_at: datetime | None
    id: int

    def encode(self) -> str:
        raw = json.dumps({"d": None if self.due_at is None else _utc(self.due_at).isoformat(), "i": self.id})
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            due = None if raw["d"] is None else _utc(datetime.fromisoformat(raw["d"]))
            study_id = int(raw["i"])
        except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError,
                RecursionError) as exc:
            raise FilterError("Query parameter 'after' is not a cursor this server gave out.") from exc
        if not 0 <= study_id <= MAX_ID:
            raise FilterError("Query parameter 'after' is not a cursor this server gave out.")
        return cls(due, study_id)


@dataclass(frozen=True)
class WorklistPage:
    total: int
    studies: list[Study]
    positives: dict[int, list[Finding]]
    next_cursor: str | None


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _date(args: Mapping[str, str], name: str) -> date | None:
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise FilterError(f"Query parameter '{name}' must be a date like 2025-01-31, got {raw[:40]!r}.") from None


def parse_filter(args: Mapping[str, str]) -> WorklistFilter:
    status = (args.get("status") or "open").strip().lower()
    if status not in VIEWS:
        raise FilterError(f"Query parameter 'status' must be one of {', '.join(VIEWS)}, got {status[:40]!r}.")
    finding = (args.get("finding") or "").strip() or None
    if finding is not None and finding not in FINDINGS:
        raise FilterError(f"Query parameter 'finding' must be one of {', '.join(FINDINGS)}, got {finding[:40]!r}.")
    batch_raw = (args.get("batch") or "").strip()
    batch_id = None
    if batch_raw:
        if not batch_raw.isdigit() or int(batch_raw) > MAX_ID:
            raise FilterError(f"Query parameter 'batch' must be a batch number, got {batch_raw[:40]!r}.")
        batch_id = int(batch_raw)
    trained_raw = (args.get("model_trained") or "").strip().lower()
    trained: bool | None = None
    if trained_raw:
        if trained_raw not in {"true", "false", "1", "0"}:
            raise FilterError("Query parameter 'model_trained' must be true or false.")
        trained = trained_raw in {"true", "1"}
    date_from, date_to = _date(args, "from"), _date(args, "to")
    if date_from and date_to and date_from > date_to:
        raise FilterError("The date range is empty: 'from' is after 'to'.")
    q = (args.get("q") or "").strip()[:SEARCH_MAX_LENGTH] or None
    return WorklistFilter(status, finding, batch_id, date_from, date_to, trained, q)


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def conditions(f: WorklistFilter) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if f.status == "open":
        where += [Study.status == DONE, Study.reviewed_at.is_(None)]
    elif f.status == "reviewed":
        where += [Study.status == DONE, Study.reviewed_at.is_not(None)]
    elif f.status != "all":
        where.append(Study.status == f.status)
    if f.finding:
        where.append(exists().where(Finding.study_id == Study.id, Finding.label == f.finding,
                                    Finding.positive.is_(True)))
    if f.batch_id is not None:
        where.append(Study.batch_id == f.batch_id)
    if f.date_from:
        where.append(Study.created_at >= datetime.combine(f.date_from, time(), UTC))
    if f.date_to and f.date_to < date.max:  # `to` 9999-12-31 is no upper bound (the next day overflows)
        where.append(Study.created_at < datetime.combine(f.date_to + timedelta(days=1), time(), UTC))
    if f.model_trained is not None:
        where.append(Study.model_trained.is_(f.model_trained))
    if f.q:
        like = _like(f.q.lower())
        where.append(or_(
            Study.patient_id == f.q,
            Study.accession_number == f.q,
            func.lower(Study.patient_name).like(like, escape="\\"),
            func.lower(Study.original_filename).like(like, escape="\\"),
        ))
    return where


def _filtered(f: WorklistFilter) -> Select[tuple[Study]]:
    return select(Study).where(*conditions(f))


def count(session: Session, f: WorklistFilter) -> int:
    return int(session.scalar(select(func.count()).select_from(Study).where(*conditions(f))) or 0)


def page_after(session: Session, f: WorklistFilter, limit: int, after: Cursor | None) -> list[Study]:
    """Up to `limit` + 1 studies after the cursor: the dated rows by (due_at, id) through an index,
    then, once those run out, the undated ones by id (NULLS LAST without defeating the index)."""
    rows: list[Study] = []
    if after is None or after.due_at is not None:
        dated = _filtered(f).where(Study.due_at.is_not(None))
        if after is not None:
            dated = dated.where(tuple_(Study.due_at, Study.id) > tuple_(literal(after.due_at, Study.due_at.type),
                                                              literal(after.id, Study.id.type)))
        rows = list(session.scalars(dated.order_by(Study.due_at, Study.id).limit(limit + 1)))
    if len(rows) <= limit:
        undated = _filtered(f).where(Study.due_at.is_(None))
        if after is not None and after.due_at is None:
            undated = undated.where(Study.id > after.id)
        rows += list(session.scalars(undated.order_by(Study.id).limit(limit + 1 - len(rows))))
    return rows


def page_at_offset(session: Session, f: WorklistFilter, limit: int, offset: int) -> list[Study]:
    return list(session.scalars(
        _filtered(f).order_by(Study.due_at.asc().nulls_last(), Study.id.asc()).limit(limit + 1).offset(offset)
    ))


def positives_of(session: Session, studies: list[Study]) -> dict[int, list[Finding]]:
    positives: dict[int, list[Finding]] = {s.id: [] for s in studies}
    if studies:
        for finding in session.scalars(
            select(Finding).where(Finding.study_id.in_(positives), Finding.positive.is_(True))
        ):
            positives[finding.study_id].append(finding)
    return positives


def worklist(session: Session, f: WorklistFilter, limit: int, offset: int = 0,
             after: Cursor | None = None) -> WorklistPage:
    rows = page_after(session, f, limit, after) if after is not None or offset == 0 else \
        page_at_offset(session, f, limit, offset)
    studies = rows[:limit]
    next_cursor = Cursor(studies[-1].due_at, studies[-1].id).encode() if len(rows) > limit else None
    return WorklistPage(count(session, f), studies, positives_of(session, studies), next_cursor)


def iter_studies(session: Session, f: WorklistFilter, chunk: int = 500) -> Iterator[tuple[Study, list[Finding]]]:
    """Every matching study in worklist order with all its findings, a chunk at a time (CSV export)."""
    after: Cursor | None = None
    while True:
        rows = page_after(session, f, chunk, after)
        studies = rows[:chunk]
        if not studies:
            return
        findings: dict[int, list[Finding]] = {s.id: [] for s in studies}
        for finding in session.scalars(select(Finding).where(Finding.study_id.in_(findings))):
            findings[finding.study_id].append(finding)
        for study in studies:
            yield study, findings[study.id]
        if len(rows) <= chunk:
            return
        after = Cursor(studies[-1].due_at, studies[-1].id)
        session.expunge_all()
