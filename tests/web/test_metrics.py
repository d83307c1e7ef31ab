"""GET /metrics: who may read it (admin token, XRAY_METRICS_ALLOW ranges), and that the values move
with what the service does: uploads accepted and refused by reason, request latency by URL rule (never
a raw path), studies by status, the oldest queued study, the Redis queue's length."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from shared.config import ImageLimits, Settings
from shared.models import Study
from tests.conftest import Account
from tests.web.support import make_app, session_for, upload

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: FlaskClient, headers: dict[str, str] | None = None) -> Samples:
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_access_needs_an_admin_token_or_an_allowed_address(
        settings: Settings, account_factory: Callable[..., Account]) -> None:
    app, _ = make_app(settings, auth=False)
    client = app.test_client()
    admin, radiologist = account_factory("admin"), account_factory("radiologist")
    anonymous = client.get("/metrics")
    assert anonymous.status_code == 401 and "XRAY_METRICS_ALLOW" in anonymous.get_json()["error"]
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": "Bearer xray_wrong"}).status_code == 401
    assert client.get("/metrics", headers=radiologist.headers).status_code == 403
    assert "xray_http_request_duration_seconds" in client.get("/metrics", headers=admin.headers).get_data(as_text=True)

    # The test client comes from 127.0.0.1: a range holding it may scrape without a token, others not.
    inside, _ = make_app(settings.with_overrides(metrics_allow=("10.0.0.0/8", "127.0.0.0/8")), auth=False)
    assert inside.test_client().get("/metrics").status_code == 200
    outside, _ = make_app(settings.with_overrides(metrics_allow=("10.0.0.0/8",)), auth=False)
    assert outside.test_client().get("/metrics").status_code == 401


def test_uploads_latency_and_studies_move(settings: Settings, nih_full_images: list[Path]) -> None:
    limits = ImageLimits(max_bytes=nih_full_images[0].stat().st_size + 10)
    app, _ = make_app(settings.with_overrides(limits=limits))
    client = app.test_client()
    before = scrape(client)

    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * limits.max_bytes
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escape.png", b"x")
    response = upload(client, [(nih_full_images[0].read_bytes(), "Doe_John.png"), (b"GIF89a not an x-ray", "cat.gif"),
                               (big, "big.png"), (archive.getvalue(), "scans.zip")])
    assert response.status_code == 201, response.get_json()
    study_id = response.get_json()["accepted"][0]["id"]
    assert client.get(f"/api/v1/studies/{study_id}").status_code == 200
    with session_for(settings) as session:  # the study has waited an hour
        session.execute(update(Study).values(created_at=datetime.now(UTC) - timedelta(hours=1)))
        session.commit()
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("xray_upload_files_accepted_total") == 1
    assert moved("xray_upload_files_rejected_total", reason="invalid_image") == 1
    assert moved("xray_upload_files_rejected_total", reason="too_large") == 1
    assert moved("xray_upload_files_rejected_total", reason="archive_refused") == 1
    assert moved("xray_upload_files_rejected_total", reason="unreadable") == 0
    assert moved("xray_http_request_duration_seconds_count", route="/api/v1/batches", method="POST",
                 status="201") == 1
    assert moved("xray_http_request_duration_seconds_count", route="/api/v1/studies/<int:study_id>",
                 method="GET", status="200") == 1
    assert value(after, "xray_studies", status="queued") == 1
    assert value(after, "xray_studies", status="done") == 0
    assert 3600 <= value(after, "xray_queue_oldest_study_age_seconds") < 3700
    assert value(after, "xray_metrics_source_up", source="database") == 1
    # Labels name URL rules, never a path with an id, nor anything a client sent.
    routes = {dict(labels).get("route") for _, labels in after}
    assert f"/api/v1/studies/{study_id}" not in routes
    text = client.get("/metrics").get_data(as_text=True)
    assert "Doe_John" not in text and "cat.gif" not in text


def test_queue_length_from_redis(settings: Settings, redis_url: str) -> None:
    app, _ = make_app(settings.with_overrides(redis_url=redis_url))
    client = app.test_client()
    queue = redis.Redis.from_url(redis_url)
    try:
        queue.lpush(settings.queue_name, "a", "b", "c")
        samples = scrape(client)
        assert value(samples, "xray_queue_messages") == 3
        assert value(samples, "xray_metrics_source_up", source="redis") == 1
        assert value(samples, "xray_queue_oldest_study_age_seconds") == 0  # nothing queued in the database
    finally:
        queue.delete(settings.queue_name)
        queue.close()


def test_redis_down_still_answers(settings: Settings) -> None:
    app, _ = make_app(settings.with_overrides(redis_url="redis://127.0.0.1:1/0"))
    samples = scrape(app.test_client())
    assert value(samples, "xray_metrics_source_up", source="redis") == 0
    assert ("xray_queue_messages", frozenset()) not in samples
    assert value(samples, "xray_metrics_source_up", source="database") == 1


@pytest.mark.parametrize("raw", ["10.0.0.0/33", "not-a-range"])
def test_bad_allow_list_is_refused_at_start(raw: str) -> None:
    from shared.config import load_settings

    with pytest.raises(ValueError, match="XRAY_METRICS_ALLOW"):
        load_settings({"XRAY_METRICS_ALLOW": f"127.0.0.1/32, {raw}"})
