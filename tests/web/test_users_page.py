"""The users page: admins add, disable, enable, set passwords, make and revoke API tokens through the
functions `xray user` uses; each act is an audit row naming the account; forms need the session's CSRF
token; other roles get 403; disabling ends the user's sessions and tokens for good."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from shared.config import Settings
from shared.models import ApiToken, AuditEvent, User
from tests.conftest import TEST_PASSWORD, Account
from tests.web.support import csrf_of, log_in, make_app, session_for

NEW_PASSWORD = "a brand new password 42"


def _admin_session(settings: Settings, admin: Account) -> tuple[Flask, FlaskClient, str]:
    app, _ = make_app(settings, auth=False)
    client = app.test_client()
    assert log_in(client, admin.username, admin.password)[0] == 303
    page = client.get("/users")
    assert page.status_code == 200
    return app, client, csrf_of(page.get_data(as_text=True))


def _user(settings: Settings, username: str) -> User:
    with session_for(settings) as session:
        user = session.scalar(select(User).where(User.username == username))
        assert user is not None
        session.expunge(user)
        return user


def _audit(settings: Settings) -> list[tuple[str, str | None, str | None]]:
    with session_for(settings) as session:
        return [(e.action, e.username, (e.detail or {}).get("user"))
                for e in session.scalars(select(AuditEvent).where(AuditEvent.action.not_in(["login"]))
                                         .order_by(AuditEvent.id))]


def test_admin_manages_a_user_from_the_page(settings: Settings, account_factory: Callable[..., Account]) -> None:
    admin = account_factory("admin")
    app, client, csrf = _admin_session(settings, admin)

    refused = client.post("/users", data={"csrf_token": csrf, "username": "nurse.k", "role": "uploader",
                                          "password": "short"})
    assert refused.status_code == 400 and "at least 12 characters" in refused.get_data(as_text=True)
    added = client.post("/users", data={"csrf_token": csrf, "username": "nurse.k", "role": "uploader",
                                        "password": TEST_PASSWORD})
    assert added.status_code == 303 and added.headers["Location"] == "/users"
    listing = client.get("/users").get_data(as_text=True)
    assert 'data-user="nurse.k"' in listing and "User nurse.k added with role uploader" in listing
    nurse = _user(settings, "nurse.k")
    assert nurse.active and nurse.role == "uploader"

    # The nurse logs in elsewhere; the admin makes a token for them, shown once.
    other = app.test_client()
    assert log_in(other, "nurse.k", TEST_PASSWORD)[0] == 303
    made = client.post(f"/users/{nurse.id}/tokens", data={"csrf_token": csrf, "label": "ward scanner"})
    assert made.status_code == 201
    token = re.search(r'id="new-token-value">([^<]+)<', made.get_data(as_text=True)).group(1)  # type: ignore[union-attr]
    assert token.startswith("xray_") and token not in client.get("/users").get_data(as_text=True)
    assert app.test_client().get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 200

    # Disabled: the session and the token stop working at once, and enabling brings neither back.
    assert client.post(f"/users/{nurse.id}/disable", data={"csrf_token": csrf}).status_code == 303
    assert other.get("/").status_code == 302
    assert app.test_client().get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert client.post(f"/users/{nurse.id}/enable", data={"csrf_token": csrf}).status_code == 303
    assert app.test_client().get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert log_in(other, "nurse.k", TEST_PASSWORD)[0] == 303

    # A new password ends their sessions; a token revoked on its own stops working.
    assert client.post(f"/users/{nurse.id}/password", data={"csrf_token": csrf, "password": NEW_PASSWORD}
                       ).status_code == 303
    assert other.get("/").status_code == 302
    assert log_in(other, "nurse.k", NEW_PASSWORD)[0] == 303
    made = client.post(f"/users/{nurse.id}/tokens", data={"csrf_token": csrf, "label": ""})
    second = re.search(r'id="new-token-value">([^<]+)<', made.get_data(as_text=True)).group(1)  # type: ignore[union-attr]
    with session_for(settings) as session:
        token_id = session.scalar(select(ApiToken.id).where(ApiToken.user_id == nurse.id,
                                                            ApiToken.revoked_at.is_(None)))
    assert client.post(f"/users/{nurse.id}/tokens/{token_id}/revoke", data={"csrf_token": csrf}).status_code == 303
    assert app.test_client().get("/", headers={"Authorization": f"Bearer {second}"}).status_code == 401
    assert client.post(f"/users/{nurse.id}/tokens/{token_id}/revoke", data={"csrf_token": csrf}).status_code == 404

    assert _audit(settings) == [
        ("user_add", admin.username, "nurse.k"),
        ("token_create", admin.username, "nurse.k"),
        ("user_disable", admin.username, "nurse.k"),
        ("user_enable", admin.username, "nurse.k"),
        ("user_password", admin.username, "nurse.k"),
        ("token_create", admin.username, "nurse.k"),
        ("token_revoke", admin.username, "nurse.k"),
    ]
    with session_for(settings) as session:
        details = [e.detail for e in session.scalars(select(AuditEvent).where(AuditEvent.action.like("token%")))]
    assert details[0]["label"] == "ward scanner" and all(token not in str(d) and second not in str(d) for d in details)


def test_forms_need_the_csrf_token(settings: Settings, account_factory: Callable[..., Account]) -> None:
    admin = account_factory("admin")
    target = account_factory("radiologist")
    _, client, _csrf = _admin_session(settings, admin)
    user_id = _user(settings, target.username).id
    for url, data in (("/users", {"username": "x1", "role": "admin", "password": TEST_PASSWORD}),
                      (f"/users/{user_id}/disable", {}), (f"/users/{user_id}/password", {"password": NEW_PASSWORD}),
                      (f"/users/{user_id}/tokens", {"label": "x"})):
        assert client.post(url, data=data).status_code == 403, url
        assert client.post(url, data={**data, "csrf_token": "wrong"}).status_code == 403, url
    assert _user(settings, target.username).active
    assert _audit(settings) == []


def test_other_roles_are_refused(settings: Settings, account_factory: Callable[..., Account]) -> None:
    app, _ = make_app(settings, auth=False)
    client = app.test_client()
    victim = _user(settings, account_factory("radiologist", "victim").username)
    for role in ("uploader", "radiologist"):
        account = account_factory(role)
        headers = account.headers
        assert client.get("/users", headers=headers).status_code == 403
        assert "/users" not in client.get("/", headers=headers, follow_redirects=True).get_data(as_text=True)
        for url in ("/users", *(f"/users/{victim.id}/{action}" for action in (
                "disable", "enable", "password", "tokens", "tokens/1/revoke"))):
            response = client.post(url, headers=headers, data={"username": "evil", "role": "admin",
                                                               "password": NEW_PASSWORD})
            assert response.status_code == 403, (role, url)
    assert _user(settings, "victim").active
    with session_for(settings) as session:
        assert session.scalar(select(User).where(User.username == "evil")) is None
    assert _audit(settings) == []


def test_admin_cannot_disable_themselves(settings: Settings, account_factory: Callable[..., Account]) -> None:
    admin = account_factory("admin")
    _, client, csrf = _admin_session(settings, admin)
    me = _user(settings, admin.username)
    response = client.post(f"/users/{me.id}/disable", data={"csrf_token": csrf})
    assert response.status_code == 409 and "your own account" in response.get_data(as_text=True)
    assert _user(settings, admin.username).active and client.get("/users").status_code == 200
    assert client.post("/users/999999/enable", data={"csrf_token": csrf}).status_code == 404
