"""GET /healthz: the database and Redis answer, and which model version(s) the workers serve."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import select, text

from shared.models import Study
from shared.queue import heartbeat_pattern
from web.context import Services, services

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)
MAX_HEARTBEATS = 1000


def _check_database(svc: Services) -> dict[str, Any]:
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("health: database unreachable: %s", exc)
        return {"ok": False, "error": f"database unreachable ({type(exc).__name__})"}
    try:
        with svc.engine.connect() as conn:
            conn.execute(select(Study.id).limit(1))
    except Exception as exc:
        log.warning("health: database schema missing: %s", exc)
        return {"ok": False, "error": "database reachable but its tables are missing: run `xray db upgrade`"}
    return {"ok": True}


def worker_heartbeats(svc: Services) -> list[dict[str, Any]]:
    client = svc.redis()
    keys = []
    for key in client.scan_iter(match=heartbeat_pattern(svc.settings), count=200):
        keys.append(key)
        if len(keys) >= MAX_HEARTBEATS:
            break
    workers = []
    prefix = heartbeat_pattern(svc.settings).rstrip("*")
    for key, raw in zip(keys, client.mget(keys) if keys else [], strict=True):
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            beat = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(beat, dict):
            continue
        name = key.decode() if isinstance(key, bytes) else str(key)
        workers.append({
            "name": name.removeprefix(prefix),  # the worker's own name: host:pid
            "model_version": beat.get("model_version"),
            "model_trained": beat.get("model_trained"),
            "runtime": beat.get("runtime"),
            "pid": beat.get("pid"),
            "at": beat.get("at"),
        })
    return sorted(workers, key=lambda w: w["name"])


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    svc = services()
    checks: dict[str, dict[str, Any]] = {"database": _check_database(svc)}
    workers: list[dict[str, Any]] = []
    queue_length = None
    try:
        svc.redis().ping()
        workers = worker_heartbeats(svc)
        queue_length = int(svc.redis().llen(svc.settings.queue_name))
        checks["redis"] = {"ok": True}
    except RuntimeError as exc:  # no REDIS_URL configured
        checks["redis"] = {"ok": False, "error": str(exc)}
    except Exception as exc:
        log.warning("health: redis unreachable: %s", exc)
        checks["redis"] = {"ok": False, "error": f"redis unreachable ({type(exc).__name__})"}
    healthy = all(check["ok"] for check in checks.values())
    body = {
        "status": "ok" if healthy else "unavailable",
        "checks": checks,
        "failed": [name for name, check in checks.items() if not check["ok"]],
        "workers": workers,
        "model_versions": sorted({w["model_version"] for w in workers if w["model_version"]}),
        "runtimes": sorted({w["runtime"] for w in workers if w["runtime"]}),
        "queue_length": queue_length,
    }
    return jsonify(body), 200 if healthy else 503
