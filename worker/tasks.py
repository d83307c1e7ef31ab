"""The diagnosis task (name from shared.queue): a thin wrapper around worker/processing.py that adds
Celery's retry with backoff, the study's log context and the metrics (worker/metrics.py)."""

from __future__ import annotations

import logging

from celery import Task

from shared.logs import log_context
from shared.queue import TASK_DIAGNOSE
from worker import metrics
from worker.celery_app import app
from worker.processing import RetryLater, process_study, retry_delay_s
from worker.runtime import get_runtime

log = logging.getLogger(__name__)


@app.task(name=TASK_DIAGNOSE, bind=True, ignore_result=True)
def diagnose_study(self: Task, study_id: int) -> dict[str, object]:
    with log_context(study_id=int(study_id)):
        return _diagnose(self, int(study_id))


def _diagnose(task: Task, study_id: int) -> dict[str, object]:
    rt = get_runtime()
    try:
        outcome = process_study(rt.session_factory, rt.storage, rt.diagnoser,  # type: ignore[arg-type]
                                study_id, settings=rt.settings)
    except RetryLater as exc:
        retries = task.request.retries
        # The study's `attempts` column bounds retries of claimed studies; this bounds the case
        # where the database was down before the study could even be claimed.
        if retries >= 2 * rt.settings.max_attempts:
            log.error("study %s: giving up on this message after %d retries (%s); the reconciler "
                      "will send it again", study_id, retries, exc.reason)
            return {"study_id": study_id, "status": "abandoned", "reason": exc.reason}
        delay = retry_delay_s(retries)
        log.warning("study %s: %s; retrying in %.0f s", study_id, exc.reason, delay)
        metrics.count_retry(exc.cause)
        raise task.retry(countdown=delay, max_retries=None) from exc
    metrics.observe(outcome)
    return {"study_id": outcome.study_id, "status": outcome.status, "reason": outcome.reason}
