"""JSON API, version 1: bulk upload, batch progress, study results, the worklist.

Upload status codes (POST /api/v1/batches and POST /api/v1/batches/<id>/files):
- 201: at least one file accepted; `rejected` lists the others with a reason each. When enqueueing
  failed after the commit, the studies stay `queued` (the reconciler re-sends them), their
  `enqueued` is false and `warning` says so.
- 422: every file rejected: same body (`batch_id` null for a new batch, nothing written) plus `error`.
- 400 no `files` field; 404 unknown batch; 403 cross-site browser request; 413 body over
  `max_upload_bytes`; 507 storage full / 503 storage unreachable (e.g. the object store is down) /
  500 other storage or database failure: no study committed.
- 200: nothing new, but every accepted file was a duplicate (its bytes' sha256 matches an earlier
  study the sender may see: an uploader's own uploads, anyone's for a radiologist or admin; bytes
  another uploader sent make a new study instead): each is listed under `accepted` with that study's
  id and `"duplicate": true`. Send the form
  field `rerun=1` to diagnose such files again as new studies. A zip file in `files` is unpacked and
  each entry validated on its own (web/archive.py); refused entries appear under `rejected`.

Other routes:
- GET /api/v1/batches/<id>, GET /api/v1/batches/<id>.csv (attachment), GET /api/v1/studies/<id>,
  GET /api/v1/studies/<id>/export.json (attachment).
- GET /api/v1/worklist: filters `status` (open|reviewed|done|failed|queued|processing|all, default open),
  `finding`, `batch`, `from`, `to` (upload dates), `model_trained`, `q` (search); pages by `limit` and
  `after` (the `next_cursor` of the previous page) or `offset`. 400 names a bad parameter.
  GET /api/v1/worklist.csv: the same filters, every matching study (attachment).
- POST /api/v1/studies/<id>/review: JSON `{"note", "verdicts": {label: "agree"|"disagree"}}` (or the
  page's form); the reviewer recorded is the logged-in account. 201 with the review; 400 bad input;
  404 no study; 409 the study is not done.
Every route needs a login or `Authorization: Bearer <token>` (401 without; 403 when the role does not
allow it: web/auth.py, docs/SECURITY.md). Every error on /api/ is JSON `{"error": "..."}` (web/errors.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from flask import Blueprint, Response, abort, g, jsonify, request, stream_with_context, url_for
from werkzeug.datastructures import FileStorage

from shared import accounts
from shared.accounts import READ_STUDIES
from shared.intake import IntakeError, IntakeResult, Rejection, Upload, clean_label, ingest
from shared.models import Batch
from shared.queue import enqueue_diagnosis
from web.archive import expand_zip, is_zip
from web.audit_hooks import audited_export
from web.auth import current_user
from web.context import db_session, services
from web.export import csv_lines
from web.params import MAX_ID
from web.queries import batch_counts, batch_studies, study_with_findings
from web.review import ReviewError, parse_review, record_review, review_json, reviews_of
from web.serializers import batch_detail, study_detail, worklist_item
from web.worklist import Cursor, FilterError, WorklistFilter, iter_studies, parse_filter, worklist

bp = Blueprint("api", __name__, url_prefix="/api/v1")

WORKLIST_DEFAULT_LIMIT = 50
WORKLIST_MAX_LIMIT = 200


def _intake_json(result: IntakeResult) -> dict[str, Any]:
    body: dict[str, Any] = {
        "batch_id": result.batch_id,
        "accepted": [
            {"id": a.study_id, "filename": a.filename, "status": a.status, "enqueued": a.enqueued,
             "duplicate": a.duplicate, "batch_id": a.batch_id, **({"warning": a.warning} if a.warning else {})}
            for a in result.accepted
        ],
        "rejected": [{"filename": r.filename, "reason": r.reason} for r in result.rejected],
    }
    if result.batch_id is not None:
        body["url"] = url_for("api.get_batch", batch_id=result.batch_id)
    if result.enqueue_error:
        body["warning"] = result.enqueue_error
    return body


def _uploads(files: list[FileStorage]) -> Iterator[Upload | Rejection]:
    """Each file as it came, except zips: their entries, one by one (web/archive.py)."""
    max_bytes = services().settings.limits.max_bytes
    for f in files:
        head = f.stream.read(4)
        f.stream.seek(0)
        if is_zip(head):
            yield from expand_zip(f.filename, f.stream, max_bytes)
        else:
            yield Upload(f.filename, f.stream)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _duplicate_scope() -> int | None:
    """Whose earlier uploads count as duplicates: everybody's for a user who may read every study,
    else only the user's own (an uploader must not learn another's study id, batch or status)."""
    user = current_user()
    if user is None or accounts.can(user.role, READ_STUDIES):
        return None
    return user.id


def _receive(batch_id: int | None) -> tuple[Response, int]:
    files = request.files.getlist("files")
    if not files:
        abort(400, description="No files: send one or more files in the multipart field 'files'.")
    label = clean_label(request.form.get("label"))
    svc = services()
    try:
        result = ingest(
            _uploads(files),
            session_factory=svc.session_factory,
            storage=svc.storage,
            limits=svc.settings.limits,
            enqueue=lambda study_id: enqueue_diagnosis(svc.celery, study_id),
            batch_id=batch_id,
            label=label,
            rerun=_truthy(request.form.get("rerun")),
            deidentify_key=svc.settings.secret_key if svc.settings.deidentify else None,
            duplicates_of=_duplicate_scope(),
        )
    except IntakeError as exc:
        retry = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else {}
        return jsonify(error=exc.message), exc.status_code, retry
    g.intake_result = result  # for the audit (web.audit_hooks)
    body = _intake_json(result)
    if result.accepted and all(a.duplicate for a in result.accepted):
        return jsonify(body), 200
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


def _study_json(study_id: int) -> dict[str, Any]:
    session = db_session()
    study = study_with_findings(session, study_id)
    if study is None:
        abort(404, description=f"Study {study_id} does not exist.")
    return {**study_detail(study), "reviews": [review_json(r) for r in reviews_of(session, study_id)]}


@bp.get("/studies/<int:study_id>")
def get_study(study_id: int) -> Response:
    return jsonify(_study_json(study_id))


@bp.get("/studies/<int:study_id>/export.json")
def export_study(study_id: int) -> Response:
    """The study's full result (findings, boxes, model version, reviews) as a downloadable file."""
    body = json.dumps(_study_json(study_id), indent=2, ensure_ascii=False)
    return Response(body, mimetype="application/json",
                    headers={"Content-Disposition": f'attachment; filename="study-{study_id}.json"'})


@bp.post("/studies/<int:study_id>/review")
def review_study(study_id: int) -> tuple[Response, int]:
    """Mark a done study reviewed (it leaves the open worklist); the Review row is the audit record."""
    try:
        body = request.get_json(silent=True) if request.is_json else request.form.to_dict()
    except RecursionError:  # the JSON parser's own limit: not a ValueError, so not caught by silent=True
        abort(400, description="The JSON is nested too deeply: send the review as one flat JSON object.")
    if not isinstance(body, dict):
        abort(400, description="Send the review as a JSON object or a form.")
    session = db_session()
    try:
        given = parse_review(body)
        user = current_user()
        # The reviewer is the logged-in account, whatever the client says.
        given = replace(given, reviewer=user.username if user is not None else given.reviewer)
        review = record_review(session, study_id, given)
        session.commit()
    except ReviewError as exc:
        session.rollback()
        return jsonify(error=exc.message), exc.status_code
    return jsonify(review_json(review)), 201


def _csv_response(f: WorklistFilter, filename: str) -> Response:
    session = db_session()
    # Each exported study is recorded in the audit log before its row is sent (web/audit_hooks.py).
    rows = audited_export(iter_studies(session, f), {"format": "csv", "file": filename, "filters": f.for_audit()})
    lines = csv_lines(rows)
    return Response(stream_with_context(lines), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@bp.get("/batches/<int:batch_id>.csv")
def export_batch(batch_id: int) -> Response:
    if db_session().get(Batch, batch_id) is None:
        abort(404, description=f"Batch {batch_id} does not exist.")
    return _csv_response(WorklistFilter(status="all", batch_id=batch_id), f"batch-{batch_id}.csv")


def _filter() -> WorklistFilter:
    try:
        return parse_filter(request.args)
    except FilterError as exc:
        abort(400, description=str(exc))


@bp.get("/worklist.csv")
def export_worklist() -> Response:
    return _csv_response(_filter(), "worklist.csv")


def _int_arg(name: str, default: int, minimum: int, maximum: int = MAX_ID) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        abort(400, description=f"Query parameter '{name}' must be a whole number, got {raw[:40]!r}.")
    if value < minimum:
        abort(400, description=f"Query parameter '{name}' must be at least {minimum}, got {value}.")
    if value > maximum:
        abort(400, description=f"Query parameter '{name}' must be at most {maximum}, got {raw[:40]!r}.")
    return value


@bp.get("/worklist")
def get_worklist() -> Response:
    """Most urgent first (web/worklist.py). `limit` (1..200, default 50); `after` (a cursor) or `offset`."""
    f = _filter()
    limit = min(_int_arg("limit", WORKLIST_DEFAULT_LIMIT, 1), WORKLIST_MAX_LIMIT)
    offset = _int_arg("offset", 0, 0)
    after = None
    if request.args.get("after"):
        try:
            after = Cursor.decode(request.args["after"])
        except FilterError as exc:
            abort(400, description=str(exc))
    page = worklist(db_session(), f, limit, offset=offset, after=after)
    query = f.as_query()
    return jsonify({
        "total": page.total,
        "limit": limit,
        "offset": offset,
        "filters": query,
        "next_cursor": page.next_cursor,
        "next": url_for("api.get_worklist", **query, limit=limit, after=page.next_cursor)
        if page.next_cursor else None,
        "csv": url_for("api.export_worklist", **query),
        "studies": [worklist_item(s, page.positives[s.id]) for s in page.studies],
    })
