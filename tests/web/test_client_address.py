"""The client's address (login limit, audit rows): the connection's own unless the web is told it sits
behind trusted proxies (XRAY_TRUSTED_PROXIES), and then the entry those proxies added to
X-Forwarded-For, never one the client wrote itself."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from sqlalchemy import select

from shared.config import Settings, load_settings
from shared.models import AuditEvent
from tests.web.support import make_app, session_for

PROXY = "10.0.0.5"  # the connection's address: the proxy's, or the client's when there is none
CLIENT = "203.0.113.9"
SPOOFED = "198.51.100.66"


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (128, 128), shade).save(buffer, format="PNG")
    return buffer.getvalue()


def upload_address(settings: Settings, forwarded_for: str, shade: int) -> str | None:
    """Upload one image with this X-Forwarded-For over a connection from PROXY; the audit row's address."""
    app, _ = make_app(settings)
    response = app.test_client().post(
        "/api/v1/batches", content_type="multipart/form-data", data={"files": [(io.BytesIO(png(shade)), "a.png")]},
        headers={"X-Forwarded-For": forwarded_for}, environ_base={"REMOTE_ADDR": PROXY})
    assert response.status_code == 201, response.get_data(as_text=True)
    with session_for(settings) as session:
        return session.scalars(select(AuditEvent.ip).where(AuditEvent.action == "upload")).one()


def test_without_trusted_proxies_a_forwarded_header_is_ignored(settings: Settings) -> None:
    assert settings.trusted_proxies == 0
    assert upload_address(settings, SPOOFED, 10) == PROXY


def test_behind_one_trusted_proxy_its_entry_is_the_client(settings: Settings) -> None:
    # The client wrote SPOOFED itself; the proxy appended the address it saw.
    assert upload_address(settings.with_overrides(trusted_proxies=1), f"{SPOOFED}, {CLIENT}", 20) == CLIENT


def test_trusted_proxies_setting_is_checked() -> None:
    assert load_settings({"XRAY_TRUSTED_PROXIES": "2"}).trusted_proxies == 2
    with pytest.raises(ValueError, match="XRAY_TRUSTED_PROXIES"):
        load_settings({"XRAY_TRUSTED_PROXIES": "-1"})
