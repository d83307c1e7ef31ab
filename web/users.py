"""The users page for admins (`/users`): list, add, disable, enable, set a password, make and revoke API
tokens — what `xray user` does, through the same functions (shared.accounts), each act audited in the
same transaction (web.audit: the `user_*` and `token_*` actions, naming the account acted on).

Forms post with the session's CSRF token (the gate in web/auth.py checks it) and are answered with a
redirect back to the list (303), except a new token: it is shown once, in the answer itself, and never
put in the session cookie or a URL. Disabling ends the user's page sessions and revokes their tokens
for good; an admin cannot disable their own account here (it would lock them out mid-task).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response as BaseResponse

from shared import accounts
from shared.accounts import AccountError
from shared.models import ApiToken, Role, User
from web import audit
from web.auth import actor, current_user
from web.context import db_session

bp = Blueprint("users", __name__, url_prefix="/users")


def _page(status: int = 200, error: str | None = None, new_token: dict[str, Any] | None = None,
          form: dict[str, str] | None = None) -> tuple[str, int]:
    return render_template("users.html", summaries=accounts.user_summaries(db_session()), roles=[r.value for r in Role],
                           error=error, new_token=new_token, form=form or {},
                           min_password=accounts.MIN_PASSWORD_LENGTH), status


def _target(user_id: int) -> User:
    user = db_session().get(User, user_id)
    if user is None:
        abort(404, description=f"There is no user {user_id}.")
    return user


def _record(action: str, user: User, **detail: Any) -> None:
    audit.record(db_session(), actor(), action, detail={"user": user.username, "user_id": user.id, **detail})


def _done(message: str) -> BaseResponse:
    db_session().commit()
    flash(message)
    return redirect(url_for("users.list_users"), code=303)


@bp.get("")
def list_users() -> tuple[str, int]:
    return _page()


@bp.post("")
def add_user() -> BaseResponse | tuple[str, int]:
    username = (request.form.get("username") or "").strip()
    role = request.form.get("role") or ""
    token_only = request.form.get("token_only") == "1"
    password = None if token_only else request.form.get("password") or ""
    db = db_session()
    try:
        if password == "":
            raise AccountError("give a password, or tick 'API tokens only' for an account a program uses")
        user = accounts.create_user(db, username, role, password)
    except AccountError as exc:
        db.rollback()
        return _page(400, f"The user was not added: {exc}.", form={"username": username[:64], "role": role})
    _record(audit.USER_ADD, user, role=user.role, token_only=token_only)
    return _done(f"User {user.username} added with role {user.role}"
                 + (": API tokens only." if token_only else "; they can log in now."))


@bp.post("/<int:user_id>/disable")
def disable(user_id: int) -> BaseResponse | tuple[str, int]:
    user = _target(user_id)
    me = current_user()
    if me is not None and me.id == user.id:
        return _page(409, "You cannot disable your own account: ask another admin, or use `xray user disable`.")
    accounts.disable_user(db_session(), user)
    _record(audit.USER_DISABLE, user)
    return _done(f"User {user.username} disabled: every page session ended and every API token revoked "
                 "(enabling them later brings none back).")


@bp.post("/<int:user_id>/enable")
def enable(user_id: int) -> BaseResponse:
    user = _target(user_id)
    accounts.enable_user(user)
    _record(audit.USER_ENABLE, user)
    return _done(f"User {user.username} enabled: they can log in again; make new API tokens if needed.")


@bp.post("/<int:user_id>/password")
def set_password(user_id: int) -> BaseResponse | tuple[str, int]:
    user = _target(user_id)
    try:
        accounts.set_password(db_session(), user, request.form.get("password") or "")
    except AccountError as exc:
        db_session().rollback()
        return _page(400, f"The password of {user.username} was not changed: {exc}.")
    _record(audit.USER_PASSWORD, user)
    return _done(f"Password of {user.username} changed; their page sessions have ended.")


@bp.post("/<int:user_id>/tokens")
def make_token(user_id: int) -> tuple[str, int]:
    user = _target(user_id)
    if not user.active:
        return _page(409, f"User {user.username} is disabled: enable them before making a token.")
    label = (request.form.get("label") or "").strip()[:100] or None
    token = accounts.issue_token(db_session(), user, label)
    token_id = db_session().scalar(select(ApiToken.id).where(ApiToken.token_sha256 == accounts.token_digest(token)))
    _record(audit.TOKEN_CREATE, user, token_id=token_id, label=label)
    db_session().commit()
    return _page(201, new_token={"user": user.username, "label": label, "token": token})


@bp.post("/<int:user_id>/tokens/<int:token_id>/revoke")
def revoke_token(user_id: int, token_id: int) -> BaseResponse:
    user = _target(user_id)
    if not accounts.revoke_token(db_session(), user, token_id):
        abort(404, description=f"User {user.username} has no live token {token_id}.")
    _record(audit.TOKEN_REVOKE, user, token_id=token_id)
    return _done(f"Token {token_id} of {user.username} revoked.")
