"""worker/reconcile.py against the real Redis: which studies' messages wait in the broker (so a long
backlog is not sent twice), read from what Celery itself sent."""

from __future__ import annotations

import json

import redis

from shared.config import Settings
from shared.queue import TASK_DIAGNOSE, enqueue_diagnosis, make_celery
from worker.reconcile import UNACKED_KEY, waiting_study_ids


def test_waiting_ids_are_read_from_the_queue_and_the_unacknowledged(settings: Settings, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    producer = make_celery(settings, redis_url)
    unacked_tag = f"test-{settings.queue_name}"
    try:
        assert waiting_study_ids(client, settings.queue_name) == set()
        for study_id in (7, 12, 2001):
            enqueue_diagnosis(producer, study_id)
        producer.send_task("some.other.task", args=[99], queue=settings.queue_name)
        client.rpush(settings.queue_name, b"not json")
        assert waiting_study_ids(client, settings.queue_name) == {7, 12, 2001}
        # A message a worker has taken but not acknowledged still counts; one for another queue does not.
        raw = next(m for m in client.lrange(settings.queue_name, 0, -1) if b"diagnose_study" in m)
        client.lrem(settings.queue_name, 1, raw)
        taken = json.loads(raw)
        client.hset(UNACKED_KEY, unacked_tag, json.dumps([taken, "", settings.queue_name]))
        client.hset(UNACKED_KEY, unacked_tag + "-other", json.dumps([taken, "", "another.queue"]))
        assert waiting_study_ids(client, settings.queue_name) == {7, 12, 2001}
        assert taken["headers"]["task"] == TASK_DIAGNOSE
    finally:
        client.hdel(UNACKED_KEY, unacked_tag, unacked_tag + "-other")
        client.delete(settings.queue_name)
        client.close()
