"""The intake's counters, for every way files come in (the web's uploads and any other caller of the
intake): `xray_upload_files_accepted_total` and `xray_upload_files_rejected_total{reason}`.

Flask-free so the intake can count wherever it runs; the web's /metrics exports them (web/metrics.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter

# Why a file was refused, as a label: each Rejection carries one (shared/intake.py, web/archive.py).
REJECTION_REASONS = ("too_large", "invalid_image", "unreadable", "deidentify_failed", "archive_refused")

FILES_ACCEPTED = Counter("xray_upload_files_accepted", "Uploaded files accepted (new studies and duplicates)")
FILES_REJECTED = Counter("xray_upload_files_rejected", "Uploaded files refused, by reason category", ["reason"])
for _reason in REJECTION_REASONS:
    FILES_REJECTED.labels(reason=_reason)  # every category is exported from the start, at 0


def count_intake(accepted: int, rejected: Iterable[str]) -> None:
    """Count one request's files: how many were accepted, and each refused one's reason category."""
    if accepted:
        FILES_ACCEPTED.inc(accepted)
    for category in rejected:
        FILES_REJECTED.labels(reason=category if category in REJECTION_REASONS else "invalid_image").inc()
