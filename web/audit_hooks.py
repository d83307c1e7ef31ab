"""The audit trail of the web: an after_request hook that turns successful requests to the endpoints
in `AUDITED` into AuditEvent rows (shared.audit), and records who uploaded into which batch.

Reads (view, export) fail closed: if the event cannot be written, the client gets a 500 instead of
the data. Writes (upload, review) have already happened when the hook runs: a failure is logged
loudly and the response stands (the studies and reviews are themselves on record).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from shared import accounts, audit
from shared.db import session_scope
from shared.models import Study
from web.auth import actor, current_user
from web.context import db_session, services

log = logging.getLogger(__name__)

# Endpoint -> audit action. Every study a response reveals or changes is named by id in the event.
AUDITED: dict[str, str] = {
    "api.create_batch": audit.UPLOAD,
    "api.add_to_batch": audit.UPLOAD,
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


def _record_upload(action: str, response: Response) -> None:
    body = response.get_json(silent=True) or {}
    batch_id = body.get("batch_id")
    if not isinstance(batch_id, int):
        return
    db = db_session()
    who = actor()
    user = current_user()
    if user is not None:
        accounts.record_batch_uploader(db, batch_id, user.id)
    for item in body.get("accepted") or []:
        if isinstance(item, dict) and isinstance(item.get("id"), int):
            detail = {"duplicate": True} if item.get("duplicate") else None
            audit.record(db, who, action, study_id=item["id"], batch_id=batch_id, detail=detail)


def _record_study(action: str, _response: Response) -> None:
    args = request.view_args or {}
    study_id = args.get("study_id")
    detail = {"endpoint": request.endpoint}
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


def audited_endpoints() -> dict[str, Any]:
    return dict(AUDITED)


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
