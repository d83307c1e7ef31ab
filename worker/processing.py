"""Diagnose one study: the worker's core, plain functions without Celery (testable on their own).

`process_study` reads top to bottom: claim -> read -> decode -> diagnose -> write the heatmaps ->
record. The claim is one atomic UPDATE (queued/processing -> processing, attempts += 1), so a done or
failed study is left as it is when its message comes again; the record is one transaction that
writes the 14 findings and `done` only if no other delivery finished the study first, and only after
the heatmaps are durable in storage.

Unreadable images end `failed` with a reason a person can act on. Transient errors (database, Redis,
storage) raise `RetryLater` and the task retries with `retry_delay_s`; a study whose attempts reach
`settings.max_attempts` ends `failed` with the last reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import redis.exceptions
from billiard.exceptions import SoftTimeLimitExceeded
from sqlalchemy import insert, select, update
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import session_scope
from shared.display import display_png
from shared.gradcam import cam_sheet_png
from shared.images import InvalidImage, XRayImage, read_image
from shared.logs import add_log_context
from shared.models import Delivery, Finding, Study, StudyStatus
from shared.storage import Storage, StorageError, StoredFileMissing
from shared.triage import triage

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
ACTIVE = (StudyStatus.QUEUED.value, StudyStatus.PROCESSING.value)
FINISHED = (StudyStatus.DONE.value, StudyStatus.FAILED.value)
RETRY_BASE_S = 5.0
RETRY_CAP_S = 300.0
MAX_REASON_CHARS = 1000
# Why a study ended `failed`, as a small fixed set (a metrics label: worker/metrics.py).
INVALID_IMAGE, FILE_MISSING, TRANSIENT, TIME_LIMIT, INTERNAL, ATTEMPTS_USED = (
    "invalid_image", "file_missing", "transient", "time_limit", "internal", "attempts_used")
FAILURE_REASONS = (INVALID_IMAGE, FILE_MISSING, TRANSIENT, TIME_LIMIT, INTERNAL, ATTEMPTS_USED)


class RetryLater(Exception):
    """A transient failure: try this study again later (`attempt` is None when it was never claimed)."""

    def __init__(self, study_id: int, attempt: int | None, reason: str, cause: str = "other") -> None:
        super().__init__(f"study {study_id}: {reason}")
        self.study_id = study_id
        self.attempt = attempt
        self.reason = reason
        self.cause = cause  # database | queue | storage | other (error_category)


@dataclass(frozen=True)
class Outcome:
    study_id: int
    status: str  # done | failed | skipped (already finished) | missing (no such study)
    reason: str | None = None
    category: str | None = None  # for `failed`: one of FAILURE_REASONS
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds per stage, for `done`


@dataclass(frozen=True)
class Claim:
    stored_path: str
    format: str
    attempt: int
    batch_id: int | None = None


@dataclass(frozen=True)
class StoredFiles:
    heatmaps: str  # the CAM sheet: every finding's map
    display: str | None  # the picture the web shows, for formats a browser cannot


def retry_delay_s(retries: int) -> float:
    """Backoff for the n-th retry (0-based): 5, 10, 20, 40, ... seconds, at most 300."""
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
        claim = claim_study(session_factory, study_id, settings.max_attempts, now())
    except TRANSIENT_ERRORS as exc:
        raise RetryLater(study_id, None, describe_error(exc), error_category(exc)) from exc
    if isinstance(claim, Outcome):
        return claim
    add_log_context(batch_id=claim.batch_id)  # the task's log_context(study_id=...) ends it

    timings: dict[str, float] = {}
    try:
        with timed(timings, "read"):
            data = storage.read(claim.stored_path)
        with timed(timings, "decode"):
            image = read_image(data, settings.limits)
        diagnosis = diagnoser.diagnose(image)
        timings.update(diagnosis.timings_ms)
        with timed(timings, "write"):
            files = write_files(storage, study_id, image, diagnosis, claim.format)
        with timed(timings, "record"):
            outcome = record(session_factory, study_id, diagnosis, files, timings, settings, now())
        return replace(outcome, timings=timings)
    except InvalidImage as exc:
        return fail_or_retry(session_factory, study_id, claim.attempt, str(exc), now(), INVALID_IMAGE)
    except StoredFileMissing as exc:
        return fail_or_retry(session_factory, study_id, claim.attempt, f"{exc}; upload the image again", now(),
                             FILE_MISSING)
    except TRANSIENT_ERRORS as exc:
        reason = describe_error(exc)
        log.warning("study %s attempt %s: transient error: %s", study_id, claim.attempt, exc)
        if claim.attempt >= settings.max_attempts:
            return fail_or_retry(session_factory, study_id, claim.attempt,
                                 f"gave up after {claim.attempt} attempts: {reason}", now(), TRANSIENT)
        note_error(session_factory, study_id, reason, now())
        raise RetryLater(study_id, claim.attempt, reason, error_category(exc)) from exc
    except SoftTimeLimitExceeded:
        return fail_or_retry(session_factory, study_id, claim.attempt,
                             f"the diagnosis took longer than {settings.task_soft_time_limit_s} s and was "
                             "stopped; the server may be overloaded, try again later", now(), TIME_LIMIT)
    except Exception as exc:  # a bug or an unexpected model error: retrying would not help
        log.exception("study %s: unexpected error", study_id)
        return fail_or_retry(session_factory, study_id, claim.attempt,
                             f"the diagnosis failed unexpectedly ({type(exc).__name__}); "
                             "the administrator can find the details in the worker log", now(), INTERNAL)


def describe_error(exc: BaseException) -> str:
    """A short reason for a person; the full error goes to the log."""
    if isinstance(exc, StorageError):
        return str(exc)
    if isinstance(exc, OperationalError | DisconnectionError):
        return "the database was unavailable"
    if isinstance(exc, redis.exceptions.RedisError):
        return "the queue server (Redis) was unavailable"
    return f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]


def error_category(exc: BaseException) -> str:
    """Which service a transient error came from: database, queue, storage or other."""
    if isinstance(exc, StorageError):
        return "storage"
    if isinstance(exc, OperationalError | DisconnectionError):
        return "database"
    if isinstance(exc, redis.exceptions.RedisError):
        return "queue"
    return "other"


def claim_study(session_factory: sessionmaker[Session], study_id: int, max_attempts: int,
                at: datetime) -> Claim | Outcome:
    """Take the study for this attempt, or say why not (finished, missing, out of attempts)."""
    with session_scope(session_factory) as session:
        row = session.execute(
            update(Study)
            .where(Study.id == study_id, Study.status.in_(ACTIVE), Study.attempts < max_attempts)
            .values(status=StudyStatus.PROCESSING.value, attempts=Study.attempts + 1, started_at=at, updated_at=at)
            .returning(Study.stored_path, Study.format, Study.attempts, Study.batch_id)
            .execution_options(synchronize_session=False)
        ).first()
        if row is not None:
            return Claim(stored_path=row.stored_path, format=row.format, attempt=row.attempts, batch_id=row.batch_id)
        study = session.execute(select(Study.status, Study.attempts, Study.error).where(Study.id == study_id)).first()
    if study is None:
        log.warning("study %s: no such study; message dropped", study_id)
        return Outcome(study_id, "missing", "no such study")
    if study.status in FINISHED:
        log.info("study %s is already %s; nothing to do", study_id, study.status)
        return Outcome(study_id, "skipped", study.status)
    # Still queued/processing with every attempt used: a worker died on it each time, or it kept
    # failing transiently. Give up with the last known reason.
    last = study.error or "the worker stopped while diagnosing it (the image may be too large to process)"
    return fail(session_factory, study_id, f"gave up after {study.attempts} attempts: {last}", at, ATTEMPTS_USED)


def write_files(storage: Storage, study_id: int, image: XRayImage, diagnosis: Diagnosis,
                source_format: str) -> StoredFiles:
    """Store the study's CAM sheet (and, for DICOM, its display picture), durably."""
    sheet = cam_sheet_png({f.label: f.cam for f in diagnosis.findings})
    display = storage.put_display(study_id, display_png(image)) if source_format == "dicom" else None
    return StoredFiles(heatmaps=storage.put_cam_sheet(study_id, sheet), display=display)


def record(session_factory: sessionmaker[Session], study_id: int, diagnosis: Diagnosis, files: StoredFiles,
           timings: dict[str, float], settings: Settings, finished_at: datetime) -> Outcome:
    """Write the findings and `done` in one transaction, unless another delivery finished the study."""
    result = triage(diagnosis.findings, finished_at, settings.triage_max_wait_minutes, diagnosis.frontal.flagged)
    findings = [
        {
            "study_id": study_id, "label": f.label, "probability": float(f.probability),
            "threshold": float(f.threshold), "positive": bool(f.positive), "heatmap_path": files.heatmaps,
            "box_x": None if f.box is None else f.box.x, "box_y": None if f.box is None else f.box.y,
            "box_w": None if f.box is None else f.box.width, "box_h": None if f.box is None else f.box.height,
        }
        for f in diagnosis.findings
    ]
    with session_scope(session_factory) as session:
        # The UPDATE comes first: it takes the row's write lock (PostgreSQL) or the database's
        # (SQLite), so of two deliveries racing on one study exactly one records findings.
        updated = session.execute(
            update(Study)
            .where(Study.id == study_id, Study.status.not_in(FINISHED))
            .values(status=StudyStatus.DONE.value, error=None, model_version=diagnosis.model_version,
                    model_trained=diagnosis.model_trained, model_runtime=diagnosis.runtime,
                    width=diagnosis.image_width, height=diagnosis.image_height, display_path=files.display,
                    not_frontal=diagnosis.frontal.flagged, not_frontal_reason=diagnosis.frontal.reason,
                    timings={k: round(v, 3) for k, v in timings.items()}, urgency=result.urgency,
                    due_at=result.due_at, finished_at=finished_at, updated_at=finished_at)
            .execution_options(synchronize_session=False)
        ).rowcount
        if updated != 1:
            log.info("study %s was finished by another delivery; keeping that result", study_id)
            return Outcome(study_id, "skipped", "finished by another delivery")
        session.execute(insert(Finding), findings)
        if settings.dicom_destinations:  # results go to each DICOM destination (worker/delivery.py)
            session.execute(insert(Delivery), [{"study_id": study_id, "destination": str(destination)}
                                               for destination in settings.dicom_destinations])
    log.info("study %s done: urgency %.3f, %d positive%s", study_id, result.urgency, len(diagnosis.positives),
             ", not a frontal chest X-ray" if diagnosis.frontal.flagged else "")
    return Outcome(study_id, StudyStatus.DONE.value)


def fail(session_factory: sessionmaker[Session], study_id: int, reason: str, at: datetime,
         category: str = INTERNAL) -> Outcome:
    """End a study `failed` with `reason`, of `category` (unless another delivery finished it first)."""
    reason = reason[:MAX_REASON_CHARS]
    with session_scope(session_factory) as session:
        updated = session.execute(
            update(Study)
            .where(Study.id == study_id, Study.status.not_in(FINISHED))
            .values(status=StudyStatus.FAILED.value, error=reason, finished_at=at, updated_at=at)
            .execution_options(synchronize_session=False)
        ).rowcount
    if updated != 1:
        return Outcome(study_id, "skipped", "finished by another delivery")
    log.warning("study %s failed: %s", study_id, reason)
    return Outcome(study_id, StudyStatus.FAILED.value, reason, category)


def fail_or_retry(session_factory: sessionmaker[Session], study_id: int, attempt: int, reason: str,
                  at: datetime, category: str = INTERNAL) -> Outcome:
    """Record a failure; if even that cannot reach the database, leave the study to a retry."""
    try:
        return fail(session_factory, study_id, reason, at, category)
    except TRANSIENT_ERRORS as exc:
        raise RetryLater(study_id, attempt, describe_error(exc), error_category(exc)) from exc


def note_error(session_factory: sessionmaker[Session], study_id: int, reason: str, at: datetime) -> None:
    """Remember why the last attempt failed (best effort: the database may be the thing that is down)."""
    try:
        with session_scope(session_factory) as session:
            session.execute(update(Study).where(Study.id == study_id, Study.status.not_in(FINISHED))
                            .values(error=reason[:MAX_REASON_CHARS], updated_at=at)
                            .execution_options(synchronize_session=False))
    except TRANSIENT_ERRORS as exc:
        log.warning("study %s: could not record the error: %s", study_id, exc)


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the block's milliseconds to `timings[name]`."""
    start = time.perf_counter()
    yield
    timings[name] = (time.perf_counter() - start) * 1000.0
