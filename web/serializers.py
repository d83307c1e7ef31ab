"""ORM rows -> JSON-ready dicts. The study page and the API read the same shapes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import url_for

from shared.deid import BURNED_IN_WARNING
from shared.findings import DISPLAY_NAMES, FINDINGS, URGENCY
from shared.frontal import FLAG_TEXT
from shared.models import Batch, Delivery, Finding, Study, StudyStatus
from shared.report_text import plain_summary

DICOM_FIELDS = (
    ("patient_id", "patient_id"),
    ("patient_name", "patient_name"),
    ("study_instance_uid", "study_instance_uid"),
    ("accession_number", "accession_number"),
    ("study_date", "study_date"),
    ("modality", "modality"),
    ("view_position", "view_position"),
    ("body_part_examined", "body_part"),
)
STATUSES = tuple(status.value for status in StudyStatus)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC (SQLite hands back naive datetimes; they were written in UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def dicom_metadata(study: Study) -> dict[str, str | None] | None:
    if study.format != "dicom":
        return None
    return {key: getattr(study, column) for key, column in DICOM_FIELDS}


def finding_json(study: Study, finding: Finding) -> dict[str, Any]:
    box = None
    if finding.box_x is not None and finding.box_w is not None:
        box = {"x": finding.box_x, "y": finding.box_y, "width": finding.box_w, "height": finding.box_h}
    heatmap_url = None
    if finding.heatmap_path:
        heatmap_url = url_for("media.heatmap", study_id=study.id, label=finding.label)
    return {
        "label": finding.label,
        "display_name": DISPLAY_NAMES.get(finding.label, finding.label),
        "probability": finding.probability,
        "threshold": finding.threshold,
        "positive": finding.positive,
        "urgency": URGENCY.get(finding.label),
        "heatmap_url": heatmap_url,
        "box": box,
    }


def ordered_findings(study: Study) -> list[Finding]:
    order = {label: index for index, label in enumerate(FINDINGS)}
    return sorted(study.findings, key=lambda f: (order.get(f.label, len(order)), f.label))


def summary_text(study: Study, findings: list[Finding]) -> str | None:
    """The plain-language summary of a done study (`shared.report_text`); None before it is done."""
    if study.status != StudyStatus.DONE.value or not findings:
        return None
    return plain_summary(findings, study.model_trained, study.not_frontal_reason)


def study_summary(study: Study) -> dict[str, Any]:
    return {
        "id": study.id,
        "filename": study.original_filename,
        "status": study.status,
        "error": study.error,
        "format": study.format,
        "patient_id": study.patient_id,
        "patient_name": study.patient_name,
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "reviewed_at": iso(study.reviewed_at),
        "url": url_for("api.get_study", study_id=study.id),
        "page_url": url_for("pages.study", study_id=study.id),
    }


def study_detail(study: Study) -> dict[str, Any]:
    return {
        **study_summary(study),
        "batch_id": study.batch_id,
        "format": study.format,
        "width": study.width,
        "height": study.height,
        "size_bytes": study.size_bytes,
        "sha256": study.sha256,
        "attempts": study.attempts,
        "model_version": study.model_version,
        "model_trained": study.model_trained,
        "model_runtime": study.model_runtime,
        "timings_ms": study.timings,
        "urgency": study.urgency,
        "due_at": iso(study.due_at),
        "created_at": iso(study.created_at),
        "started_at": iso(study.started_at),
        "finished_at": iso(study.finished_at),
        "dicom": dicom_metadata(study),
        # True: de-identified, but the pixels may show identifying text (`warnings` says so in words).
        "burned_in_annotation": study.burned_in_annotation,
        "warnings": [BURNED_IN_WARNING] if study.burned_in_annotation else [],
        "frontal_check": frontal_check(study),
        "image_url": url_for("media.image", study_id=study.id),
        "findings": [finding_json(study, f) for f in ordered_findings(study)],
        "summary": summary_text(study, ordered_findings(study)),
        "results": results_urls(study),
        "deliveries": [delivery_json(d) for d in study.deliveries],
    }


def frontal_check(study: Study) -> dict[str, Any] | None:
    """Whether the image is a frontal chest X-ray (`shared.frontal`); None before the study is done or
    for a study diagnosed before the check existed."""
    if study.not_frontal is None:
        return None
    return {"flagged": study.not_frontal, "reason": study.not_frontal_reason,
            "label": FLAG_TEXT if study.not_frontal else None}


def results_urls(study: Study) -> dict[str, str] | None:
    """The study's results in the hospital's formats (web/results.py), once it is done."""
    if study.status != StudyStatus.DONE.value:
        return None
    return {
        "dicom_sr": url_for("results.structured_report", study_id=study.id),
        "dicom_overlay": url_for("results.overlay", study_id=study.id),
        "fhir": url_for("results.fhir", study_id=study.id),
    }


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    """The sending of the results to one DICOM destination (worker/delivery.py)."""
    return {
        "destination": delivery.destination,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "error": delivery.error,
        "sent_at": iso(delivery.sent_at),
        "updated_at": iso(delivery.updated_at),
    }


def batch_detail(batch: Batch, counts: dict[str, int], studies: list[Study]) -> dict[str, Any]:
    full_counts = {status: counts.get(status, 0) for status in STATUSES}
    total = sum(full_counts.values())
    return {
        "id": batch.id,
        "label": batch.label,
        "created_at": iso(batch.created_at),
        "counts": {**full_counts, "total": total},
        "complete": full_counts["queued"] + full_counts["processing"] == 0,
        "url": url_for("api.get_batch", batch_id=batch.id),
        "csv_url": url_for("api.export_batch", batch_id=batch.id),
        "page_url": url_for("pages.batch", batch_id=batch.id),
        "studies": [study_summary(s) for s in studies],
    }


def worklist_item(study: Study, positives: list[Finding]) -> dict[str, Any]:
    positives = sorted(positives, key=lambda f: -f.probability)
    return {
        "id": study.id,
        "batch_id": study.batch_id,
        "status": study.status,
        "reviewed_at": iso(study.reviewed_at),
        "filename": study.original_filename,
        "patient_id": study.patient_id,
        "patient_name": study.patient_name,
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "study_instance_uid": study.study_instance_uid,
        "urgency": study.urgency,
        "due_at": iso(study.due_at),
        "finished_at": iso(study.finished_at),
        "not_frontal": bool(study.not_frontal),
        "not_frontal_reason": study.not_frontal_reason,
        "model_version": study.model_version,
        "model_trained": study.model_trained,
        "model_runtime": study.model_runtime,
        "positives": [
            {"label": f.label, "display_name": DISPLAY_NAMES.get(f.label, f.label), "probability": f.probability}
            for f in positives
        ],
        "url": url_for("api.get_study", study_id=study.id),
        "page_url": url_for("pages.study", study_id=study.id),
    }
