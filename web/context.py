"""The services one web process holds (database, storage, Celery producer, Redis) and per-request access."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings

if TYPE_CHECKING:
    import redis
    from celery import Celery

    from shared.storage import Storage

EXTENSION_KEY = "xray"


@dataclass
class Services:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    storage: Storage
    celery: Celery
    _redis: redis.Redis | None = field(default=None, repr=False)

    def redis(self) -> redis.Redis:
        """A Redis client for /healthz (short timeouts: a health check must answer quickly)."""
        if self._redis is None:
            import redis as redis_lib

            if not self.settings.redis_url:
                raise RuntimeError("REDIS_URL is not set")
            self._redis = redis_lib.Redis.from_url(
                self.settings.redis_url, socket_connect_timeout=1, socket_timeout=2
            )
        return self._redis


def services() -> Services:
    return current_app.extensions[EXTENSION_KEY]


def db_session() -> Session:
    """The request's session; closed when the app context ends."""
    if "db_session" not in g:
        g.db_session = services().session_factory()
    return g.db_session


def close_db_session(_exc: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
