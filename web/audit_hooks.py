"""The audit trail of the web: an after_request hook that turns successful requests to the endpoints
in `AUDITED` into AuditEvent rows (web.audit), and records who uploaded into which batch.

A view is recorded once per user, study and endpoint within VIEW_WINDOW: the study page polls its
JSON every few seconds while a study is queued, and that is one look, not hundreds.

Reads (view, export) fail closed: if the event cannot be written, the client gets a 500 instead of
the data. Writes (upload, review) have already happened when the hook runs: a failure is logged
loudly and the response stands (the studies and reviews are themselves on record).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

from flask import Flask, Response, g, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from shared import accounts
from shared.db import session_scope
from shared.models import AuditEvent, Study
from web import audit
from web.auth import actor, current_user
from web.context import db_session, services

log = logging.getLogger(__name__)

# Endpoint -> audit action. Every study a response reveals or changes is named by id in the event.
AUDITED: dict[str, str] = {
    "api.create_batch": audit.UPLOAD,
    "api.add_to_batch": audit.UPLOAD,
    "dicomweb.store_instances": audit.UPLOAD,
    "pages.study": audit.VIEW,
    "api.get_study": audit.VIEW,
    "media.image": audit.VIEW,
    "api.review_study": audit.REVIEW,
    "api.export_study": audit.EXPORT,
    "results.structured_report": audit.EXPORT,
    "results.overlay": audit.EXPORT,
    "results.fhir": audit.EXPORT,
    # The CSV exports (api.export_batch, api.export_worklist) record one event per exported study
    # while the rows stream out: see `audited_export`.
}
FAIL_CLOSED = frozenset({audit.VIEW, audit.EXPORT})

Recorder = Callable[[str, Response], None]
Row = TypeVar("Row", bound=tuple[Study, Any])
EXPORT_CHUNK = 500
VIEW_WINDOW = timedelta(minutes=10)


def _record_upload(action: str, _response: Response) -> None:
    """Who uploaded which studies into which batch: from the intake's result the view left in `g`."""
    result = g.get("intake_result")
    if result is None or result.batch_id is None:
        return
    db = db_session()
    who = actor()
    user = current_user()
    if user is not None:
        accounts.record_batch_uploader(db, result.batch_id, user.id)
    for item in result.accepted:
        detail = {"duplicate": True} if item.duplicate else None
        audit.record(db, who, action, study_id=item.study_id, batch_id=result.batch_id, detail=detail)


def _seen_recently(study_id: int, endpoint: str) -> bool:
    """Whether this user's view of this study through this endpoint is already on record in the window."""
    who = actor()
    if who.user_id is None:
        return False
    details = db_session().scalars(select(AuditEvent.detail).where(
        AuditEvent.study_id == study_id, AuditEvent.at >= accounts.utcnow() - VIEW_WINDOW,
        AuditEvent.action == audit.VIEW, AuditEvent.user_id == who.user_id))
    return any(isinstance(d, dict) and d.get("endpoint") == endpoint for d in details)


def _record_study(action: str, _response: Response) -> None:
    args = request.view_args or {}
    study_id = args.get("study_id")
    detail = {"endpoint": request.endpoint}
    if action == audit.VIEW and isinstance(study_id, int) and _seen_recently(study_id, str(request.endpoint)):
        return
    audit.record(db_session(), actor(), action, study_id=study_id if isinstance(study_id, int) else None,
                 batch_id=args.get("batch_id") if isinstance(args.get("batch_id"), int) else None, detail=detail)


RECORDERS: dict[str, Recorder] = {audit.UPLOAD: _record_upload}


def register_audit(app: Flask) -> None:
    @app.after_request
    def audit_request(response: Response) -> Response:
        action = AUDITED.get(request.endpoint or "")
        if action is None or not 200 <= response.status_code < 300 or current_user() is None:
            return response
        try:
            RECORDERS.get(action, _record_study)(action, response)
            db_session().commit()
        except SQLAlchemyError:
            db_session().rollback()
            log.exception("audit: could not record %s on %s", action, request.endpoint)
            if action in FAIL_CLOSED:
                failed = jsonify(error="The access could not be recorded in the audit log, so it was refused. "
                                       "Please retry; if it persists, tell the administrator.")
                failed.status_code = 500
                return failed
        return response


def audited_export(rows: Iterable[Row], detail: dict[str, Any], chunk: int = EXPORT_CHUNK) -> Iterator[Row]:
    """Pass (study, ...) rows through, recording an `export` event per study before its rows leave: a
    chunk at a time, in its own transaction. If recording fails the export stops there (fail closed)."""
    who = actor()
    buffer: list[Row] = []

    def flush() -> Iterator[Row]:
        with session_scope(services().session_factory) as session:
            for row in buffer:
                study = row[0]
                audit.record(session, who, audit.EXPORT, study_id=study.id, batch_id=study.batch_id, detail=detail)
        yield from buffer
        buffer.clear()

    for row in rows:
        buffer.append(row)
        if len(buffer) >= chunk:
            yield from flush()
    if buffer:
        yield from flush()
