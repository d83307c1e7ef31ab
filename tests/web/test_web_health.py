"""/healthz: 200 when the database and Redis answer, 503 naming the one that failed; the model
version(s) come from the workers' heartbeat keys (real Redis, this test's own queue name)."""

from __future__ import annotations

import json
import time

import redis

from shared.config import Settings
from shared.queue import HEARTBEAT_TTL_S, heartbeat_key
from tests.web.support import make_app


def test_healthy_with_worker_model_versions(settings: Settings, redis_url: str) -> None:
    settings = settings.with_overrides(redis_url=redis_url)
    client = redis.Redis.from_url(redis_url)
    keys = [heartbeat_key(settings, name) for name in ("host-a.1", "host-b.2")]
    beats = [
        {"model_version": "1f2e3d4c5b6a7980", "model_trained": True, "runtime": "tensorflow-f32", "pid": 11,
         "at": time.time()},
        {"model_version": "0a0b0c0d0e0f0102", "model_trained": False, "runtime": "openvino-bf16", "pid": 12,
         "at": time.time()},
    ]
    try:
        for key, beat in zip(keys, beats, strict=True):
            client.set(key, json.dumps(beat), ex=HEARTBEAT_TTL_S)
        app, _ = make_app(settings)
        response = app.test_client().get("/healthz")
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["status"] == "ok" and body["failed"] == []
        assert body["checks"] == {"database": {"ok": True}, "redis": {"ok": True}}
        assert body["model_versions"] == ["0a0b0c0d0e0f0102", "1f2e3d4c5b6a7980"]
        assert [(w["name"], w["model_trained"], w["runtime"]) for w in body["workers"]] == [
            ("host-a.1", True, "tensorflow-f32"), ("host-b.2", False, "openvino-bf16")]
        assert body["runtimes"] == ["openvino-bf16", "tensorflow-f32"]
        assert body["queue_length"] == 0
    finally:
        client.delete(*keys)


def test_no_workers_is_still_healthy(settings: Settings, redis_url: str) -> None:
    app, _ = make_app(settings.with_overrides(redis_url=redis_url))
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["workers"] == [] and response.get_json()["model_versions"] == []


def test_redis_down_is_503_naming_redis(settings: Settings) -> None:
    app, _ = make_app(settings.with_overrides(redis_url="redis://127.0.0.1:1/0"))
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["failed"] == ["redis"] and body["checks"]["database"]["ok"] is True
    assert "redis" in body["checks"]["redis"]["error"]


def test_database_without_tables_is_503_naming_database(settings: Settings, redis_url: str) -> None:
    app, _ = make_app(settings.with_overrides(redis_url=redis_url), tables=False)
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["failed"] == ["database"]
    assert "xray db upgrade" in body["checks"]["database"]["error"]


def test_database_unreachable_is_503(settings: Settings, redis_url: str) -> None:
    unreachable = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"
    app, _ = make_app(settings.with_overrides(redis_url=redis_url, database_url=unreachable), tables=False)
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["failed"] == ["database"] and "unreachable" in body["checks"]["database"]["error"]


def test_app_does_not_create_tables(settings: Settings, redis_url: str) -> None:
    from sqlalchemy import inspect

    from shared.db import make_engine

    app, _ = make_app(settings.with_overrides(redis_url=redis_url), tables=False)
    app.test_client().get("/healthz")
    assert inspect(make_engine(settings.database_url)).get_table_names() == []
