"""JSON API, version 1: bulk upload, batch progress, study results, the worklist.

Upload status codes (POST /api/v1/batches and POST /api/v1/batches/<id>/files):
- 201: at least one file accepted; `rejected` lists the others with a reason each. When enqueueing
  failed after the commit, the studies stay `queued` (the reconciler re-sends them), their
  `enqueued` is false and `warning` says so.
- 422: every file rejected: same body (`batch_id` null for a new batch, nothing written) plus `error`.
- 400 no `files` field; 404 unknown batch; 403 cross-site browser request; 413 body over
  `max_upload_bytes`; 507 storage full / 500 storage or database failure: no study committed.
Every error on /api/ is JSON `{"error": "..."}` (web/errors.py).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, jsonify, request, url_for

from shared.models import Batch
from shared.queue import enqueue_diagnosis
from web.context import db_session, services
from web.intake import IntakeError, IntakeResult, Upload, ingest, sanitise_filename
from web.queries import batch_counts, batch_studies, study_with_findings, worklist
from web.serializers import batch_detail, study_detail, worklist_item

bp = Blueprint("api", __name__, url_prefix="/api/v1")

WORKLIST_DEFAULT_LIMIT = 50
WORKLIST_MAX_LIMIT = 200
LABEL_MAX_LENGTH = 200


def _intake_json(result: IntakeResult) -> dict[str, Any]:
    body: dict[str, Any] = {
        "batch_id": result.batch_id,
        "accepted": [
            {"id": a.study_id, "filename": a.filename, "status": a.status, "enqueued": a.enqueued}
            for a in result.accepted
        ],
        "rejected": [{"filename": r.filename, "reason": r.reason} for r in result.rejected],
    }
    if result.batch_id is not None:
        body["url"] = url_for("api.get_batch", batch_id=result.batch_id)
    if result.enqueue_error:
        body["warning"] = result.enqueue_error
    return body


def _receive(batch_id: int | None) -> tuple[Response, int]:
    files = request.files.getlist("files")
    if not files:
        abort(400, description="No files: send one or more files in the multipart field 'files'.")
    label = request.form.get("label")
    label = sanitise_filename(label)[:LABEL_MAX_LENGTH] if label else None
    svc = services()
    try:
        result = ingest(
            (Upload(f.filename, f.stream) for f in files),
            session_factory=svc.session_factory,
            storage=svc.storage,
            limits=svc.settings.limits,
            enqueue=lambda study_id: enqueue_diagnosis(svc.celery, study_id),
            batch_id=batch_id,
            label=label,
        )
    except IntakeError as exc:
        return jsonify(error=exc.message), exc.status_code
    body = _intake_json(result)
    if not result.accepted:
        # Nothing was accepted: no batch is created (or changed); the rejections say why.
        body["error"] = "No file was accepted: each file's reason is under 'rejected'."
        return jsonify(body), 422
    return jsonify(body), 201


@bp.post("/batches")
def create_batch() -> tuple[Response, int]:
    """Multipart upload of many files (repeated field `files`, optional `label`) as a new batch."""
    return _receive(None)


@bp.post("/batches/<int:batch_id>/files")
def add_to_batch(batch_id: int) -> tuple[Response, int]:
    """More files for an existing batch (the upload page sends a large selection in chunks)."""
    if db_session().get(Batch, batch_id) is None:
        abort(404, description=f"Batch {batch_id} does not exist.")
    return _receive(batch_id)


@bp.get("/batches/<int:batch_id>")
def get_batch(batch_id: int) -> Response:
    session = db_session()
    batch = session.get(Batch, batch_id)
    if batch is None:
        abort(404, description=f"Batch {batch_id} does not exist.")
    return jsonify(batch_detail(batch, batch_counts(session, batch_id), batch_studies(session, batch_id)))


@bp.get("/studies/<int:study_id>")
def get_study(study_id: int) -> Response:
    study = study_with_findings(db_session(), study_id)
    if study is None:
        abort(404, description=f"Study {study_id} does not exist.")
    return jsonify(study_detail(study))


def _int_arg(name: str, default: int, minimum: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        abort(400, description=f"Query parameter '{name}' must be a whole number, got {raw[:40]!r}.")
    if value < minimum:
        abort(400, description=f"Query parameter '{name}' must be at least {minimum}, got {value}.")
    return value


@bp.get("/worklist")
def get_worklist() -> Response:
    """Completed studies, most urgent first. `limit` (1..200, default 50) and `offset` (>= 0)."""
    limit = min(_int_arg("limit", WORKLIST_DEFAULT_LIMIT, 1), WORKLIST_MAX_LIMIT)
    offset = _int_arg("offset", 0, 0)
    page = worklist(db_session(), limit, offset)
    return jsonify({
        "total": page.total,
        "limit": limit,
        "offset": offset,
        "studies": [worklist_item(s, page.positives[s.id]) for s in page.studies],
    })
