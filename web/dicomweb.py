"""DICOMweb STOW-RS: `POST /dicomweb/studies` stores instances sent as multipart/related;
type="application/dicom" (PS3.18 10.5), through the same intake as an upload, behind the API's
auth (a Bearer token of a user who may upload). The answer is the PS3.18 store response in DICOM
JSON: the instances accepted (ReferencedSOPSequence) and those refused, each with a failure reason
(FailedSOPSequence); 200 when all were stored, 202 when some were, 409 when none."""

from __future__ import annotations

import email.parser
import email.policy
import io
import logging
from typing import Any

from flask import Blueprint, Response, abort, g, json, request, url_for
from pydicom import dcmread

from shared.intake import IntakeError, IntakeResult, Upload, ingest
from shared.queue import enqueue_diagnosis
from web.context import services

bp = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")
log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
PROCESSING_FAILURE = 0x0110  # PS3.4 / PS3.18 failure reasons
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700


@bp.post("/studies")
def store_instances() -> Response:
    parts = _dicom_parts()
    if not parts:
        abort(400, description='No instances: send one or more parts of type application/dicom.')
    uids = [_sop_uids(part) for part in parts]
    svc = services()
    try:
        result = ingest(
            (Upload(f"instance-{i + 1}.dcm", io.BytesIO(part)) for i, part in enumerate(parts)),
            session_factory=svc.session_factory, storage=svc.storage, limits=svc.settings.limits,
            enqueue=lambda study_id: enqueue_diagnosis(svc.celery, study_id), label="DICOMweb STOW-RS",
            deidentify_key=svc.settings.secret_key if svc.settings.deidentify else None,
        )
    except IntakeError as exc:
        body = _store_response([], [(u, OUT_OF_RESOURCES, exc.message) for u in uids])
        return _dicom_json(body, 503 if exc.status_code >= 500 else exc.status_code)
    g.intake_result = result  # for the audit (web.audit_hooks)
    accepted, failed = _outcomes(result, uids)
    body = _store_response(accepted, failed)
    status = 200 if not failed else 202 if accepted else 409
    return _dicom_json(body, status)


def _dicom_parts() -> list[bytes]:
    """The application/dicom parts of a multipart/related body; 415 for anything else."""
    content_type = request.headers.get("Content-Type", "")
    if request.mimetype != "multipart/related" or "boundary=" not in content_type:
        abort(415, description='Send multipart/related; type="application/dicom" with a boundary.')
    declared = request.mimetype_params.get("type", "application/dicom").strip('"').lower()
    if declared != "application/dicom":
        abort(415, description=f"Only application/dicom parts can be stored, not {declared[:60]!r}.")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.get_data())
    if not message.is_multipart():
        abort(400, description="The multipart body could not be read.")
    parts = []
    for part in message.iter_parts():
        if part.get_content_type() != "application/dicom":
            abort(415, description="Every part must be application/dicom.")
        parts.append(part.get_payload(decode=True) or b"")
    return parts


def _sop_uids(data: bytes) -> tuple[str, str] | None:
    """(SOP Class UID, SOP Instance UID) of one part, None when it cannot be read."""
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        return str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except Exception:  # noqa: BLE001 - reported as a failed instance
        return None


def _outcomes(result: IntakeResult, uids: list[tuple[str, str] | None]
              ) -> tuple[list[tuple[tuple[str, str] | None, int]], list[tuple[tuple[str, str] | None, int, str]]]:
    index = {f"instance-{i + 1}.dcm": i for i in range(len(uids))}
    accepted = [(uids[index[a.filename]], a.study_id) for a in result.accepted]
    failed = [(uids[index[r.filename]], CANNOT_UNDERSTAND, r.reason) for r in result.rejected]
    return accepted, failed


def _store_response(accepted: list[tuple[tuple[str, str] | None, int]],
                    failed: list[tuple[tuple[str, str] | None, int, str]]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if accepted:
        body["00081199"] = {"vr": "SQ", "Value": [
            {**_uid_attributes(uids),
             "00081190": {"vr": "UR", "Value": [url_for("api.get_study", study_id=study_id, _external=True)]}}
            for uids, study_id in accepted]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [
            {**_uid_attributes(uids), "00081197": {"vr": "US", "Value": [reason]},
             "00090010": {"vr": "LO", "Value": ["XRAY"]}, "00091001": {"vr": "LT", "Value": [comment]}}
            for uids, reason, comment in failed]}
    return body


def _uid_attributes(uids: tuple[str, str] | None) -> dict[str, Any]:
    if uids is None:
        return {}
    return {"00081150": {"vr": "UI", "Value": [uids[0]]}, "00081155": {"vr": "UI", "Value": [uids[1]]}}


def _dicom_json(body: dict[str, Any], status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype=DICOM_JSON)
