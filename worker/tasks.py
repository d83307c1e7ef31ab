"""Celery tasks (names from shared.queue): thin wrappers around worker/processing.py and
worker/reconcile.py, adding Celery's retry with exponential backoff."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from celery import Task
from kombu.exceptions import ChannelError

from shared.queue import TASK_DIAGNOSE, TASK_RECONCILE, enqueue_diagnosis
from worker.celery_app import app
from worker.processing import RetryLater, process_study, retry_delay_s
from worker.reconcile import claim_stale_studies
from worker.runtime import get_runtime
from worker.watchdog import watching

log = logging.getLogger(__name__)


@app.task(name=TASK_DIAGNOSE, bind=True, ignore_result=True)
def diagnose_study(self: Task, study_id: int) -> dict[str, object]:
    rt = get_runtime()
    try:
        with watching(int(study_id)):  # the hard limit in threads/solo pools (worker/watchdog.py)
            outcome = process_study(rt.session_factory, rt.storage, rt.diagnoser,  # type: ignore[arg-type]
                                    int(study_id), settings=rt.settings)
    except RetryLater as exc:
        retries = self.request.retries
        # The study's `attempts` column bounds retries of claimed studies; this bounds the case
        # where the database was down before the study could even be claimed.
        if retries >= 2 * rt.settings.max_attempts:
            log.error("study %s: giving up on this message after %d retries (%s); the reconciler "
                      "will send it again after %d s", study_id, retries, exc.reason,
                      rt.settings.reconcile_after_s)
            return {"study_id": study_id, "status": "abandoned", "reason": exc.reason}
        delay = retry_delay_s(retries)
        log.warning("study %s: %s; retrying in %.0f s", study_id, exc.reason, delay)
        raise self.retry(countdown=delay, max_retries=None) from exc
    return {"study_id": outcome.study_id, "status": outcome.status, "reason": outcome.reason}


def broker_queue_length(queue_name: str) -> int:
    with app.connection_for_read() as connection:
        try:
            return int(connection.default_channel.queue_declare(queue=queue_name, passive=True).message_count)
        except ChannelError:
            return 0  # Redis removes an empty list: no key, no messages


@app.task(name=TASK_RECONCILE, ignore_result=True)
def reconcile() -> list[int]:
    rt = get_runtime()
    include_queued = broker_queue_length(rt.settings.queue_name) == 0
    ids = claim_stale_studies(rt.session_factory, rt.settings, datetime.now(UTC), include_queued)
    for study_id in ids:
        enqueue_diagnosis(app, study_id)
    return ids
