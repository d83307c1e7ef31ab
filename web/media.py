"""The X-ray and its heatmap layers, served by the app from storage (never from a public folder).

A heatmap layer is rendered on request from the finding's map in the study's stored CAM sheet (one
16-bit greyscale PNG holding all 14 low-resolution maps, written by the worker; older studies have one
such PNG per finding): `heatmap_layer_png(cam_from_png(stored, label))`, the same RGBA layer the
worker used to store. The stored sheet never changes once a study is done, so the layer has a strong
ETag (the stored bytes' sha256, the label and the renderer's version) and may be cached for a day;
If-None-Match answers 304 without rendering. Layers stored before CAMs were (RGBA PNGs) are served
as stored."""

from __future__ import annotations

import hashlib
import io
import logging

from flask import Blueprint, Response, abort, request, send_file
from sqlalchemy import select

from shared.findings import FINDINGS
from shared.models import Finding, Study
from shared.storage import StorageError, StoredFileMissing
from web.context import db_session, services

bp = Blueprint("media", __name__)
log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
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


def _dicom_as_png(data: bytes) -> bytes:
    """Display rendering of a DICOM (MONOCHROME1 inverted, rescale/VOI applied by read_image)."""
    import numpy as np
    from PIL import Image

    from shared.images import read_image

    image = read_image(data, services().settings.limits)
    pixels = np.clip(image.pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG", compress_level=3)
    return out.getvalue()


@bp.get("/studies/<int:study_id>/image")
def image(study_id: int) -> Response:
    study = db_session().get(Study, study_id)
    if study is None:
        abort(404, description=f"Study {study_id} does not exist.")
    storage = services().storage
    try:
        path = storage.path(study.stored_path)
    except StorageError:
        log.error("study %d has an invalid stored path %r", study_id, study.stored_path)
        abort(404, description="The image file is missing.")
    if not path.is_file():
        abort(404, description="The image file is missing.")
    if study.format in MIMETYPES:
        response = send_file(path, mimetype=MIMETYPES[study.format], conditional=True, max_age=MAX_AGE_S,
                             etag=study.sha256)
        return _private(response)
    from shared.images import InvalidImage

    try:
        png = _dicom_as_png(path.read_bytes())
    except InvalidImage as exc:
        abort(422, description=f"This DICOM cannot be displayed: {exc}")
    response = send_file(io.BytesIO(png), mimetype="image/png",
                         max_age=MAX_AGE_S, etag=f"{study.sha256}-png", conditional=True)
    response.make_conditional(request)
    return _private(response)


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
    """The colour layer of `label`'s map in a stored CAM sheet (or single CAM); an RGBA layer stored
    before CAMs were, as it is."""
    from shared.gradcam import cam_from_png, heatmap_layer_png  # numpy, scipy, Pillow: no TensorFlow

    try:
        cam = cam_from_png(stored, label)
    except ValueError:
        if stored.startswith(PNG_SIGNATURE):
            return stored
        log.error("a stored heatmap is neither a CAM nor a PNG layer")
        abort(404, description="The heatmap file is unreadable.")
    return heatmap_layer_png(cam)
