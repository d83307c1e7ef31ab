"""Accounts: roles and what each may do, password hashing (scrypt), API tokens stored as sha256,
page sessions held on the server (so they can be ended for good), and the login rate limiter
(failures counted in the database, so every web process sees them).

No Flask here: the web (web/auth.py) and the CLI (cli/user.py) both use these functions.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from shared.models import ApiToken, BatchUploader, LoginFailure, Role, User, WebSession

PASSWORD_METHOD = "scrypt"  # werkzeug's scrypt: n=2**15, r=8, p=1, 16-byte salt
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
TOKEN_PREFIX = "xray_"
SESSION_LIFETIME = timedelta(hours=12)  # a page session ends this long after its login, whatever happens

# What each role may do. The web maps every endpoint to one of these permissions (web/auth.py).
UPLOAD = "upload"  # send files, follow the progress of one's own batches
BATCHES_ALL = "batches_all"  # follow the progress of anybody's batch
READ_STUDIES = "read_studies"  # worklist, study pages and JSON, images and heatmaps
REVIEW = "review"
EXPORT = "export"
MANAGE_USERS = "manage_users"  # the users page: add, disable, enable, passwords, API tokens
OPERATIONS = "operations"  # the operations page: queue, throughput, workers, failures
PERMISSIONS: dict[Role, frozenset[str]] = {
    Role.UPLOADER: frozenset({UPLOAD}),
    Role.RADIOLOGIST: frozenset({BATCHES_ALL, READ_STUDIES, REVIEW, EXPORT}),
    Role.ADMIN: frozenset({UPLOAD, BATCHES_ALL, READ_STUDIES, REVIEW, EXPORT, MANAGE_USERS, OPERATIONS}),
}



@functools.cache
def _dummy_hash() -> str:
    """A hash to check against when the username is unknown, so that a wrong username costs the same
    time as a wrong password (no user enumeration by timing). Made on first use, not at import."""
    return generate_password_hash(secrets.token_hex(16), method=PASSWORD_METHOD)


class AccountError(ValueError):
    """A request about accounts that cannot be done; the message says why, for a person."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def can(role: str, permission: str) -> bool:
    try:
        return permission in PERMISSIONS[Role(role)]
    except ValueError:
        return False


def parse_role(raw: str) -> Role:
    try:
        return Role(raw.strip().lower())
    except ValueError:
        raise AccountError(f"unknown role {raw!r}: choose one of {', '.join(r.value for r in Role)}") from None


def check_username(username: str) -> str:
    if not USERNAME_PATTERN.match(username):
        raise AccountError("a username is 1-64 characters: letters, digits and . _ @ - (not first)")
    return username


def check_password_strength(password: str, username: str = "") -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")
    if username and password.strip().lower() == username.lower():
        raise AccountError("the password must not be the username")


def hash_password(password: str) -> str:
    return generate_password_hash(password, method=PASSWORD_METHOD)


def find_user(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


@dataclass(frozen=True)
class UserSummary:
    """A user as the lists show them (`xray user list`, the users page): with their live API tokens."""

    user: User
    tokens: list[ApiToken]


def user_summaries(session: Session) -> list[UserSummary]:
    """Every user by name, each with their unrevoked tokens (newest first), in two queries."""
    users = session.scalars(select(User).order_by(User.username)).all()
    live: dict[int, list[ApiToken]] = {user.id: [] for user in users}
    for token in session.scalars(select(ApiToken).where(ApiToken.revoked_at.is_(None))
                                 .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())):
        live.setdefault(token.user_id, []).append(token)
    return [UserSummary(user, live[user.id]) for user in users]


def create_user(session: Session, username: str, role: Role | str, password: str | None) -> User:
    """A new active user (flushed, not committed). `password` None makes a token-only account."""
    check_username(username)
    role = role if isinstance(role, Role) else parse_role(role)
    if find_user(session, username) is not None:
        raise AccountError(f"a user named {username!r} already exists")
    if password is not None:
        check_password_strength(password, username)
    user = User(username=username, role=role.value, password_hash=hash_password(password) if password else None)
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, user: User, password: str) -> None:
    """A new password; every page session of the user ends (their API tokens stay)."""
    check_password_strength(password, user.username)
    user.password_hash = hash_password(password)
    end_sessions(session, user)


def disable_user(session: Session, user: User) -> None:
    """No more logins; every page session ends and every API token is revoked, for good: enabling the
    user again brings none of them back."""
    user.active = False
    revoke_access(session, user)


def enable_user(user: User) -> None:
    user.active = True


def revoke_access(session: Session, user: User) -> tuple[int, int]:
    """Revoke every API token and end every page session of `user`: (tokens, sessions)."""
    return revoke_tokens(session, user), end_sessions(session, user)


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with this username and password, or None (same cost either way)."""
    user = find_user(session, username) if len(username) <= 64 else None
    stored = user.password_hash if user is not None and user.password_hash else _dummy_hash()
    ok = check_password_hash(stored, password[:MAX_PASSWORD_LENGTH])
    if not ok or user is None or not user.active or not user.password_hash:
        return None
    return user


# ---------------------------------------------------------------------------------------------
# Page sessions
# ---------------------------------------------------------------------------------------------


def start_session(session: Session, user: User, now: datetime | None = None) -> str:
    """A new page session; returns its id for the (signed) cookie. Only the id's sha256 is stored, so
    reading the table gives nobody a usable session. Expired sessions of every user go on the way."""
    now = now or utcnow()
    session.execute(delete(WebSession).where(WebSession.created_at < now - SESSION_LIFETIME))
    session_id = secrets.token_urlsafe(32)
    session.add(WebSession(id_sha256=token_digest(session_id), user_id=user.id, created_at=now))
    return session_id


def session_user(session: Session, user_id: int, session_id: str, now: datetime | None = None) -> User | None:
    """The active user of a live page session (its row exists, belongs to `user_id`, is not too old)."""
    if len(session_id) > 200:
        return None
    row = session.get(WebSession, token_digest(session_id))
    now = now or utcnow()
    if row is None or row.user_id != user_id or _aware(row.created_at) <= now - SESSION_LIFETIME:
        return None
    user = session.get(User, user_id)
    return user if user is not None and user.active else None


def end_session(session: Session, session_id: str) -> None:
    session.execute(delete(WebSession).where(WebSession.id_sha256 == token_digest(session_id)))


def end_sessions(session: Session, user: User) -> int:
    """End every page session of `user`; how many there were."""
    result = session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# API tokens
# ---------------------------------------------------------------------------------------------


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def issue_token(session: Session, user: User, label: str | None = None) -> str:
    """A new token for `user`. Returns the token itself: it is not stored and cannot be shown again."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, token_sha256=token_digest(token), label=(label or None) and label[:100]))
    session.flush()
    return token


def user_for_token(session: Session, token: str, touch: bool = True) -> User | None:
    """The active user a valid, unrevoked token belongs to, or None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = session.scalar(
        select(ApiToken).where(ApiToken.token_sha256 == token_digest(token), ApiToken.revoked_at.is_(None))
    )
    if row is None or not row.user.active:
        return None
    if touch:
        now = utcnow()
        last = row.last_used_at
        # At most one write a minute per token: polling clients must not write on every request.
        if last is None or _aware(last) < now - timedelta(minutes=1):
            row.last_used_at = now
            session.commit()
    return row.user


def revoke_token(session: Session, user: User, token_id: int) -> bool:
    """Revoke one token of `user` (by its row id); False when it is not theirs or already revoked."""
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


def revoke_tokens(session: Session, user: User) -> int:
    count = 0
    for row in user.tokens:
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            count += 1
    return count


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


# ---------------------------------------------------------------------------------------------
# Batches an uploader may follow
# ---------------------------------------------------------------------------------------------


def record_batch_uploader(session: Session, batch_id: int, user_id: int) -> None:
    exists = session.get(BatchUploader, (batch_id, user_id))
    if exists is None:
        session.add(BatchUploader(batch_id=batch_id, user_id=user_id))


def uploaded_batch(session: Session, batch_id: int, user_id: int) -> bool:
    return session.get(BatchUploader, (batch_id, user_id)) is not None


# ---------------------------------------------------------------------------------------------
# Login rate limiting
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginLimits:
    """At most `per_username` failed logins for one username, and `per_ip` from one address, within
    `window_s`; beyond that every attempt (even with the right password) is refused until the oldest
    failure leaves the window. The per-address limit is higher: a ward's workstations may share one."""

    per_username: int = 5
    per_ip: int = 20
    window_s: int = 300


def _recent(session: Session, column: object, value: str, since: datetime) -> tuple[int, datetime | None]:
    count, oldest = session.execute(
        select(func.count(), func.min(LoginFailure.at)).where(column == value, LoginFailure.at >= since)  # type: ignore[operator]
    ).one()
    return int(count or 0), oldest


def _wait(session: Session, username: str, ip: str, limits: LoginLimits, now: datetime, allowed_extra: int) -> int:
    """Seconds until the failures of `username` or `ip` fall to their limit (+ `allowed_extra`); 0 when under."""
    since = now - timedelta(seconds=limits.window_s)
    wait = 0
    for column, value, limit in ((LoginFailure.username, username.lower()[:64], limits.per_username),
                                 (LoginFailure.ip, ip[:64], limits.per_ip)):
        count, oldest = _recent(session, column, value, since)
        if count >= limit + allowed_extra and oldest is not None:
            wait = max(wait, int((_aware(oldest) - since).total_seconds()) + 1)
    return wait


def login_blocked_for(session: Session, username: str, ip: str, limits: LoginLimits,
                      now: datetime | None = None) -> int:
    """0 when a login attempt may go ahead, else the seconds to wait (for Retry-After). Read only: the
    web uses `reserve_login_attempt`, which holds under concurrency."""
    return _wait(session, username, ip, limits, now or utcnow(), 0)


def reserve_login_attempt(session: Session, username: str, ip: str, limits: LoginLimits,
                          now: datetime | None = None) -> int:
    """Count this attempt as a failure *before* the password is checked, then see whether it is within
    the limits: 0 to go ahead, else the seconds to wait (the reservation is then withdrawn).

    The reservation is committed before counting, so the k-th attempt to commit counts at least k
    failures, on SQLite and PostgreSQL alike: however many arrive at once, at most the limit of them
    see a count within it and reach the (slow) password check. A successful login clears the user's
    failures (`clear_login_failures`), its reservation included; a wrong password leaves it as the
    failure it is. Commits `session`."""
    now = now or utcnow()
    reservation = LoginFailure(username=username.lower()[:64], ip=ip[:64], at=now)
    session.add(reservation)
    session.commit()
    wait = _wait(session, username, ip, limits, now, 1)
    if wait:
        session.delete(reservation)
        session.commit()
    return wait


def record_login_failure(session: Session, username: str, ip: str, limits: LoginLimits,
                         now: datetime | None = None) -> None:
    now = now or utcnow()
    session.add(LoginFailure(username=username.lower()[:64], ip=ip[:64], at=now))
    forget_old_failures(session, limits, now)


def forget_old_failures(session: Session, limits: LoginLimits, now: datetime | None = None) -> None:
    """Keep the table small: failures older than the window no longer count."""
    now = now or utcnow()
    session.execute(delete(LoginFailure).where(LoginFailure.at < now - timedelta(seconds=limits.window_s)))


def clear_login_failures(session: Session, username: str) -> None:
    session.execute(delete(LoginFailure).where(LoginFailure.username == username.lower()[:64]))
