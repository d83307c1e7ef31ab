"""Worker heartbeat (docs/INTERFACES.md): each worker process keeps a Redis key with what it serves.

Key `heartbeat_key(settings, name)`, JSON `{"model_version", "model_trained", "runtime", "pid", "at"}`
(`runtime` is the runtime and precision serving the model, e.g. `openvino-bf16`),
TTL `HEARTBEAT_TTL_S`, refreshed every third of the TTL by a daemon thread; deleted on a clean stop.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from datetime import UTC, datetime

import redis

from shared.config import Settings
from shared.queue import HEARTBEAT_TTL_S, heartbeat_key

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    def __init__(self, settings: Settings, redis_url: str, model_version: str, model_trained: bool,
                 runtime: str, ttl_s: int = HEARTBEAT_TTL_S) -> None:
        self.key = heartbeat_key(settings, worker_name())
        self._fields = {"model_version": model_version, "model_trained": model_trained,
                        "runtime": runtime, "pid": os.getpid()}
        self._ttl_s = ttl_s
        self._client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xray-heartbeat", daemon=True)

    def payload(self) -> dict[str, object]:
        return {**self._fields, "at": datetime.now(UTC).isoformat()}

    def beat(self) -> None:
        self._client.set(self.key, json.dumps(self.payload()), ex=self._ttl_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        try:
            self._client.delete(self.key)
        except redis.RedisError as exc:
            log.warning("heartbeat: could not remove %s: %s", self.key, exc)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat: could not reach Redis: %s", exc)
            self._stop.wait(max(1.0, self._ttl_s / 3))
