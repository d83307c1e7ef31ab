"""Page sessions: login and logout, the cookie's flags, CSRF on cookie-authenticated unsafe requests
(Bearer requests exempt), safe `next` redirects, sessions ended by a password change, and the login
rate limit (429), shared by two app instances on one database as two gunicorn processes would be."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from shared.config import Settings
from tests.conftest import TEST_PASSWORD, Account
from tests.web.support import csrf_of as _csrf
from tests.web.support import log_in as _login
from tests.web.support import make_app, session_for


def _app(settings: Settings) -> Flask:
    app, _ = make_app(settings, auth=False)
    return app


def test_login_sets_a_safe_cookie_and_logout_ends_it(settings: Settings,
                                                     account_factory: Callable[..., Account]) -> None:
    radiologist = account_factory("radiologist")
    client = _app(settings).test_client()
    assert client.get("/worklist").headers["Location"] == "/login?next=/worklist"
    login_page = client.get("/login?next=/worklist").get_data(as_text=True)
    assert 'name="csrf_token"' in login_page and 'value="/worklist"' in login_page
    status, location = _login(client, radiologist.username, TEST_PASSWORD, "/worklist")
    assert (status, location) == (303, "/worklist")
    cookie = client.get_cookie("xray_session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax" and not cookie.secure
    page = client.get("/worklist")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert '<meta name="csrf-token"' in html and radiologist.username in html and "/static/csrf.js" in html
    # Logout is a POST with the token; afterwards the pages send to the login page again.
    assert client.post("/logout").status_code == 403
    assert client.post("/logout", data={"csrf_token": _csrf(html)}).status_code == 303
    assert client.get("/worklist").status_code == 302


def test_secure_cookie_over_https_or_when_configured(settings: Settings,
                                                     account_factory: Callable[..., Account]) -> None:
    admin = account_factory("admin")
    https = _app(settings).test_client()
    token = _csrf(https.get("/login", base_url="https://localhost").get_data(as_text=True))
    https.post("/login", base_url="https://localhost",
               data={"username": admin.username, "password": TEST_PASSWORD, "csrf_token": token})
    cookie = https.get_cookie("xray_session", domain="localhost")
    assert cookie is not None and cookie.secure

    forced = make_app(settings.with_overrides(session_cookie_secure=True), auth=False, tables=False)[0].test_client()
    forced.get("/login")
    cookie = forced.get_cookie("xray_session")
    assert cookie is not None and cookie.secure


def test_wrong_password_and_csrf_on_the_login_form(settings: Settings,
                                                   account_factory: Callable[..., Account]) -> None:
    admin = account_factory("admin")
    client = _app(settings).test_client()
    assert _login(client, admin.username, "not the password")[0] == 401
    assert _login(client, "nobody-here", TEST_PASSWORD)[0] == 401
    client.get("/login")
    response = client.post("/login", data={"username": admin.username, "password": TEST_PASSWORD})
    assert response.status_code == 403  # no CSRF token: a login CSRF attempt
    assert _login(client, admin.username, TEST_PASSWORD)[0] == 303


def test_csrf_on_cookie_requests_not_on_bearer(settings: Settings, account_factory: Callable[..., Account]) -> None:
    radiologist = account_factory("radiologist")
    client = _app(settings).test_client()
    _login(client, radiologist.username, TEST_PASSWORD)
    token = _csrf(client.get("/worklist").get_data(as_text=True))
    # Study 999 does not exist: the request gets past the CSRF check only to be told so (404).
    assert client.post("/api/v1/studies/999/review", json={}).status_code == 403
    assert client.post("/api/v1/studies/999/review", json={}, headers={"X-CSRF-Token": "x" + token}).status_code == 403
    assert client.post("/api/v1/studies/999/review", json={}, headers={"X-CSRF-Token": token}).status_code == 404
    bearer = _app(settings).test_client()
    assert bearer.post("/api/v1/studies/999/review", json={}, headers=radiologist.headers).status_code == 404


def test_next_must_stay_on_this_site(settings: Settings, account_factory: Callable[..., Account]) -> None:
    admin = account_factory("admin")
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        client = _app(settings).test_client()
        status, location = _login(client, admin.username, TEST_PASSWORD, target)
        assert status == 303 and location == "/worklist", target


def test_password_change_ends_sessions(settings: Settings, account_factory: Callable[..., Account]) -> None:
    from shared.accounts import find_user, set_password

    radiologist = account_factory("radiologist")
    client = _app(settings).test_client()
    _login(client, radiologist.username, TEST_PASSWORD)
    assert client.get("/worklist").status_code == 200
    with session_for(settings) as session:
        user = find_user(session, radiologist.username)
        assert user is not None
        set_password(session, user, "a brand new password")
        session.commit()
    assert client.get("/worklist").status_code == 302


def test_login_rate_limit_across_two_app_instances(settings: Settings,
                                                   account_factory: Callable[..., Account]) -> None:
    admin = account_factory("admin")
    first, second = _app(settings).test_client(), make_app(settings, auth=False, tables=False)[0].test_client()
    for i in range(5):
        client = first if i % 2 else second
        assert _login(client, admin.username, f"wrong password {i}")[0] == 401
    token = _csrf(second.get("/login").get_data(as_text=True))
    blocked = second.post("/login", data={"username": admin.username, "password": TEST_PASSWORD, "csrf_token": token})
    assert blocked.status_code == 429
    assert 0 < int(blocked.headers["Retry-After"]) <= 300
    assert "Too many failed logins" in blocked.get_data(as_text=True)
    assert _login(first, admin.username, TEST_PASSWORD)[0] == 429  # the right password too, on either
    # Another user from the same address is not locked out by someone else's failures.
    other = account_factory("radiologist")
    assert _login(first, other.username, TEST_PASSWORD)[0] == 303
