"""The web's Prometheus metrics and GET /metrics.

- `xray_http_request_duration_seconds{route,method,status}`: the URL rule (`/api/v1/studies/<int:study_id>`),
  never the path, so no id or patient data becomes a label.
- `xray_upload_files_accepted_total`, `xray_upload_files_rejected_total{reason}`: counted by the
  intake (shared/intake_metrics.py), exported here.
- Computed at scrape time: `xray_studies{status}` and `xray_queue_oldest_study_age_seconds` from the
  database, `xray_queue_messages` (Redis LLEN of the queue), `xray_metrics_source_up{source}`.

Access: an admin (API token or session), or any client whose address is in XRAY_METRICS_ALLOW; the
gate in web/auth.py lets the request through and this view decides. Several gunicorn processes:
shared/metrics.py (multiprocess mode).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, Response, abort, g, jsonify, request, request_started
from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from shared.logs import reset_log_context, set_log_context
from shared.metrics import LATENCY_BUCKETS_S, exposition, scrape_registry
from shared.models import Role, Study, StudyStatus
from web.context import Services, services

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

HTTP_LATENCY = Histogram(
    "xray_http_request_duration_seconds", "Time to answer a request, by URL rule, method and status",
    ["route", "method", "status"], buckets=LATENCY_BUCKETS_S,
)


class ServiceCollector:
    """Gauges read at scrape time: studies by status, the oldest queued study, the queue's length."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("xray_metrics_source_up", "Whether the scrape could read each source (1) or not (0)",
                               labels=["source"])
        try:
            yield from self._database()
            up.add_metric(["database"], 1)
        except Exception as exc:  # noqa: BLE001 - a scrape must still answer with what it has
            log.warning("metrics: database unreadable: %s", type(exc).__name__)
            up.add_metric(["database"], 0)
        try:
            yield self._queue()
            up.add_metric(["redis"], 1)
        except Exception as exc:  # noqa: BLE001
            log.warning("metrics: redis unreadable: %s", type(exc).__name__)
            up.add_metric(["redis"], 0)
        yield up

    def _database(self) -> list[GaugeMetricFamily]:
        counts = {status.value: 0 for status in StudyStatus}
        with self.svc.engine.connect() as conn:
            for status, count in conn.execute(select(Study.status, func.count()).group_by(Study.status)):
                counts[status] = int(count)
            oldest = conn.scalar(select(func.min(Study.created_at)).where(Study.status == StudyStatus.QUEUED.value))
        studies = GaugeMetricFamily("xray_studies", "Studies by status", labels=["status"])
        for status, count in counts.items():
            studies.add_metric([status], count)
        age = 0.0
        if oldest is not None:
            oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)  # SQLite keeps no zone
            age = max(0.0, (datetime.now(UTC) - oldest).total_seconds())
        oldest_age = GaugeMetricFamily("xray_queue_oldest_study_age_seconds",
                                       "Age of the oldest study still queued (0 when none is)")
        oldest_age.add_metric([], age)
        return [studies, oldest_age]

    def _queue(self) -> GaugeMetricFamily:
        length = int(self.svc.redis().llen(self.svc.settings.queue_name))
        gauge = GaugeMetricFamily("xray_queue_messages", "Messages waiting in the workers' Redis queue (LLEN)")
        gauge.add_metric([], length)
        return gauge


def _allowed_address(svc: Services) -> bool:
    if not svc.settings.metrics_allow or not request.remote_addr:
        return False
    try:
        address = ipaddress.ip_address(request.remote_addr)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net) for net in svc.settings.metrics_allow)


def _check_access(svc: Services) -> None:
    """An allowed address, or an admin; 401 for no or a bad token, 403 for anyone else."""
    if _allowed_address(svc):
        return
    from web.auth import _identify, current_user

    _identify()
    user = current_user()
    if user is None:
        response = jsonify(error="Metrics need an admin's API token ('Authorization: Bearer <token>') or a "
                                 "scraper address listed in XRAY_METRICS_ALLOW.")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="xray"'
        abort(response)
    if user.role != Role.ADMIN.value:
        abort(403, description="Only admins (or addresses in XRAY_METRICS_ALLOW) may read the metrics.")


@bp.get("/metrics")
def metrics() -> Response:
    svc = services()
    _check_access(svc)
    body, content_type = exposition(scrape_registry([ServiceCollector(svc)]))
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})


def _request_started(app: Flask, **_: Any) -> None:
    g.metrics_start = time.perf_counter()
    args = request.view_args or {}
    ids = {key: args[key] for key in ("study_id", "batch_id") if isinstance(args.get(key), int)}
    g.log_context_token = set_log_context(replace=True, **ids)


def _observe(response: Response) -> Response:
    start = g.get("metrics_start")
    if start is not None:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        HTTP_LATENCY.labels(route=route, method=request.method, status=str(response.status_code)).observe(
            time.perf_counter() - start)
    return response


def _end_request(_exc: BaseException | None = None) -> None:
    token = g.pop("log_context_token", None)
    if token is not None:
        reset_log_context(token)


def register_metrics(app: Flask) -> None:
    """The /metrics route, request timing and the request's log context (study_id / batch_id)."""
    app.register_blueprint(bp)
    request_started.connect(_request_started, app)
    app.after_request(_observe)
    app.teardown_request(_end_request)
