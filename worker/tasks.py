"""The tasks (names from shared.queue): thin wrappers that add Celery's retry with backoff, the study's
log context and the metrics (worker/metrics.py) around worker/processing.py (diagnosis) and
worker/delivery.py (results sent to the DICOM destinations; the diagnosis task enqueues it when a
study is done and destinations are configured)."""

from __future__ import annotations

import logging

from celery import Task

from shared.logs import log_context
from shared.queue import TASK_DELIVER, TASK_DIAGNOSE, enqueue_delivery
from worker import metrics
from worker.celery_app import app
from worker.delivery import deliver_study
from worker.processing import TRANSIENT_ERRORS, RetryLater, describe_error, process_study, retry_delay_s
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
    if outcome.status == "done" and rt.settings.dicom_destinations:
        try:
            enqueue_delivery(task.app, outcome.study_id)
        except Exception:  # the study is done; its pending deliveries wait for the reconciler
            log.exception("study %s: could not enqueue the delivery of its results", outcome.study_id)
    return {"study_id": outcome.study_id, "status": outcome.status, "reason": outcome.reason}


@app.task(name=TASK_DELIVER, bind=True, ignore_result=True)
def deliver_results(self: Task, study_id: int) -> dict[str, object]:
    """Retried with backoff while a destination is pending; each try counts on its Delivery row, which
    ends `failed` after `settings.delivery_max_attempts` tries, so the retries are bounded."""
    rt = get_runtime()
    retries = self.request.retries
    try:
        outcome = deliver_study(rt.session_factory, rt.storage, rt.settings, int(study_id))  # type: ignore[arg-type]
    except TRANSIENT_ERRORS as exc:
        if retries >= 2 * rt.settings.delivery_max_attempts:
            log.error("study %s: giving up on delivering its results (%s)", study_id, describe_error(exc))
            return {"study_id": study_id, "status": "abandoned", "reason": describe_error(exc)}
        raise self.retry(countdown=retry_delay_s(retries), max_retries=None) from exc
    if outcome.pending:
        delay = retry_delay_s(retries)
        log.warning("study %s: results still pending for %s; retrying in %.0f s", study_id,
                    ", ".join(outcome.pending), delay)
        raise self.retry(countdown=delay, max_retries=None)
    return {"study_id": study_id, "sent": list(outcome.sent), "failed": list(outcome.failed)}
