"""Revocation on the server: a copied session cookie stops working after logout, a password change,
`xray user disable` (and stays dead after `enable`) and `xray user revoke`; API tokens stay revoked
after disable + enable. The database is migrated (so migration 0004 is what the web runs on), and the
accounts are changed through the real `xray user` command."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from migrations import upgrade
from shared.config import Settings
from tests.conftest import TEST_PASSWORD, Account
from tests.web.support import make_app
from tests.web.test_auth_login import _csrf, _login

COOKIE = "xray_session"


@pytest.fixture
def app(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Flask:
    monkeypatch.setenv("XRAY_VAR_DIR", str(settings.var_dir))
    for name in ("DATABASE_URL", "SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    upgrade(settings.database_url)
    return make_app(settings, auth=False, tables=False)[0]


def _logged_in(app: Flask, account: Account) -> tuple[FlaskClient, str]:
    client = app.test_client()
    assert _login(client, account.username, TEST_PASSWORD)[0] == 303
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return client, cookie.value


def _with_cookie(app: Flask, value: str) -> FlaskClient:
    """Another browser (or an attacker) holding a copy of the cookie."""
    client = app.test_client()
    client.set_cookie(COOKIE, value)
    return client


def _shut_out(client: FlaskClient) -> bool:
    page, api = client.get("/worklist"), client.get("/api/v1/worklist")
    return page.status_code == 302 and page.headers["Location"].startswith("/login") and api.status_code == 401


def _xray_user(*args: str) -> None:
    from cli.main import main

    assert main(["user", *args]) == 0


def test_logout_ends_the_session_for_every_copy_of_the_cookie(app: Flask,
                                                              account_factory: Callable[..., Account]) -> None:
    radiologist = account_factory("radiologist")
    client, cookie = _logged_in(app, radiologist)
    copy = _with_cookie(app, cookie)
    assert copy.get("/worklist").status_code == 200 and copy.get("/api/v1/worklist").status_code == 200
    token = _csrf(client.get("/worklist").get_data(as_text=True))
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    assert _shut_out(copy) and _shut_out(_with_cookie(app, cookie))
    # Another session of the same user (another workstation) is not ended by this logout.
    other, _ = _logged_in(app, radiologist)
    assert other.get("/worklist").status_code == 200


def test_disable_then_enable_does_not_bring_back_cookies_or_tokens(
        app: Flask, account_factory: Callable[..., Account], monkeypatch: pytest.MonkeyPatch) -> None:
    radiologist = account_factory("radiologist")
    _, cookie = _logged_in(app, radiologist)
    bearer = app.test_client()
    assert bearer.get("/api/v1/worklist", headers=radiologist.headers).status_code == 200
    _xray_user("disable", radiologist.username)
    assert _shut_out(_with_cookie(app, cookie))
    _xray_user("enable", radiologist.username)
    assert _shut_out(_with_cookie(app, cookie))
    assert bearer.get("/api/v1/worklist", headers=radiologist.headers).status_code == 401
    # The enabled user can log in again and get a new token.
    again, _ = _logged_in(app, radiologist)
    assert again.get("/worklist").status_code == 200


def test_password_change_and_revoke_end_sessions(app: Flask, account_factory: Callable[..., Account],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    radiologist, admin = account_factory("radiologist"), account_factory("admin")
    _, cookie = _logged_in(app, radiologist)
    monkeypatch.setattr("sys.stdin", io.StringIO(TEST_PASSWORD + "\n"))  # the same password: still a change
    _xray_user("passwd", radiologist.username, "--password-stdin")
    assert _shut_out(_with_cookie(app, cookie))

    _, admin_cookie = _logged_in(app, admin)
    bearer = app.test_client()
    _xray_user("revoke", admin.username)
    assert _shut_out(_with_cookie(app, admin_cookie))
    assert bearer.get("/api/v1/worklist", headers=admin.headers).status_code == 401
