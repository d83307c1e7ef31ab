"""Helpers the web tests share (no tests here): an app on a temporary SQLite database whose tables
come from the ORM metadata (the app itself never creates tables), and a recording Celery producer."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.models import Base, Batch, Study, StudyStatus
from tests.conftest import make_account, token_client_class


@dataclass
class RecordingProducer:
    """Stands in for the Celery producer app: records `send_task` calls (the only method the web
    uses, via shared.queue.enqueue_diagnosis); `on_send` runs first and may raise."""

    on_send: Callable[[str, list[Any]], None] | None = None
    sent: list[tuple[str, list[Any]]] = field(default_factory=list)

    def send_task(self, name: str, args: list[Any] | None = None, **_kwargs: Any) -> None:
        if self.on_send is not None:
            self.on_send(name, list(args or []))
        self.sent.append((name, list(args or [])))


def make_tables(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    Base.metadata.create_all(engine)
    engine.dispose()


def make_app(settings: Settings, producer: Any | None = None, tables: bool = True,
             auth: bool | None = None) -> tuple[Flask, Any]:
    """The app on `settings`. With `auth` (the default when `tables`) an admin account is made and every
    test client of this app sends its Bearer token (`app.config["TEST_ACCOUNT"]`); `auth=False` leaves
    clients anonymous, for the tests of authentication itself."""
    from web import create_app

    if tables:
        make_tables(settings)
    producer = producer if producer is not None else RecordingProducer()
    app = create_app(settings, celery=producer)
    app.config["TESTING"] = True
    if auth is None:
        auth = tables
    if auth:
        account = make_account(settings.database_url, f"tester-{uuid.uuid4().hex[:8]}", "admin")
        app.config["TEST_ACCOUNT"] = account
        app.test_client_class = token_client_class(account.token)
    return app, producer


def session_for(settings: Settings) -> Session:
    return make_session_factory(make_engine(settings.database_url))()


def upload(client: FlaskClient, files: list[tuple[bytes, str]], url: str = "/api/v1/batches",
           **form: str) -> Any:
    data: dict[str, Any] = {"files": [(io.BytesIO(content), name) for content, name in files], **form}
    return client.post(url, data=data, content_type="multipart/form-data")


def stored_originals(settings: Settings) -> list[Path]:
    root = settings.storage_dir / "originals"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def add_study(session: Session, batch: Batch, *, status: str = StudyStatus.DONE.value,
              due_at: datetime | None = None, name: str = "x.png", **fields: Any) -> Study:
    values: dict[str, Any] = {
        "sha256": "0" * 64, "stored_path": "originals/00/" + "0" * 64 + ".png", "format": "png",
        "size_bytes": 1, "width": 1024, "height": 1024, **fields,
    }
    study = Study(batch=batch, status=status, original_filename=name, due_at=due_at, **values)
    session.add(study)
    session.flush()
    return study


def utc(hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 1, 6, hour, minute, tzinfo=UTC)


def mark_done(settings: Settings, study_id: int) -> None:
    """Finish a study as far as the web can tell: status done and, for a DICOM, the display picture
    the worker stores (`shared.display`), made from the stored original."""
    from shared.display import display_png
    from shared.images import read_image
    from shared.storage import LocalStorage

    storage = LocalStorage(settings.storage_dir)
    with session_for(settings) as session:
        study = session.get(Study, study_id)
        assert study is not None
        study.status = StudyStatus.DONE.value
        if study.format == "dicom":
            decoded = read_image(storage.read(study.stored_path), settings.limits)
            study.display_path = storage.put_display(study_id, display_png(decoded))
        session.commit()


def csrf_of(html: str) -> str:
    """The CSRF token a page carries (a form's hidden field, or the meta tag csrf.js reads)."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(
        r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def log_in(client: FlaskClient, username: str, password: str, next_url: str = "") -> tuple[int, str]:
    """Log in through the login form (a page session in the client's cookie): (status, Location)."""
    token = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"username": username, "password": password, "csrf_token": token,
                                           "next": next_url})
    return response.status_code, response.headers.get("Location", "")
