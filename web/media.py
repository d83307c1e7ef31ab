"""The X-ray and its heatmap layers, served by the app from storage (never from a public folder).

PNG and JPEG originals are served as stored. A DICOM is shown through its display picture, made once
by the worker (`shared.display`), so a view never decodes a DICOM here. A heatmap layer is rendered
on request from the finding's map in the study's CAM sheet (one 16-bit PNG of all 14 low-resolution
maps); the sheet never changes once a study is done, so the layer has a strong ETag (the sheet's
sha256, the label and the renderer's version) and If-None-Match answers 304 without rendering.

Files come through the storage interface (a local folder or an object store: the same URLs and
ETags either way). A file that is not stored is 404; a storage that cannot be reached is 503 with
the reason and a Retry-After, never a half-sent image."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TypeVar

from flask import Blueprint, Response, abort, request
from sqlalchemy import select
from werkzeug.exceptions import ServiceUnavailable
from werkzeug.wsgi import wrap_file

from shared.findings import FINDINGS
from shared.models import Finding, Study
from shared.storage import InvalidStoredPath, Storage, StorageError, StoredFileMissing, StoredStream
from web.context import db_session, services

T = TypeVar("T", bytes, StoredStream)
bp = Blueprint("media", __name__)
log = logging.getLogger(__name__)

MIMETYPES = {"png": "image/png", "jpeg": "image/jpeg"}
MAX_AGE_S = 3600
HEATMAP_MAX_AGE_S = 86400
# Part of every heatmap ETag: change it when heatmap_layer_png draws differently.
HEATMAP_RENDERER = "layer256-v1"
RETRY_AFTER_S = 30


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
    if request.if_none_match.contains(etag):  # the browser has it: no need to touch the storage
        return _private(_cached(Response(status=304), etag, MAX_AGE_S))
    stored = _stored(study_id, relpath, "image", lambda storage: storage.open(relpath))
    response = Response(wrap_file(request.environ, stored.stream), mimetype=mimetype, direct_passthrough=True)
    response.content_length = stored.size
    if stored.modified is not None:
        response.last_modified = stored.modified
    _cached(response, etag, MAX_AGE_S)
    return _private(response.make_conditional(request, accept_ranges=True, complete_length=stored.size))


@bp.get("/studies/<int:study_id>/heatmaps/<label>.png")
def heatmap(study_id: int, label: str) -> Response:
    if label not in FINDINGS:
        abort(404, description=f"Unknown finding {label[:40]!r}.")
    finding = db_session().scalar(
        select(Finding).where(Finding.study_id == study_id, Finding.label == label)
    )
    if finding is None or not finding.heatmap_path:
        abort(404, description=f"No {label} heatmap for study {study_id}.")
    relpath = finding.heatmap_path
    stored = _stored(study_id, relpath, "heatmap", lambda storage: storage.read(relpath))
    # One stored sheet holds every finding's map: the label is part of the tag.
    etag = f"{hashlib.sha256(stored).hexdigest()[:32]}-{label}-{HEATMAP_RENDERER}"
    if request.if_none_match.contains(etag):
        response = Response(status=304)
    else:
        response = Response(_heatmap_layer(stored, label), mimetype="image/png")
    return _private(_cached(response, etag, HEATMAP_MAX_AGE_S))


def _cached(response: Response, etag: str, max_age_s: int) -> Response:
    response.set_etag(etag)
    response.cache_control.max_age = max_age_s
    return response


def _stored(study_id: int, relpath: str, what: str, fetch: Callable[[Storage], T]) -> T:
    """`fetch(storage)`, or the HTTP error a person can act on: 404 when the file is not there, 503
    (with Retry-After) when the storage cannot be reached or refuses to answer."""
    try:
        return fetch(services().storage)
    except StoredFileMissing:
        abort(404, description=f"The {what} file is missing.")
    except InvalidStoredPath:
        log.error("study %d has an invalid stored %s path", study_id, what)
        abort(404, description=f"The {what} file is missing.")
    except StorageError as exc:
        log.error("study %d: cannot read its %s: %s", study_id, what, exc)
        raise ServiceUnavailable(f"The {what} cannot be shown now: {exc}. Please try again in a minute.",
                                 retry_after=RETRY_AFTER_S) from exc


def _heatmap_layer(stored: bytes, label: str) -> bytes:
    """The colour layer of `label`'s map in a stored CAM sheet."""
    from shared.gradcam import cam_from_png, heatmap_layer_png  # numpy, scipy, Pillow: no TensorFlow

    try:
        cam = cam_from_png(stored, label)
    except ValueError:
        log.error("a stored heatmap is not a CAM sheet")
        abort(404, description="The heatmap file is unreadable.")
    return heatmap_layer_png(cam)
