"""Diagnose one study: the worker's core, plain functions without Celery (testable on their own).

`process_study(session_factory, storage, diagnoser, study_id, settings=...)`:
1. claims the study in one atomic UPDATE (queued/processing -> processing, attempts += 1,
   started_at); a done or failed study is left as it is (idempotent redelivery);
2. reads the original from storage, decodes it (`shared.images.read_image`), diagnoses it;
3. stores all 14 low-resolution CAMs as one 16-bit PNG sheet (`shared.gradcam.cam_sheet_png`,
   one durable write, started as soon as the CAMs exist and synced on a native thread while the
   boxes are found and the record is prepared: `worker.sheet_writer`); every finding's
   `heatmap_path` is that sheet and the web renders the finding's colour layer from it on request;
4. once the sheet is durable (a failed write leaves the study to a retry), in ONE transaction
   writes the 14 Finding rows and status done with model version, timings, urgency and due_at, but
   only if no other delivery finished the study meanwhile.

Unreadable images and missing originals end `failed` with a reason a person can act on. Transient
errors (database, Redis, storage I/O) raise `RetryLater`; the caller retries with `retry_delay_s`. A
study whose attempts reach `settings.max_attempts` ends `failed` with the last reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import redis.exceptions
from billiard.exceptions import SoftTimeLimitExceeded
from sqlalchemy import and_, bindparam, insert, or_, select, update
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import session_scope
from shared.images import InvalidImage, read_image
from shared.models import Finding, Study, StudyStatus
from shared.storage import Storage, StorageError, StoredFileMissing
from shared.triage import triage
from worker.sheet_writer import PendingSheet, start_sheet_write
from worker.study_sql import StudySql, study_sql

if TYPE_CHECKING:
    from shared.diagnosis import Diagnoser, Diagnosis

log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    DisconnectionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    StorageError,  # except StoredFileMissing, handled first: a full or unreachable disk may recover
)
FINISHED = (StudyStatus.DONE.value, StudyStatus.FAILED.value)
RETRY_BASE_S = 2.0
RETRY_CAP_S = 60.0
MAX_REASON_CHARS = 1000


# The statements every study runs, built once and compiled once per engine (worker.study_sql runs
# them on the driver's connection: after a forward pass has emptied the CPU's caches, SQLAlchemy's
# own execution path cost about 1 ms a study). Status tests are spelt out (= / !=) rather than
# IN lists, which SQLAlchemy expands only at execution.
_STUDIES = Study.__table__
_FINDINGS = Finding.__table__
_CLAIM = (
    update(_STUDIES)
    .where(_STUDIES.c.id == bindparam("study_id"),
           or_(_STUDIES.c.status == StudyStatus.QUEUED.value, _STUDIES.c.status == StudyStatus.PROCESSING.value),
           _STUDIES.c.attempts < bindparam("max_attempts"))
    .values(status=StudyStatus.PROCESSING.value, attempts=_STUDIES.c.attempts + 1,
            started_at=bindparam("at", type_=_STUDIES.c.started_at.type),
            updated_at=bindparam("at", type_=_STUDIES.c.updated_at.type))
    .returning(_STUDIES.c.stored_path, _STUDIES.c.attempts)
)
_RECORDED = ("model_version", "model_trained", "width", "height", "timings", "urgency", "due_at", "finished_at")
_RECORD = (
    update(_STUDIES)
    .where(_STUDIES.c.id == bindparam("study_id"),
           and_(*(_STUDIES.c.status != finished for finished in FINISHED)))
    .values(status=StudyStatus.DONE.value, error=None,
            updated_at=bindparam("finished_at", type_=_STUDIES.c.updated_at.type),
            **{name: bindparam(name, type_=_STUDIES.c[name].type) for name in _RECORDED})
)
_FINDING_VALUES = ("study_id", "label", "probability", "threshold", "positive", "heatmap_path",
                   "box_x", "box_y", "box_w", "box_h")
_INSERT_FINDINGS = insert(_FINDINGS).values({name: bindparam(name) for name in _FINDING_VALUES})
# Run on the driver's connection (worker.study_sql), compiled once per engine.
_STATEMENTS = {"claim": _CLAIM, "record": _RECORD, "insert_findings": _INSERT_FINDINGS}


def _sql(session_factory: sessionmaker[Session]) -> StudySql:
    return study_sql(session_factory.kw["bind"], _STATEMENTS)


class RetryLater(Exception):
    """A transient failure: try this study again later (`attempt` is None when it was never claimed)."""

    def __init__(self, study_id: int, attempt: int | None, reason: str) -> None:
        super().__init__(f"study {study_id}: {reason}")
        self.study_id = study_id
        self.attempt = attempt
        self.reason = reason


@dataclass(frozen=True)
class Outcome:
    study_id: int
    status: str  # done | failed | skipped (already finished) | missing (no such study)
    reason: str | None = None


@dataclass(frozen=True)
class _Claim:
    stored_path: str
    attempt: int


def retry_delay_s(retries: int) -> float:
    """Exponential backoff for the n-th retry (0-based): 2, 4, 8, ... seconds, at most 60."""
    return min(RETRY_CAP_S, RETRY_BASE_S * 2 ** max(0, retries))


def utcnow() -> datetime:
    return datetime.now(UTC)


def process_study(
    session_factory: sessionmaker[Session],
    storage: Storage,
    diagnoser: Diagnoser,
    study_id: int,
    settings: Settings | None = None,
    now: Callable[[], datetime] = utcnow,
) -> Outcome:
    settings = settings or Settings()
    try:
        claim = _claim(session_factory, study_id, settings.max_attempts, now())
    except TRANSIENT_ERRORS as exc:
        raise RetryLater(study_id, None, describe_error(exc)) from exc
    if isinstance(claim, Outcome):
        return claim

    try:
        return _diagnose_and_record(session_factory, storage, diagnoser, study_id, claim.stored_path,
                                    settings, now)
    except InvalidImage as exc:
        return _fail_or_retry(session_factory, study_id, claim.attempt, str(exc), now())
    except StoredFileMissing as exc:
        return _fail_or_retry(session_factory, study_id, claim.attempt, f"{exc}; upload the image again",
                              now())
    except TRANSIENT_ERRORS as exc:
        reason = describe_error(exc)
        log.warning("study %s attempt %s: transient error: %s", study_id, claim.attempt, exc)
        if claim.attempt >= settings.max_attempts:
            return _fail_or_retry(session_factory, study_id, claim.attempt,
                                  f"gave up after {claim.attempt} attempts: {reason}", now())
        _note_error(session_factory, study_id, reason, now())
        raise RetryLater(study_id, claim.attempt, reason) from exc
    except SoftTimeLimitExceeded:
        return _fail_or_retry(session_factory, study_id, claim.attempt,
                    f"the diagnosis took longer than {settings.task_soft_time_limit_s} s and was stopped; "
                    "the server may be overloaded, try again later", now())
    except Exception as exc:  # a bug or an unexpected model error: retrying would not help
        log.exception("study %s: unexpected error", study_id)
        return _fail_or_retry(session_factory, study_id, claim.attempt,
                              f"the diagnosis failed unexpectedly ({type(exc).__name__}); "
                              "the administrator can find the details in the worker log", now())


def describe_error(exc: BaseException) -> str:
    """A short reason for a person; the full error goes to the log."""
    if isinstance(exc, StorageError):
        return str(exc)
    if isinstance(exc, OperationalError | DisconnectionError):
        return "the database was unavailable"
    if isinstance(exc, redis.exceptions.RedisError):
        return "the queue server (Redis) was unavailable"
    return f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]


def _claim(session_factory: sessionmaker[Session], study_id: int, max_attempts: int,
           at: datetime) -> _Claim | Outcome:
    sql = _sql(session_factory)
    with sql.transaction() as cursor:
        rows = sql.execute(cursor, "claim", {"study_id": study_id, "max_attempts": max_attempts, "at": at}).fetchall()
    if rows:
        stored_path, attempts = rows[0]
        return _Claim(stored_path=stored_path, attempt=attempts)
    with session_scope(session_factory) as session:
        study = session.execute(
            select(Study.status, Study.attempts, Study.error).where(Study.id == study_id)
        ).first()
    if study is None:
        log.warning("study %s: no such study; message dropped", study_id)
        return Outcome(study_id, "missing", "no such study")
    if study.status in FINISHED:
        log.info("study %s is already %s; nothing to do", study_id, study.status)
        return Outcome(study_id, "skipped", study.status)
    # Still queued/processing with every attempt used: a worker died on it each time, or it kept
    # failing transiently. Give up with the last known reason.
    last = study.error or "the worker stopped while diagnosing it (the image may be too large to process)"
    return fail(session_factory, study_id, f"gave up after {study.attempts} attempts: {last}", at)


def _diagnose_and_record(session_factory: sessionmaker[Session], storage: Storage, diagnoser: Diagnoser,
                         study_id: int, stored_path: str, settings: Settings,
                         now: Callable[[], datetime]) -> Outcome:
    start = time.perf_counter()
    data = storage.read(stored_path)
    read_ms = _ms_since(start)
    start = time.perf_counter()
    image = read_image(data, settings.limits)
    decode_ms = _ms_since(start)
    sheets: list[PendingSheet] = []
    try:
        diagnosis = diagnoser.diagnose(
            image, on_maps=lambda _index, cams: sheets.append(start_sheet_write(storage, study_id, cams)))
        if len(sheets) != 1:
            raise RuntimeError(f"the diagnoser handed over {len(sheets)} sets of maps for one image")
        timings = {"read": read_ms, "decode": decode_ms, **diagnosis.timings_ms, "heatmap": sheets[0].encode_ms}
        return _record(session_factory, study_id, diagnosis, sheets[0], timings, settings, now())
    finally:
        for sheet in sheets:  # nothing of this study is still being written when it returns
            sheet.settle()


def _record(session_factory: sessionmaker[Session], study_id: int, diagnosis: Diagnosis,
            sheet: PendingSheet, timings: dict[str, float], settings: Settings,
            finished_at: datetime) -> Outcome:
    """Record the diagnosis in one transaction, begun once `sheet` is durable; `timings` gains the
    sheet's write time."""
    result = triage(diagnosis.findings, finished_at, settings.triage_max_wait_minutes)
    findings = [  # for one executemany
        {
            "study_id": study_id,
            "label": f.label,
            "probability": float(f.probability),
            "threshold": float(f.threshold),
            "positive": bool(f.positive),
            "heatmap_path": sheet.relpath,
            "box_x": None if f.box is None else f.box.x,
            "box_y": None if f.box is None else f.box.y,
            "box_w": None if f.box is None else f.box.width,
            "box_h": None if f.box is None else f.box.height,
        }
        for f in diagnosis.findings
    ]
    # The sheet has been syncing since the CAMs existed; nothing is recorded before it is on disk
    # (a StorageError here leaves the study to a retry).
    timings["write"] = sheet.wait()
    sql = _sql(session_factory)
    with sql.transaction() as cursor:
        # The UPDATE comes first: it takes the row's write lock (PostgreSQL) or the database's
        # (SQLite), so of two deliveries racing on one study exactly one records findings.
        updated = sql.execute(cursor, "record", {
            "study_id": study_id,
            "model_version": diagnosis.model_version, "model_trained": diagnosis.model_trained,
            "width": diagnosis.image_width, "height": diagnosis.image_height,
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "urgency": result.urgency, "due_at": result.due_at, "finished_at": finished_at,
        }).rowcount
        if updated != 1:
            log.info("study %s was finished by another delivery; keeping that result", study_id)
            return Outcome(study_id, "skipped", "finished by another delivery")
        sql.executemany(cursor, "insert_findings", findings)
    log.info("study %s done: urgency %.3f, %d positive", study_id, result.urgency, len(diagnosis.positives))
    return Outcome(study_id, StudyStatus.DONE.value)


def fail(session_factory: sessionmaker[Session], study_id: int, reason: str, at: datetime) -> Outcome:
    """End a study `failed` with `reason` (unless another delivery finished it first)."""
    reason = reason[:MAX_REASON_CHARS]
    with session_scope(session_factory) as session:
        updated = session.execute(
            update(Study)
            .where(Study.id == study_id, Study.status.not_in(FINISHED))
            .values(status=StudyStatus.FAILED.value, error=reason, finished_at=at, updated_at=at)
        ).rowcount
    if updated != 1:
        return Outcome(study_id, "skipped", "finished by another delivery")
    log.warning("study %s failed: %s", study_id, reason)
    return Outcome(study_id, StudyStatus.FAILED.value, reason)


def _fail_or_retry(session_factory: sessionmaker[Session], study_id: int, attempt: int, reason: str,
                   at: datetime) -> Outcome:
    """Record a failure; if even that cannot reach the database, leave the study to a retry."""
    try:
        return fail(session_factory, study_id, reason, at)
    except TRANSIENT_ERRORS as exc:
        raise RetryLater(study_id, attempt, describe_error(exc)) from exc


def _note_error(session_factory: sessionmaker[Session], study_id: int, reason: str, at: datetime) -> None:
    """Remember why the last attempt failed (best effort: the database may be the thing that is down)."""
    try:
        with session_scope(session_factory) as session:
            session.execute(update(Study).where(Study.id == study_id, Study.status.not_in(FINISHED))
                            .values(error=reason[:MAX_REASON_CHARS], updated_at=at))
    except TRANSIENT_ERRORS as exc:
        log.warning("study %s: could not record the error: %s", study_id, exc)


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
