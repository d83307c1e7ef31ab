"""The reconciler: finds studies left `queued` or `processing` too long (a lost message, a killed
worker) so that they are sent to the workers again.

The mechanism: each `xray worker` main process runs a small timer thread (`ReconcileTimer`) that
sends the `TASK_RECONCILE` task to the queue every `reconcile_interval_s(settings)`; the message
expires after one interval so that a busy queue never piles them up. The task (in a pool process)
calls `claim_stale_studies`, which bumps `updated_at` of each stale study in one UPDATE ... RETURNING:
when several workers reconcile at once, each stale study is claimed by exactly one of them and sent
once per `reconcile_after_s`. Duplicates would be harmless anyway: the diagnosis task is idempotent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, update
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import session_scope
from shared.models import Study, StudyStatus

log = logging.getLogger(__name__)

# A study `processing` for less than its time limit plus this margin may still be running.
PROCESSING_MARGIN_S = 60


def reconcile_interval_s(settings: Settings) -> float:
    return min(300.0, max(1.0, settings.reconcile_after_s / 2))


def claim_stale_studies(session_factory: sessionmaker[Session], settings: Settings, now: datetime,
                        include_queued: bool = True) -> list[int]:
    """Ids of studies to send again; each is claimed (updated_at := now) so no other reconciler sends it.

    Queued studies are stale after `reconcile_after_s`; processing ones only once they cannot still be
    running (`task_time_limit_s` plus a margin, if that is longer). `include_queued=False` when the
    broker still holds messages: those studies are most likely simply waiting their turn.
    """
    processing_after = max(settings.reconcile_after_s, settings.task_time_limit_s + PROCESSING_MARGIN_S)
    stale_processing = and_(Study.status == StudyStatus.PROCESSING.value,
                            Study.updated_at < now - timedelta(seconds=processing_after))
    stale_queued = and_(Study.status == StudyStatus.QUEUED.value,
                        Study.updated_at < now - timedelta(seconds=settings.reconcile_after_s))
    condition = or_(stale_processing, stale_queued) if include_queued else stale_processing
    with session_scope(session_factory) as session:
        ids = session.execute(
            update(Study).where(condition).values(updated_at=now).returning(Study.id)
            .execution_options(synchronize_session=False)
        ).scalars().all()
    if ids:
        log.warning("reconciler: re-enqueueing %d stale studies: %s", len(ids), sorted(ids)[:20])
    return sorted(ids)


class ReconcileTimer:
    """Calls `send()` now and then every `interval_s` seconds in a daemon thread until stopped."""

    def __init__(self, send: Callable[[], None], interval_s: float) -> None:
        self._send = send
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xray-reconcile-timer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._send()
            except Exception as exc:  # noqa: BLE001 - Redis may be briefly away; try next time
                log.warning("reconciler: could not send the reconcile task: %s", exc)
            self._stop.wait(self._interval_s)
