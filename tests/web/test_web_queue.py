"""The real producer path: create_app's own Celery producer puts one message per accepted study on
the real Redis (this test's own queue), after the rows are committed."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import redis

from shared.config import Settings
from shared.queue import TASK_DIAGNOSE
from tests.conftest import make_account, token_client_class
from tests.service_harness import delete_queue_keys
from tests.web.support import make_tables, upload


def test_messages_reach_the_real_broker(settings: Settings, redis_url: str, nih_full_images: list[Path]) -> None:
    from web import create_app

    settings = settings.with_overrides(redis_url=redis_url)
    make_tables(settings)
    app = create_app(settings)  # its own producer, from settings.redis_url
    app.test_client_class = token_client_class(make_account(settings.database_url).token)
    client = redis.Redis.from_url(redis_url)
    try:
        files = [(p.read_bytes(), p.name) for p in nih_full_images[:2]] + [(b"junk", "junk.png")]
        body = upload(app.test_client(), files).get_json()
        ids = [a["id"] for a in body["accepted"]]
        assert len(ids) == 2 and all(a["enqueued"] for a in body["accepted"])
        messages = [json.loads(raw) for raw in client.lrange(settings.queue_name, 0, -1)]
        assert sorted(m["headers"]["task"] for m in messages) == [TASK_DIAGNOSE] * 2
        sent_ids = sorted(json.loads(base64.b64decode(m["body"]))[0][0] for m in messages)
        assert sent_ids == sorted(ids)
    finally:
        delete_queue_keys(redis_url, settings.queue_name)
