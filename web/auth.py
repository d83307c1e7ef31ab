"""Authentication and authorisation for every route.

- Pages log in with a username and password (a Flask session cookie: HttpOnly, SameSite=Lax, Secure
  under https or with SESSION_COOKIE_SECURE=1); API clients send `Authorization: Bearer <token>`.
  The cookie names a session held in the database (shared.accounts.start_session): logout, a password
  change, disabling a user or revoking their access deletes it, and every copy of the cookie stops working.
- `require_login(app)` installs the gate: everything except /healthz, the login page and static files
  needs a user. Unauthenticated: 401 JSON on /api/, a redirect to the login page elsewhere.
- Roles: each endpoint names what it needs in `ACCESS`; an endpoint missing from it is admin-only
  (fail closed), and a test walks the URL map so none is forgotten.
- CSRF: unsafe requests authenticated by the session cookie (and the login form) must carry the
  session's token, in the `X-CSRF-Token` header or a `csrf_token` form field. Bearer requests are
  exempt: a browser never adds that header on its own.
- Login attempts are rate limited per username and per client address (shared.accounts).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    g,
    has_request_context,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from werkzeug.wrappers import Response as BaseResponse

from shared import accounts
from shared.accounts import BATCHES_ALL, EXPORT, READ_STUDIES, REVIEW, UPLOAD, LoginLimits
from shared.config import Settings
from shared.models import Role, User
from web import audit
from web.context import db_session

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)

PUBLIC_ENDPOINTS = frozenset({"static", "health.healthz", "auth.login", "metrics.metrics"})  # metrics: own check
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
LOGIN_LIMITS_KEY = "xray.login_limits"

Check = Callable[[User, dict[str, Any]], bool]


def needs(permission: str) -> Check:
    return lambda user, _args: accounts.can(user.role, permission)


def _own_batch(user: User, args: dict[str, Any]) -> bool:
    batch_id = args.get("batch_id")
    return isinstance(batch_id, int) and accounts.uploaded_batch(db_session(), batch_id, user.id)


def batch_progress(user: User, args: dict[str, Any]) -> bool:
    """Anybody's batch with BATCHES_ALL; an uploader only the batches they uploaded into."""
    return accounts.can(user.role, BATCHES_ALL) or (accounts.can(user.role, UPLOAD) and _own_batch(user, args))


def batch_append(user: User, args: dict[str, Any]) -> bool:
    return accounts.can(user.role, UPLOAD) and (accounts.can(user.role, BATCHES_ALL) or _own_batch(user, args))


def anyone(_user: User, _args: dict[str, Any]) -> bool:
    return True


# Endpoint -> who may use it. Not listed: admins only.
ACCESS: dict[str, Check] = {
    "auth.logout": anyone,
    "pages.upload": needs(UPLOAD),
    "api.create_batch": needs(UPLOAD),
    "dicomweb.store_instances": needs(UPLOAD),
    "api.add_to_batch": batch_append,
    "api.get_batch": batch_progress,
    "pages.batch": batch_progress,
    "pages.worklist": needs(READ_STUDIES),
    "pages.study": needs(READ_STUDIES),
    "api.get_study": needs(READ_STUDIES),
    "api.get_worklist": needs(READ_STUDIES),
    "media.image": needs(READ_STUDIES),
    "media.heatmap": needs(READ_STUDIES),
    "results.structured_report": needs(READ_STUDIES),
    "results.overlay": needs(READ_STUDIES),
    "results.fhir": needs(READ_STUDIES),
    "model.page": needs(READ_STUDIES),
    "model.chart": needs(READ_STUDIES),
    "api.review_study": needs(REVIEW),
    "api.export_study": needs(EXPORT),
    "api.export_batch": needs(EXPORT),
    "api.export_worklist": needs(EXPORT),
    # The operations page and its JSON (web/ops.py); the users page (web/users.py).
    "ops.page": needs(accounts.OPERATIONS),
    "ops.status": needs(accounts.OPERATIONS),
    **{f"users.{name}": needs(accounts.MANAGE_USERS) for name in (
        "list_users", "add_user", "disable", "enable", "set_password", "make_token", "revoke_token")},
}


# ---------------------------------------------------------------------------------------------
# Sessions and the secret key
# ---------------------------------------------------------------------------------------------


class _SessionInterface(SecureCookieSessionInterface):
    """The signed-cookie session, Secure whenever the request came over https (or when configured)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        forced = bool(app.config.get("SESSION_COOKIE_SECURE"))
        return forced or (has_request_context() and request.is_secure)


def check_secret_key(settings: Settings) -> None:
    """Refuse to start without SECRET_KEY in production, or when de-identification needs a stable key."""
    if settings.secret_key:
        return
    hint = "Set SECRET_KEY to a long random value, e.g. the output of `python -c \"import secrets; " \
           "print(secrets.token_hex(32))\"`, the same in every web and worker process."
    if settings.production:
        raise RuntimeError(f"SECRET_KEY is empty in production mode (XRAY_ENV=production). {hint}")
    if settings.deidentify:
        raise RuntimeError(f"XRAY_DEIDENTIFY=1 needs SECRET_KEY: pseudonyms are keyed by it. {hint}")
    log.warning("SECRET_KEY is not set: using a random key for this process only; sessions will not survive "
                "a restart or work across processes. %s", hint)


def configure_sessions(app: Flask, settings: Settings) -> None:
    app.config.update(
        SESSION_COOKIE_NAME="xray_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        PERMANENT_SESSION_LIFETIME=accounts.SESSION_LIFETIME,
    )
    app.session_interface = _SessionInterface()


# ---------------------------------------------------------------------------------------------
# Who is asking
# ---------------------------------------------------------------------------------------------


def client_ip() -> str:
    return (request.remote_addr or "unknown")[:64]


def current_user() -> User | None:
    return g.get("user")


def actor() -> audit.Actor:
    user = current_user()
    return audit.Actor(user.id if user else None, user.username if user else None, client_ip())


def _bearer_token() -> str | None:
    """The token of an `Authorization: Bearer` header; "" for any other (or a malformed) header."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


def _session_user() -> User | None:
    uid, sid = session.get("uid"), session.get("sid")
    if not isinstance(uid, int) or not isinstance(sid, str):
        return None
    user = accounts.session_user(db_session(), uid, sid)
    if user is None:
        session.clear()  # logged out, revoked, disabled, a new password, or too old
    return user


def _identify() -> None:
    g.user, g.auth = None, None
    token = _bearer_token()
    if token is not None:
        user = accounts.user_for_token(db_session(), token) if token else None
        if user is not None:
            g.user, g.auth = user, "token"
        else:
            g.bad_token = True
        return
    user = _session_user()
    if user is not None:
        g.user, g.auth = user, "session"


def _is_api() -> bool:
    return request.path.startswith(("/api/", "/dicomweb/"))


def _unauthenticated() -> BaseResponse:
    if _is_api() or g.get("bad_token"):
        message = ("The API token is not valid (unknown, revoked, or its user is disabled)." if g.get("bad_token")
                   else "Authentication required: send 'Authorization: Bearer <token>' (create one with "
                        "`xray user token NAME`).")
        response = jsonify(error=message)
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="xray"'
        return response
    target = request.full_path if request.query_string else request.path
    return redirect(url_for("auth.login", next=target), code=302 if request.method in SAFE_METHODS else 303)


# ---------------------------------------------------------------------------------------------
# CSRF
# ---------------------------------------------------------------------------------------------


def csrf_token() -> str:
    """The session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def _csrf_ok() -> bool:
    expected = session.get("csrf")
    if not isinstance(expected, str) or not expected:
        return False
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.mimetype in {"application/x-www-form-urlencoded", "multipart/form-data"}:
        sent = request.form.get(CSRF_FIELD)
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), expected.encode())


# ---------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------


def home_for(user: User) -> str:
    if accounts.can(user.role, UPLOAD) and user.role != Role.ADMIN.value:
        return url_for("pages.upload")
    return url_for("pages.worklist")


def require_login(app: Flask) -> None:
    """Install the gate: authenticate, check CSRF on cookie-authenticated unsafe requests, check the role."""

    @app.before_request
    def gate() -> BaseResponse | None:
        endpoint = request.endpoint
        if endpoint in PUBLIC_ENDPOINTS:
            if request.method not in SAFE_METHODS and not _csrf_ok():
                abort(403, description="The form has expired (CSRF check failed): reload the page and try again.")
            return None
        _identify()
        user = current_user()
        if user is None:
            return _unauthenticated()
        if g.auth == "session" and request.method not in SAFE_METHODS and not _csrf_ok():
            abort(403, description="CSRF check failed: reload the page and try again (the request did not "
                                   f"carry this session's token in the {CSRF_HEADER} header).")
        if endpoint is None:
            return None  # 404 or 405: Flask answers it, now that we know who asks
        check = ACCESS.get(endpoint)
        if check is not None and check(user, request.view_args or {}):
            return None
        if check is None and user.role == Role.ADMIN.value:
            return None
        if endpoint == "pages.upload" and accounts.can(user.role, READ_STUDIES):
            return redirect(url_for("pages.worklist"))
        abort(403, description=f"Your role ({user.role}) does not allow this.")

    @app.context_processor
    def auth_context() -> dict[str, Any]:
        user = current_user()
        return {
            "current_user": user,
            "csrf_token": csrf_token,
            "can": lambda permission: user is not None and accounts.can(user.role, permission),
        }


def register_auth(app: Flask, settings: Settings, limits: LoginLimits | None = None) -> None:
    """Sessions, the login blueprint and the gate (call before registering the other blueprints' hooks)."""
    configure_sessions(app, settings)
    app.extensions[LOGIN_LIMITS_KEY] = limits or LoginLimits()
    app.register_blueprint(bp)
    require_login(app)


# ---------------------------------------------------------------------------------------------
# Login and logout
# ---------------------------------------------------------------------------------------------


def _safe_next(raw: str | None) -> str | None:
    if not raw or not raw.startswith("/") or raw.startswith("//") or "\\" in raw or any(ord(c) < 32 for c in raw):
        return None
    return raw.rstrip("?")


def _login_page(error: str | None, status: int, username: str = "") -> tuple[str, int]:
    return render_template("login.html", error=error, username=username,
                           next=_safe_next(request.values.get("next")) or ""), status


@bp.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse | tuple[str, int]:
    if request.method != "POST":
        _identify()
        user = current_user()
        if user is not None and g.auth == "session":
            return redirect(_safe_next(request.args.get("next")) or home_for(user))
        return _login_page(None, 200)
    from flask import current_app

    limits: LoginLimits = current_app.extensions[LOGIN_LIMITS_KEY]
    username = (request.form.get("username") or "").strip()[:64]
    password = request.form.get("password") or ""
    db = db_session()
    # Counted as a failure before the check: concurrent attempts cannot all slip under the limit.
    wait = accounts.reserve_login_attempt(db, username or "-", client_ip(), limits)
    if wait:
        body, status = _login_page(f"Too many failed logins. Try again in {max(1, round(wait / 60))} minute(s).",
                                   429, username)
        response = Response(body, status=status)
        response.headers["Retry-After"] = str(wait)
        return response
    user = accounts.authenticate(db, username, password) if username and password else None
    if user is None:
        accounts.forget_old_failures(db, limits)  # the reservation stays: it was a failure
        db.commit()
        log.info("failed login from %s", client_ip())
        return _login_page("Wrong username or password.", 401, username)
    accounts.clear_login_failures(db, username)
    user.last_login_at = accounts.utcnow()
    audit.record(db, audit.Actor(user.id, user.username, client_ip()), audit.LOGIN)
    db.commit()
    session_id = accounts.start_session(db, user)
    db.commit()
    session.clear()  # a new session (and CSRF token) at every login: no fixation
    session.permanent = True
    session["uid"] = user.id
    session["sid"] = session_id
    csrf_token()
    return redirect(_safe_next(request.form.get("next")) or home_for(user), code=303)


@bp.post("/logout")
def logout() -> BaseResponse:
    db = db_session()
    audit.record(db, actor(), audit.LOGOUT)
    sid = session.get("sid")
    if isinstance(sid, str):
        accounts.end_session(db, sid)  # every copy of this cookie stops working, not only this browser's
    db.commit()
    session.clear()
    return redirect(url_for("auth.login"), code=303)

