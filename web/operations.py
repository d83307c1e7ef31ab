"""The numbers of the operations page (web/ops.py): the queue, throughput, upload-to-done time, the
workers and failures, read from the database and Redis. No Flask here.

Every study query filters on `status` and `updated_at` first (index ix_studies_status_updated: a
finished study's `updated_at` is at or after its `finished_at`), so the page stays cheap at a million
studies. Failure reasons are the worker's own short texts, which never hold a patient identifier.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from shared.models import Study, StudyStatus

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
MINUTES = 60  # the throughput chart: one bar a minute over the last hour
MAX_REASONS = 20
DONE, FAILED, QUEUED, PROCESSING = (s.value for s in (StudyStatus.DONE, StudyStatus.FAILED, StudyStatus.QUEUED,
                                                        StudyStatus.PROCESSING))


@dataclass(frozen=True)
class Minute:
    start: datetime
    done: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Latency:
    """Upload-to-done seconds of the studies done in a window (None without any)."""

    window: str
    studies: int
    p50_s: float | None
    p95_s: float | None


@dataclass
class Queue:
    depth: int | None  # the Redis list's length; None when Redis cannot be asked
    queued_studies: int
    processing_studies: int
    oldest_queued_at: datetime | None
    oldest_queued_age_s: float | None
    error: str | None = None


@dataclass
class Snapshot:
    at: datetime
    queue: Queue
    per_minute: list[Minute]
    latency: list[Latency]
    workers: list[dict[str, Any]]
    failures: list[tuple[str, int]]
    workers_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        queue = asdict(self.queue)
        queue["oldest_queued_at"] = _iso(self.queue.oldest_queued_at)
        return {
            "at": _iso(self.at),
            "queue": queue,
            "per_minute": [{"start": _iso(m.start), "done": m.done, "failed": m.failed} for m in self.per_minute],
            "studies_last_hour": sum(m.done + m.failed for m in self.per_minute),
            "upload_to_done": [asdict(latency) for latency in self.latency],
            "workers": self.workers,
            "workers_error": self.workers_error,
            "failures_last_day": [{"reason": reason, "studies": n} for reason, n in self.failures],
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else _utc(moment).isoformat()


def _utc(moment: datetime) -> datetime:
    """SQLite hands datetimes back without their zone; every stored time is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _finished_since(status: str | Sequence[str], since: datetime) -> list[ColumnElement[bool]]:
    statuses = [status] if isinstance(status, str) else list(status)
    return [Study.status.in_(statuses), Study.updated_at >= since, Study.finished_at >= since]


def queue_state(session: Session, now: datetime, depth: int | None, error: str | None) -> Queue:
    counts = dict(session.execute(select(Study.status, func.count()).where(Study.status.in_([QUEUED, PROCESSING]))
                                  .group_by(Study.status)).all())
    oldest = session.scalar(select(func.min(Study.created_at)).where(Study.status == QUEUED))
    oldest = None if oldest is None else _utc(oldest)
    return Queue(depth, int(counts.get(QUEUED, 0)), int(counts.get(PROCESSING, 0)), oldest,
                 None if oldest is None else max(0.0, (now - oldest).total_seconds()), error)


def _minute_of(session: Session) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc("minute", Study.finished_at)
    return func.strftime("%Y-%m-%d %H:%M", Study.finished_at)


def per_minute(session: Session, now: datetime, minutes: int = MINUTES) -> list[Minute]:
    """Studies finished (done, failed) in each of the last `minutes` whole minutes, oldest first; the
    current, unfinished minute is the last bar."""
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=minutes)
    minute = _minute_of(session)
    counts: dict[datetime, dict[str, int]] = {}
    for bucket, status, n in session.execute(
            select(minute, Study.status, func.count()).where(*_finished_since((DONE, FAILED), start))
            .group_by(minute, Study.status)):
        moment = _utc(bucket if isinstance(bucket, datetime) else datetime.fromisoformat(str(bucket)))
        counts.setdefault(moment, {})[status] = int(n)
    slots = [start + timedelta(minutes=i) for i in range(minutes)]
    return [Minute(s, counts.get(s, {}).get(DONE, 0), counts.get(s, {}).get(FAILED, 0)) for s in slots]


def _percentiles(seconds: list[float]) -> tuple[float | None, float | None]:
    """p50 and p95 by linear interpolation between the closest ranks (PostgreSQL's percentile_cont)."""
    if not seconds:
        return None, None
    if len(seconds) == 1:
        return seconds[0], seconds[0]
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return cuts[49], cuts[94]


def latency(session: Session, now: datetime, window: timedelta, name: str) -> Latency:
    where = _finished_since(DONE, now - window)
    if session.get_bind().dialect.name == "postgresql":
        elapsed = func.extract("epoch", Study.finished_at - Study.created_at)
        n, p50, p95 = session.execute(select(
            func.count(), func.percentile_cont(0.5).within_group(elapsed),
            func.percentile_cont(0.95).within_group(elapsed)).where(*where)).one()
        return Latency(name, int(n), None if p50 is None else float(p50), None if p95 is None else float(p95))
    seconds = [(_utc(finished) - _utc(created)).total_seconds()
               for created, finished in session.execute(select(Study.created_at, Study.finished_at).where(*where))]
    p50, p95 = _percentiles(seconds)
    return Latency(name, len(seconds), p50, p95)


def failures(session: Session, now: datetime, window: timedelta = DAY,
             limit: int = MAX_REASONS) -> list[tuple[str, int]]:
    """The most frequent failure reasons of the studies that failed in `window`, most frequent first."""
    reason = func.coalesce(Study.error, "no reason recorded")
    n = func.count().label("n")
    rows = session.execute(select(reason, n).where(*_finished_since(FAILED, now - window))
                           .group_by(reason).order_by(n.desc(), reason).limit(limit))
    return [(str(text), int(count)) for text, count in rows]


def heartbeat_ages(workers: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """The workers' heartbeats (web.health) with the seconds since each one's last beat."""
    out = []
    for worker in workers:
        try:
            at = _utc(datetime.fromisoformat(str(worker.get("at"))))
            age: float | None = round(max(0.0, (now - at).total_seconds()), 1)
        except ValueError:
            age = None
        out.append({**worker, "last_heartbeat_age_s": age})
    return out


def snapshot(session: Session, now: datetime, queue_depth: int | None, workers: list[dict[str, Any]],
             redis_error: str | None) -> Snapshot:
    return Snapshot(
        at=now,
        queue=queue_state(session, now, queue_depth, redis_error),
        per_minute=per_minute(session, now),
        latency=[latency(session, now, HOUR, "last hour"), latency(session, now, DAY, "last day")],
        workers=heartbeat_ages(workers, now),
        failures=failures(session, now),
        workers_error=redis_error,
    )
