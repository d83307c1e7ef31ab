"""The worker's Prometheus metrics.

Each prefork child records into PROMETHEUS_MULTIPROC_DIR (shared/metrics.py); the main process, which
holds no model, serves them all on XRAY_WORKER_METRICS_PORT (`serve`, started by `xray worker`).

- `xray_worker_stage_duration_seconds{stage}`: read, decode, preprocess, forward, cam, write, record
  (the `timings` worker/processing.py measures for each study done).
- `xray_worker_studies_done_total`, `xray_worker_studies_failed_total{reason}` (processing.FAILURE_REASONS).
- `xray_worker_retries_total{cause}`: database | queue | storage | other.
- `xray_worker_model_info{version,runtime}` = 1 for each model a live worker process serves.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS_S, multiprocess_enabled, scrape_registry
from worker.processing import FAILURE_REASONS, Outcome

log = logging.getLogger(__name__)

STAGES = ("read", "decode", "preprocess", "forward", "cam", "write", "record")
RETRY_CAUSES = ("database", "queue", "storage", "other")

STAGE_LATENCY = Histogram("xray_worker_stage_duration_seconds", "Time one study spends in each stage",
                          ["stage"], buckets=LATENCY_BUCKETS_S)
STUDIES_DONE = Counter("xray_worker_studies_done", "Studies diagnosed")
STUDIES_FAILED = Counter("xray_worker_studies_failed", "Studies that ended failed, by reason category", ["reason"])
RETRIES = Counter("xray_worker_retries", "Studies sent back to the queue after a transient error, by cause",
                  ["cause"])
# A Gauge, not an Info (Info does not work in multiprocess mode): the live processes' maximum, so a
# process that stopped (mark_process_dead) no longer reports its model.
MODEL_INFO = Gauge("xray_worker_model_info", "The model version and runtime a worker process serves (1)",
                   ["version", "runtime"], multiprocess_mode="livemax")
for _reason in FAILURE_REASONS:  # every category is exported from the start, at 0
    STUDIES_FAILED.labels(reason=_reason)
for _cause in RETRY_CAUSES:
    RETRIES.labels(cause=_cause)


def observe(outcome: Outcome) -> None:
    """Count one study's end (done with its stage times, or failed with its reason category)."""
    if outcome.status == "done":
        STUDIES_DONE.inc()
        for stage in STAGES:
            if stage in outcome.timings:
                STAGE_LATENCY.labels(stage=stage).observe(outcome.timings[stage] / 1000.0)
    elif outcome.status == "failed":
        reason = outcome.category if outcome.category in FAILURE_REASONS else "internal"
        STUDIES_FAILED.labels(reason=reason).inc()


def count_retry(cause: str) -> None:
    RETRIES.labels(cause=cause if cause in RETRY_CAUSES else "other").inc()


def set_model_info(version: str, runtime: str) -> None:
    MODEL_INFO.labels(version=version, runtime=runtime).set(1)


def process_exited(pid: int | None = None) -> None:
    """A pool process stops: its live gauges (the model info) stop counting."""
    if multiprocess_enabled():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Serve every pool process's metrics over HTTP from this (the main) process, in a daemon thread."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=address, registry=scrape_registry())  # type: ignore[arg-type]
    log.info("metrics on http://%s:%d/metrics", address, port)
