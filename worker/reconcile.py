"""The reconciler: finds studies left `queued` or `processing` too long (a lost message, a killed
worker) and sends them to the workers again; likewise deliveries of results left `pending` with no
try for longer than any retry waits (`claim_stale_deliveries`).

Each `xray worker` main process runs `Reconciler`, a timer thread outside the queue (a backlog of
studies cannot hold it back). Every `reconcile_interval_s` it claims the stale studies in one
UPDATE ... RETURNING (several workers reconciling at once each send a study at most once per
`reconcile_after_s`) and sends them. A queued study counts as lost only when no message for it waits
in the broker, so a long backlog is never sent twice. Duplicates would be harmless anyway: the
diagnosis task is idempotent.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

import redis
from celery import Celery
from sqlalchemy import and_, or_, update
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import make_engine, make_session_factory, session_scope
from shared.models import Delivery, DeliveryStatus, Study, StudyStatus
from shared.queue import TASK_DIAGNOSE, enqueue_delivery, enqueue_diagnosis

log = logging.getLogger(__name__)

# A study `processing` for less than its time limit plus this margin may still be running.
PROCESSING_MARGIN_S = 60
UNACKED_KEY = "unacked"  # kombu's Redis transport: messages taken by a worker and not yet acknowledged
_CHUNK = 1000


def reconcile_interval_s(settings: Settings) -> float:
    return min(30.0, max(1.0, settings.reconcile_after_s / 2))


def claim_stale_studies(session_factory: sessionmaker[Session], settings: Settings, now: datetime,
                        waiting: Collection[int] = ()) -> list[int]:
    """Ids of studies to send again; each is claimed (updated_at := now) so no other reconciler sends it.

    Queued studies are stale after `reconcile_after_s` unless their id is in `waiting` (a message for
    them is in the broker); processing ones only once they cannot still be running
    (`task_time_limit_s` plus a margin, if that is longer).
    """
    processing_after = max(settings.reconcile_after_s, settings.task_time_limit_s + PROCESSING_MARGIN_S)
    stale_processing = and_(Study.status == StudyStatus.PROCESSING.value,
                            Study.updated_at < now - timedelta(seconds=processing_after))
    stale_queued = and_(Study.status == StudyStatus.QUEUED.value,
                        Study.updated_at < now - timedelta(seconds=settings.reconcile_after_s))
    if waiting:
        stale_queued = and_(stale_queued, Study.id.not_in(sorted(waiting)))
    with session_scope(session_factory) as session:
        ids = session.execute(
            update(Study).where(or_(stale_processing, stale_queued)).values(updated_at=now).returning(Study.id)
            .execution_options(synchronize_session=False)
        ).scalars().all()
    if ids:
        log.warning("reconciler: re-enqueueing %d stale studies: %s", len(ids), sorted(ids)[:20])
    return sorted(ids)


def delivery_stale_after_s(settings: Settings) -> float:
    """A pending delivery untried for longer than the longest retry wait plus a task's time is lost."""
    from worker.processing import RETRY_CAP_S

    return RETRY_CAP_S + settings.task_time_limit_s + PROCESSING_MARGIN_S


def claim_stale_deliveries(session_factory: sessionmaker[Session], settings: Settings, now: datetime) -> list[int]:
    """Ids of the studies whose results to send again: a pending delivery row untried for
    `delivery_stale_after_s` (its message was lost, or could not be sent). Claimed like studies."""
    stale = now - timedelta(seconds=delivery_stale_after_s(settings))
    with session_scope(session_factory) as session:
        ids = session.execute(
            update(Delivery).where(Delivery.status == DeliveryStatus.PENDING.value, Delivery.updated_at < stale)
            .values(updated_at=now).returning(Delivery.study_id)
            .execution_options(synchronize_session=False)
        ).scalars().all()
    if ids:
        log.warning("reconciler: re-enqueueing the delivery of %d studies' results", len(set(ids)))
    return sorted(set(ids))


def waiting_study_ids(client: redis.Redis, queue_name: str) -> set[int]:
    """Ids of the studies whose diagnosis messages wait in the broker's list for `queue_name`, or
    were taken by a worker and not yet acknowledged."""
    messages = [_json(raw) for start in range(0, int(client.llen(queue_name)), _CHUNK)
                for raw in client.lrange(queue_name, start, start + _CHUNK - 1)]
    for entry in map(_json, client.hvals(UNACKED_KEY)):  # [message, exchange, routing key]
        if isinstance(entry, list) and len(entry) == 3 and entry[2] == queue_name:
            messages.append(entry[0])
    return {study_id for study_id in map(_study_id, messages) if study_id is not None}


def _json(raw: bytes | str) -> object:
    try:
        return json.loads(raw)
    except (ValueError, TypeError):
        return None


def _study_id(message: object) -> int | None:
    """The study id of one kombu message of the diagnosis task (JSON body, base64 or not)."""
    if not isinstance(message, dict):
        return None
    try:
        if message.get("headers", {}).get("task") != TASK_DIAGNOSE:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return int(args[0])
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None


class Reconciler:
    """Reconciles every `reconcile_interval_s` in a daemon thread of the worker's main process."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self._app = app
        self._settings = settings
        self._interval_s = reconcile_interval_s(settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xray-reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        engine = make_engine(self._settings.database_url)
        session_factory = make_session_factory(engine)
        client = redis.Redis.from_url(self._settings.redis_url or self._app.conf.broker_url, socket_timeout=10)
        try:
            while True:
                try:
                    waiting = waiting_study_ids(client, self._settings.queue_name)
                    for study_id in claim_stale_studies(session_factory, self._settings, datetime.now(UTC), waiting):
                        enqueue_diagnosis(self._app, study_id)
                    for study_id in claim_stale_deliveries(session_factory, self._settings, datetime.now(UTC)):
                        enqueue_delivery(self._app, study_id)
                except Exception as exc:  # noqa: BLE001 - the database or Redis may be briefly away
                    log.warning("reconciler: could not reconcile now (%s); trying again in %.0f s",
                                type(exc).__name__, self._interval_s)
                if self._stop.wait(self._interval_s):
                    break
        finally:
            client.close()
            engine.dispose()
