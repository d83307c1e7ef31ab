"""A done study's results in the hospital's formats, rendered on request from the study and its stored
files (shared/dicom_results.py, shared/fhir_report.py):

- GET /api/v1/studies/<id>/sr.dcm: the DICOM Structured Report (application/dicom, attachment).
- GET /api/v1/studies/<id>/overlay.dcm: the DICOM Secondary Capture with the heatmap burned in.
- GET /api/v1/studies/<id>/fhir: the FHIR R4 DiagnosticReport (application/fhir+json).

Who may: whoever may read the study's JSON (READ_STUDIES); each download is audited as an export.
404 when the study does not exist or is not done (yet); the error says which.
Rendering is deterministic, so the responses carry a strong ETag (the UID of the object and the
renderer's version) and If-None-Match answers 304 without rendering.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import Blueprint, Response, abort, request

from shared.storage import StorageError, StoredFileMissing
from web.context import db_session, services
from web.queries import study_with_findings

if TYPE_CHECKING:
    from shared.results import DoneStudy

bp = Blueprint("results", __name__, url_prefix="/api/v1")
log = logging.getLogger(__name__)

# Part of every ETag here: change it when an encoder's output changes.
RENDERER = "results-v1"
DICOM_MIMETYPE = "application/dicom"
FHIR_MIMETYPE = "application/fhir+json"


def _done_study(study_id: int) -> DoneStudy:
    from shared.results import DoneStudy, NotDone  # pydicom, scipy: loaded on first use, not at web start

    study = study_with_findings(db_session(), study_id)
    if study is None:
        abort(404, description=f"Study {study_id} does not exist.")
    try:
        return DoneStudy.from_row(study)
    except NotDone as exc:
        abort(404, description=str(exc))


def _respond(study_id: int, kind: str, mimetype: str, render: Callable[[DoneStudy], bytes | str],
             filename: str | None = None) -> Response:
    done = _done_study(study_id)
    etag = f"{done.uid(kind)}-{RENDERER}"
    if request.if_none_match.contains(etag):
        response = Response(status=304)
    else:
        try:
            body = render(done)
        except StoredFileMissing as exc:
            log.error("study %d: cannot render its %s: %s", study_id, kind, exc)
            abort(404, description=f"A file of study {study_id} is missing from the server's storage.")
        except StorageError as exc:
            log.error("study %d: cannot render its %s: %s", study_id, kind, exc)
            abort(500, description=exc.message)
        response = Response(body, mimetype=mimetype)
        if filename:
            response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.set_etag(etag)
    response.cache_control.private = True  # patient data: no shared caches
    return response


@bp.get("/studies/<int:study_id>/sr.dcm")
def structured_report(study_id: int) -> Response:
    from shared.dicom_results import study_sr  # highdicom: loaded on first use, not at web start

    return _respond(study_id, "sr", DICOM_MIMETYPE, lambda done: study_sr(services().storage, done),
                    f"study-{study_id}-sr.dcm")


@bp.get("/studies/<int:study_id>/overlay.dcm")
def overlay(study_id: int) -> Response:
    from shared.dicom_results import study_overlay

    svc = services()
    return _respond(study_id, "overlay", DICOM_MIMETYPE,
                    lambda done: study_overlay(svc.storage, done, svc.settings.limits),
                    f"study-{study_id}-overlay.dcm")


@bp.get("/studies/<int:study_id>/fhir")
def fhir(study_id: int) -> Response:
    from shared.fhir_report import study_report

    return _respond(study_id, "fhir", FHIR_MIMETYPE,
                    lambda done: json.dumps(study_report(services().storage, done), indent=2, ensure_ascii=False))

