"""The audit log: who uploaded, viewed, exported and reviewed which study or batch, when, from where.

Rows name studies and batches by id only: no patient identifier (name, patient ID, accession
number, UID) and no file name ever goes into an audit row or a log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from shared.models import AuditEvent

UPLOAD = "upload"
VIEW = "view"
EXPORT = "export"
REVIEW = "review"
LOGIN = "login"
LOGOUT = "logout"
# Account management on the users page (web/users.py); `detail` names the account acted on.
USER_ADD = "user_add"
USER_DISABLE = "user_disable"
USER_ENABLE = "user_enable"
USER_PASSWORD = "user_password"
TOKEN_CREATE = "token_create"
TOKEN_REVOKE = "token_revoke"
ACCOUNT_ACTIONS = (USER_ADD, USER_DISABLE, USER_ENABLE, USER_PASSWORD, TOKEN_CREATE, TOKEN_REVOKE)
ACTIONS = (UPLOAD, VIEW, EXPORT, REVIEW, LOGIN, LOGOUT, *ACCOUNT_ACTIONS)


@dataclass(frozen=True)
class Actor:
    """Who did it: the account (None for an anonymous event) and the client address."""

    user_id: int | None
    username: str | None
    ip: str | None


def record(session: Session, actor: Actor, action: str, *, study_id: int | None = None,
           batch_id: int | None = None, detail: dict[str, Any] | None = None,
           at: datetime | None = None) -> AuditEvent:
    """Add one event to `session` (the caller commits, in the same transaction as the act if it can)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    event = AuditEvent(user_id=actor.user_id, username=actor.username, action=action, study_id=study_id,
                       batch_id=batch_id, ip=(actor.ip or None) and actor.ip[:64], detail=detail or None)
    if at is not None:
        event.at = at
    session.add(event)
    return event
