"""The operations page for admins (`GET /ops`) and its JSON (`GET /api/v1/ops`): queue depth and the
oldest waiting study, studies a minute over the last hour (a bar chart drawn here as inline SVG:
nothing external loads, no script runs), upload-to-done p50 and p95 over the last hour and day, the
workers alive (their Redis heartbeats, as /healthz reads them) and failures by reason over the last day.

When Redis cannot be asked, the page still answers with what the database knows and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, render_template

from web.context import db_session, services
from web.health import worker_heartbeats
from web.operations import Minute, Snapshot, snapshot

bp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)

CHART_WIDTH, CHART_HEIGHT, BAR_GAP = 720, 160, 2


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    done_y: float
    done_height: float
    failed_y: float
    failed_height: float
    title: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    top: int  # the value the top of the chart stands for
    bars: list[Bar]


def chart(minutes: list[Minute], width: int = CHART_WIDTH, height: int = CHART_HEIGHT) -> Chart:
    """Stacked bars, done below failed, scaled to the busiest minute."""
    top = max([1] + [m.done + m.failed for m in minutes])
    step = width / max(1, len(minutes))
    bars = []
    for i, minute in enumerate(minutes):
        done_h = height * minute.done / top
        failed_h = height * minute.failed / top
        bars.append(Bar(
            x=round(i * step, 2), width=round(max(1.0, step - BAR_GAP), 2),
            done_y=round(height - done_h, 2), done_height=round(done_h, 2),
            failed_y=round(height - done_h - failed_h, 2), failed_height=round(failed_h, 2),
            title=f"{minute.start:%H:%M} UTC: {minute.done} done, {minute.failed} failed"))
    return Chart(width, height, top, bars)


def _snapshot() -> Snapshot:
    svc = services()
    depth, workers, error = None, [], None
    try:
        depth = int(svc.redis().llen(svc.settings.queue_name))
        workers = worker_heartbeats(svc)
    except RuntimeError as exc:  # no REDIS_URL configured
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - any Redis or network error: the page says Redis is unreachable
        log.warning("ops: redis unreachable: %s", exc)
        error = f"Redis unreachable ({type(exc).__name__}): the queue depth and the workers are unknown"
    return snapshot(db_session(), datetime.now(UTC), depth, workers, error)


def duration(seconds: float | None) -> str:
    """A duration for people: 42 s, 3.5 min, 2.0 h."""
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@bp.get("/ops")
def page() -> str:
    snap = _snapshot()
    return render_template("ops.html", snap=snap, chart=chart(snap.per_minute), duration=duration,
                           studies_last_hour=sum(m.done + m.failed for m in snap.per_minute))


@bp.get("/api/v1/ops")
def status() -> Response:
    body: dict[str, Any] = _snapshot().as_json()
    return jsonify(body)
