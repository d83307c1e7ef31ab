"""Duplicates are found only among what the uploader may see: an uploader sending bytes that another
uploader already sent gets a study of their own in their own batch (and learns nothing of the other's
study id, batch or status); the same uploader sending them again, or an admin, gets the earlier study."""

from __future__ import annotations

import io
from collections.abc import Callable

from flask.testing import FlaskClient
from PIL import Image

from shared.config import Settings
from tests.conftest import Account
from tests.web.support import make_app


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (160, 128), 77).save(buffer, format="PNG")
    return buffer.getvalue()


def _send(client: FlaskClient, account: Account, data: bytes) -> tuple[int, dict]:  # type: ignore[type-arg]
    response = client.post("/api/v1/batches", headers=account.headers, content_type="multipart/form-data",
                           data={"files": [(io.BytesIO(data), "chest.png")]})
    return response.status_code, response.get_json()


def test_a_second_uploader_gets_their_own_study(settings: Settings, account_factory: Callable[..., Account]) -> None:
    app, producer = make_app(settings, auth=False)
    client = app.test_client()
    first, second, admin = account_factory("uploader"), account_factory("uploader"), account_factory("admin")
    data = _png()
    status, body = _send(client, first, data)
    assert status == 201
    study, batch = body["accepted"][0]["id"], body["batch_id"]

    status, other = _send(client, second, data)
    assert status == 201, other
    item = other["accepted"][0]
    assert item["id"] != study and other["batch_id"] != batch and item["batch_id"] == other["batch_id"]
    assert item["duplicate"] is False and item["enqueued"] is True and item["status"] == "queued"
    assert client.get(f"/api/v1/batches/{other['batch_id']}", headers=second.headers).status_code == 200
    assert client.get(f"/api/v1/batches/{batch}", headers=second.headers).status_code == 403

    # The same uploader again, and an admin (who may read every study): the earlier study.
    status, again = _send(client, first, data)
    assert status == 200 and again["accepted"][0]["id"] == study and again["accepted"][0]["duplicate"] is True
    status, again = _send(client, second, data)
    assert status == 200 and again["accepted"][0]["id"] == item["id"]
    status, by_admin = _send(client, admin, data)
    assert status == 200 and by_admin["accepted"][0]["duplicate"] is True
    assert len(producer.sent) == 2
