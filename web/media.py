"""The X-ray and its heatmap layers, served by the app from storage (never from a public folder).

PNG and JPEG originals are served as stored. A DICOM is shown through its display picture, made once
by the worker (`shared.display`), so a view never decodes a DICOM here. A heatmap layer is rendered
on request from the finding's map in the study's CAM sheet (one 16-bit PNG of all 14 low-resolution
maps); the sheet never changes once a study is done, so the layer has a strong ETag (the sheet's
sha256, the label and the renderer's version) and If-None-Match answers 304 without rendering."""

from __future__ import annotations

import hashlib
import logging

from flask import Blueprint, Response, abort, request, send_file
from sqlalchemy import select

from shared.findings import FINDINGS
from shared.models import Finding, Study
from shared.storage import StorageError, StoredFileMissing
from web.context import db_session, services

bp = Blueprint("media", __name__)
log = logging.getLogger(__name__)

MIMETYPES = {"png": "image/png", "jpeg": "image/jpeg"}
MAX_AGE_S = 3600
HEATMAP_MAX_AGE_S = 86400
# Part of every heatmap ETag: change it when heatmap_layer_png draws differently.
HEATMAP_RENDERER = "layer256-v1"


def _private(response: Response) -> Response:
    # Patient images: browsers may cache them, shared caches must not.
    response.cache_control.private = True
    response.cache_control.public = False
    return response


@bp.get("/studies/<int:study_id>/image")
def image(study_id: int) -> Response:
    study = db_session().get(Study, study_id)
    if study is None:
        abort(404, description=f"Study {study_id} does not exist.")
    if study.format in MIMETYPES:
        relpath, mimetype, etag = study.stored_path, MIMETYPES[study.format], study.sha256
    elif study.display_path:
        relpath, mimetype, etag = study.display_path, "image/png", f"{study.sha256}-display"
    else:
        abort(404, description="This DICOM has no picture yet: it is shown once the study is diagnosed.")
    try:
        path = services().storage.path(relpath)
    except StorageError:
        log.error("study %d has an invalid stored path", study_id)
        abort(404, description="The image file is missing.")
    if not path.is_file():
        abort(404, description="The image file is missing.")
    return _private(send_file(path, mimetype=mimetype, conditional=True, max_age=MAX_AGE_S, etag=etag))


@bp.get("/studies/<int:study_id>/heatmaps/<label>.png")
def heatmap(study_id: int, label: str) -> Response:
    if label not in FINDINGS:
        abort(404, description=f"Unknown finding {label[:40]!r}.")
    finding = db_session().scalar(
        select(Finding).where(Finding.study_id == study_id, Finding.label == label)
    )
    if finding is None or not finding.heatmap_path:
        abort(404, description=f"No {label} heatmap for study {study_id}.")
    stored = _read_heatmap(finding.id, finding.heatmap_path)
    # One stored sheet holds every finding's map: the label is part of the tag.
    etag = f"{hashlib.sha256(stored).hexdigest()[:32]}-{label}-{HEATMAP_RENDERER}"
    if request.if_none_match.contains(etag):
        response = Response(status=304)
    else:
        response = Response(_heatmap_layer(stored, label), mimetype="image/png")
    response.set_etag(etag)
    response.cache_control.max_age = HEATMAP_MAX_AGE_S
    return _private(response)


def _read_heatmap(finding_id: int, relpath: str) -> bytes:
    try:
        return services().storage.read(relpath)
    except StoredFileMissing:
        abort(404, description="The heatmap file is missing.")
    except StorageError:
        log.error("finding %d: cannot read its heatmap %r", finding_id, relpath)
        abort(404, description="The heatmap file is missing.")


def _heatmap_layer(stored: bytes, label: str) -> bytes:
    """The colour layer of `label`'s map in a stored CAM sheet."""
    from shared.gradcam import cam_from_png, heatmap_layer_png  # numpy, scipy, Pillow: no TensorFlow

    try:
        cam = cam_from_png(stored, label)
    except ValueError:
        log.error("a stored heatmap is not a CAM sheet")
        abort(404, description="The heatmap file is unreadable.")
    return heatmap_layer_png(cam)
