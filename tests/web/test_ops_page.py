"""The operations page and its JSON: admins only; queue depth from the real Redis list, the oldest waiting
study, studies a minute over the last hour, upload-to-done p50/p95, workers from their heartbeats and
failures by reason, the same on SQLite and PostgreSQL; without Redis the page still answers and says so."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy.orm import Session

from migrations import upgrade
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.models import Batch
from shared.queue import heartbeat_key
from tests.conftest import Account
from tests.web.support import add_study, make_app, session_for
from web.operations import snapshot

DURATIONS_S = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]  # upload to done, the studies of the last hour


def _seed(session: Session, now: datetime) -> None:
    """Ten studies done in the last hour (three of them in the minute before `now`), one done yesterday
    morning (last day only), two failed for one reason and one for another today, one failed three days
    ago (outside every window), and two queued, the older one 7 minutes ago."""
    batch = Batch()
    session.add(batch)
    for i, seconds in enumerate(DURATIONS_S):
        finished = now - timedelta(minutes=1 if i < 3 else 10 + i)
        add_study(session, batch, status="done", created_at=finished - timedelta(seconds=seconds),
                  finished_at=finished, updated_at=finished)
    day = now - timedelta(hours=20)
    add_study(session, batch, status="done", created_at=day - timedelta(seconds=1000), finished_at=day, updated_at=day)
    for reason, when in (("not an image", now - timedelta(minutes=5)), ("not an image", now - timedelta(hours=3)),
                         ("gave up after 3 attempts: timeout", now - timedelta(hours=2)),
                         ("old failure", now - timedelta(days=3))):
        add_study(session, batch, status="failed", error=reason, created_at=when - timedelta(seconds=5),
                  finished_at=when, updated_at=when)
    for minutes in (7, 2):
        created = now - timedelta(minutes=minutes)
        add_study(session, batch, status="queued", created_at=created, updated_at=created)
    session.commit()


def _check(body: dict, now: datetime) -> None:  # type: ignore[type-arg]
    queue = body["queue"]
    assert queue["queued_studies"] == 2 and queue["processing_studies"] == 0
    assert abs(queue["oldest_queued_age_s"] - 420) < 60
    minutes = body["per_minute"]
    assert len(minutes) == 60 and body["studies_last_hour"] == 11  # 10 done + 1 failed
    minute_before = (now - timedelta(minutes=1)).replace(second=0, microsecond=0)
    assert {"start": minute_before.isoformat(), "done": 3, "failed": 0} in minutes
    hour, day = body["upload_to_done"]
    assert (hour["window"], hour["studies"], day["studies"]) == ("last hour", 10, 11)
    assert hour["p50_s"] == pytest.approx(55, abs=0.01) and hour["p95_s"] == pytest.approx(95.5, abs=0.01)
    # p95 of the day: rank 9.5 of 11, between 100 s and 1000 s: 100 + 0.5 x 900.
    assert day["p50_s"] == pytest.approx(60, abs=0.01) and day["p95_s"] == pytest.approx(550, abs=0.01)
    assert body["failures_last_day"] == [{"reason": "not an image", "studies": 2},
                                         {"reason": "gave up after 3 attempts: timeout", "studies": 1}]


def test_ops_json_and_page(settings: Settings, redis_url: str, account_factory: Callable[..., Account]) -> None:
    settings = settings.with_overrides(redis_url=redis_url)
    app, _ = make_app(settings, auth=False)
    admin = account_factory("admin")
    with session_for(settings) as session:
        _seed(session, datetime.now(UTC))
    client = redis.Redis.from_url(redis_url)
    client.rpush(settings.queue_name, b"m1", b"m2", b"m3")
    beat = {"model_version": "resnet50-v7", "model_trained": True, "runtime": "openvino-bf16", "pid": 42,
            "at": (datetime.now(UTC) - timedelta(seconds=12)).isoformat()}
    client.set(heartbeat_key(settings, "ward-host:42"), json.dumps(beat), ex=60)
    http = app.test_client()

    response = http.get("/api/v1/ops", headers=admin.headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    _check(body, datetime.fromisoformat(body["at"]))
    assert body["queue"]["depth"] == 3 and body["workers_error"] is None
    [worker] = body["workers"]
    assert (worker["name"], worker["runtime"], worker["model_version"]) == (
        "ward-host:42", "openvino-bf16", "resnet50-v7")
    assert 10 <= worker["last_heartbeat_age_s"] < 60

    html = http.get("/ops", headers=admin.headers).get_data(as_text=True)
    assert '<svg class="chart" id="throughput-chart"' in html and html.count('class="chart-done"') == 60
    assert 'id="queue-depth">3<' in html and "openvino-bf16" in html and "resnet50-v7" in html
    assert "not an image" in html and "old failure" not in html and re.search(r"waiting 7\.\d min", html)
    assert "<script" not in html.split("</head>", 1)[1]  # the chart is drawn by the server: no script
    assert 'http-equiv="refresh"' in html


def test_ops_without_redis_still_answers(settings: Settings, account_factory: Callable[..., Account]) -> None:
    app, _ = make_app(settings, auth=False)  # no REDIS_URL
    admin = account_factory("admin")
    body = app.test_client().get("/api/v1/ops", headers=admin.headers).get_json()
    assert body["queue"]["depth"] is None and body["workers"] == []
    assert "REDIS_URL" in body["workers_error"]
    html = app.test_client().get("/ops", headers=admin.headers).get_data(as_text=True)
    assert 'id="redis-error"' in html and "none waiting" in html


def test_only_admins_see_operations(settings: Settings, account_factory: Callable[..., Account]) -> None:
    app, _ = make_app(settings, auth=False)
    client = app.test_client()
    for role in ("uploader", "radiologist"):
        account = account_factory(role)
        for url in ("/ops", "/api/v1/ops"):
            assert client.get(url, headers=account.headers).status_code == 403, (role, url)
        assert "Operations" not in client.get("/", headers=account.headers).get_data(as_text=True)
    admin = account_factory("admin")
    assert 'href="/ops"' in client.get("/worklist", headers=admin.headers).get_data(as_text=True)
    assert client.get("/api/v1/ops").status_code == 401


@pytest.mark.postgres
def test_postgres_gives_the_same_numbers(postgres_url: str) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    try:
        with make_session_factory(engine)() as session:
            now = datetime.now(UTC)
            _seed(session, now)
            body = snapshot(session, now, None, [], None).as_json()
    finally:
        engine.dispose()
    _check(body, now)
