"""Bulk intake: validate each file by content, store it content-addressed, commit its Study row,
and only then enqueue it. One bad file never fails the others; nothing accepted is ever lost.

Pure logic (no Flask), shared by every way in: the web's upload (`web/api.py` adapts the request to
`Upload`s and the result to JSON) and the DICOM receiver.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared.config import ImageLimits
from shared.db import describe_db_error, session_scope
from shared.deid import BURNED_IN_WARNING, deidentify_upload
from shared.images import ImageInfo, InvalidImage, inspect_image
from shared.intake_metrics import count_intake
from shared.models import Batch, BatchUploader, Study, StudyStatus
from shared.storage import Storage, StorageError, StorageUnavailable

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 255
MAX_LABEL_LENGTH = 200
# Control, format (bidi overrides, zero-width), surrogate and line/paragraph separator characters.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
EXTENSIONS = {"png": "png", "jpeg": "jpg", "dicom": "dcm"}
# Column widths in shared.models: metadata is cut to fit (PostgreSQL enforces VARCHAR lengths).
METADATA_COLUMNS = {
    "patient_id": ("patient_id", 64),
    "patient_name": ("patient_name", 200),
    "study_instance_uid": ("study_instance_uid", 64),
    "accession_number": ("accession_number", 64),
    "study_date": ("study_date", 8),
    "modality": ("modality", 16),
    "view_position": ("view_position", 16),
    "body_part_examined": ("body_part", 64),
}
NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@dataclass(frozen=True)
class Upload:
    """One file as the client sent it: its claimed name (display only) and its content."""

    filename: str | None
    stream: BinaryIO
    # True when `filename` is already a cleaned display path (zip entries: "scans.zip/ward/a.png").
    display_safe: bool = False


@dataclass(frozen=True)
class Rejection:
    filename: str
    reason: str
    category: str = "invalid_image"  # one of shared.intake_metrics.REJECTION_REASONS


@dataclass(frozen=True)
class AcceptedStudy:
    study_id: int
    filename: str
    status: str
    enqueued: bool
    # The same bytes (sha256) were submitted before: this is that study, nothing new was queued.
    duplicate: bool = False
    batch_id: int | None = None
    # Set when de-identification found the pixels may show identifying text (shared.deid).
    warning: str | None = None


@dataclass
class IntakeResult:
    batch_id: int | None
    accepted: list[AcceptedStudy] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    enqueue_error: str | None = None


class IntakeError(Exception):
    """The request as a whole failed (storage or database): nothing was committed or enqueued."""

    def __init__(self, status_code: int, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.retry_after_s = retry_after_s  # sent as Retry-After: the failure should pass by then


def sanitise_filename(raw: str | None) -> str:
    """A client's file name made safe to display: the last path component, without NUL, control or
    format characters (e.g. bidi overrides), trimmed, at most 255 characters. Never used for storage."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _printable(name).strip()
    if name in {"", ".", ".."}:
        return "unnamed"
    return name[:MAX_NAME_LENGTH]


def clean_label(raw: str | None) -> str | None:
    """A batch label as the person typed it ("Ward 4/5 morning": slashes are text here, not a path),
    without unsafe characters, whitespace runs made one space, at most 200 characters; None if empty."""
    label = " ".join(_printable((raw or "").replace("\t", " ").replace("\n", " ").replace("\r", " ")).split())
    return label[:MAX_LABEL_LENGTH] or None


def _printable(text: str) -> str:
    return "".join(ch for ch in text if unicodedata.category(ch) not in _UNSAFE_CATEGORIES)


def _read_capped(stream: BinaryIO, max_bytes: int) -> bytes | None:
    """The whole file, or None when it is larger than `max_bytes` (reads at most one byte more)."""
    data = stream.read(max_bytes + 1)
    return None if len(data) > max_bytes else data


def _storage_failure(exc: StorageError) -> IntakeError:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.errno in NO_SPACE_ERRNOS:
        return IntakeError(507, "The server's storage is full, so no study of this upload was saved. "
                                "Ask the administrator to free space, then upload again.")
    if isinstance(exc, StorageUnavailable):
        return IntakeError(503, f"The image storage is unavailable right now ({exc}), so no study of this "
                                "upload was saved. Please upload again in a minute.", retry_after_s=30)
    return IntakeError(500, f"The server could not store the files ({exc}), so no study of this upload "
                            "was saved. Please retry; if it persists, tell the administrator.")


def _study_row(name: str, data: bytes, relpath: str, info: ImageInfo, burned_in: bool | None) -> Study:
    study = Study(
        burned_in_annotation=burned_in,
        status=StudyStatus.QUEUED.value,
        original_filename=name,
        sha256=hashlib.sha256(data).hexdigest(),
        stored_path=relpath,
        format=info.format,
        size_bytes=len(data),
        width=info.width,
        height=info.height,
    )
    if info.metadata is not None:
        for source, value in info.metadata.as_dict().items():
            if source in METADATA_COLUMNS and value is not None:
                column, width = METADATA_COLUMNS[source]
                setattr(study, column, str(value)[:width])
    return study


def _existing_study(session: Session, sha256: str, uploader_id: int | None = None) -> Study | None:
    """The latest study of these exact bytes that has (or will have) a result: failed ones do not count,
    so a failed image sent again is diagnosed again. With `uploader_id`, only studies in batches that
    user uploaded into: an uploader never learns of another's study through a duplicate."""
    query = select(Study).where(Study.sha256 == sha256, Study.status != StudyStatus.FAILED.value)
    if uploader_id is not None:
        query = query.where(Study.batch_id.in_(
            select(BatchUploader.batch_id).where(BatchUploader.user_id == uploader_id)))
    return session.scalar(query.order_by(Study.id.desc()).limit(1))


def ingest(
    uploads: Iterable[Upload | Rejection],
    *,
    session_factory: sessionmaker[Session],
    storage: Storage,
    limits: ImageLimits,
    enqueue: Callable[[int], None],
    batch_id: int | None = None,
    label: str | None = None,
    rerun: bool = False,
    deidentify_key: str | None = None,
    duplicates_of: int | None = None,
) -> IntakeResult:
    """Validate and store each upload, commit the accepted studies in one transaction, then enqueue.

    Raises IntakeError when storage or the database fails: then no row is committed and nothing is
    enqueued (originals already written are complete content-addressed files a retry reuses).
    When `batch_id` is given the studies join that batch; the caller checks it exists.
    Unless `rerun`, a file whose sha256 matches an earlier (not failed) study, or an earlier file of
    this same upload, is answered with that study (`duplicate`) and not stored or queued again.
    Items that are already `Rejection`s (refused zip entries) are passed through to the result.
    With `deidentify_key` (XRAY_DEIDENTIFY=1) each DICOM is de-identified before anything else
    (shared.deid: the stored file and the database both hold the de-identified version) and every
    study's stored file name becomes `study-<sha256 prefix>.<ext>` (a file name may name a patient).
    With `duplicates_of` (a user id: an uploader who may not read every study) only that user's
    earlier uploads count as duplicates; the same bytes sent by someone else make a new study.
    """
    pending: list[Study] = []
    slots: list[_Slot] = []
    seen: dict[str, int] = {}  # sha256 -> index in pending (duplicates inside this upload)
    result = IntakeResult(batch_id=batch_id)
    lookup = session_factory()
    try:
        for upload in uploads:
            if isinstance(upload, Rejection):
                result.rejected.append(upload)
                continue
            slot = _take(upload, lookup, storage, limits, rerun, pending, seen, result, deidentify_key,
                         duplicates_of)
            if slot is not None:
                slots.append(slot)
    except SQLAlchemyError as exc:
        log.error("looking up earlier studies failed: %s", describe_db_error(exc))
        raise IntakeError(500, "The server could not read its database; nothing was queued. Please retry.") from exc
    finally:
        lookup.close()
    if pending:
        _commit(pending, result, session_factory, batch_id, label)
    enqueued = _enqueue(pending, result, enqueue)
    for slot in slots:
        if slot.earlier is not None:
            study_id, status, earlier_batch = slot.earlier
            result.accepted.append(AcceptedStudy(study_id, slot.name, status, False, True, earlier_batch))
        else:
            assert slot.pending_index is not None
            study = pending[slot.pending_index]
            result.accepted.append(AcceptedStudy(
                study.id, slot.name, study.status, enqueued[slot.pending_index] and not slot.duplicate,
                slot.duplicate, result.batch_id, BURNED_IN_WARNING if study.burned_in_annotation else None))
    count_intake(len(result.accepted), (r.category for r in result.rejected))
    log.info("batch %s: %d file(s) accepted, %d refused", result.batch_id, len(result.accepted), len(result.rejected),
             extra={"batch_id": result.batch_id})
    return result


@dataclass(frozen=True)
class _Slot:
    """One accepted file, in upload order: a new study (pending_index), or a duplicate of one."""

    name: str
    pending_index: int | None = None
    duplicate: bool = False
    earlier: tuple[int, str, int] | None = None  # (study id, status, batch id) of an earlier upload


def _take(upload: Upload, lookup: Session, storage: Storage, limits: ImageLimits, rerun: bool,
          pending: list[Study], seen: dict[str, int], result: IntakeResult,
          deidentify_key: str | None = None, duplicates_of: int | None = None) -> _Slot | None:
    """Validate one upload: a new pending Study, a duplicate, or a rejection (None)."""
    name = (upload.filename or "unnamed") if upload.display_safe else sanitise_filename(upload.filename)
    data = _read_capped(upload.stream, limits.max_bytes)
    if data is None:
        result.rejected.append(Rejection(
            name, f"The file is larger than the {limits.max_bytes // (1024 * 1024)} MiB limit per image.",
            "too_large"))
        return None
    try:
        info = inspect_image(data, limits)
    except InvalidImage as exc:
        result.rejected.append(Rejection(name, str(exc)))
        return None
    except Exception:  # a bug reading one file must not fail the others
        # File names can name patients: the log names the upload by content hash only.
        log.exception("inspecting an upload (sha256 %s) failed", hashlib.sha256(data).hexdigest()[:16])
        result.rejected.append(Rejection(name, "The file could not be read as an X-ray image.", "unreadable"))
        return None
    stored_name, burned_in = name, None
    if deidentify_key is not None:
        try:
            clean = deidentify_upload(data, info, deidentify_key, limits)
        except Exception:
            log.exception("de-identifying an upload (sha256 %s) failed", hashlib.sha256(data).hexdigest()[:16])
            result.rejected.append(Rejection(name, "The DICOM file could not be de-identified, so it was not "
                                                   "stored. Check that it opens in a DICOM viewer.",
                                             "deidentify_failed"))
            return None
        data, info, burned_in = clean.data, clean.info, clean.burned_in
        stored_name = f"study-{hashlib.sha256(data).hexdigest()[:12]}.{EXTENSIONS[info.format]}"
    digest = hashlib.sha256(data).hexdigest()
    if not rerun:
        if digest in seen:
            return _Slot(name, pending_index=seen[digest], duplicate=True)
        earlier = _existing_study(lookup, digest, duplicates_of)
        if earlier is not None:
            return _Slot(name, earlier=(earlier.id, earlier.status, earlier.batch_id))
    try:
        relpath = storage.put_original(data, EXTENSIONS[info.format])
    except StorageError as exc:
        log.error("storing an upload (sha256 %s) failed: %s", digest[:16], exc, exc_info=True)
        raise _storage_failure(exc) from exc
    seen.setdefault(digest, len(pending))
    pending.append(_study_row(stored_name, data, relpath, info, burned_in))
    return _Slot(name, pending_index=len(pending) - 1)


def _commit(pending: list[Study], result: IntakeResult, session_factory: sessionmaker[Session],
            batch_id: int | None, label: str | None) -> None:
    try:
        with session_scope(session_factory) as session:
            batch = session.get(Batch, batch_id) if batch_id is not None else None
            if batch is None:
                batch = Batch(label=label)
                session.add(batch)
            for study in pending:
                study.batch = batch
            session.add_all(pending)
            session.flush()
            result.batch_id = batch.id
    except SQLAlchemyError as exc:
        # Not log.exception: the driver's message and traceback may quote a value of the row.
        log.error("committing %d studies failed: %s", len(pending), describe_db_error(exc))
        raise IntakeError(500, "The server could not save the studies; nothing was queued. Please retry.") from exc


def _enqueue(pending: list[Study], result: IntakeResult, enqueue: Callable[[int], None]) -> list[bool]:
    """Only now, with every row committed, tell the workers. If the broker fails, the studies stay
    `queued` in the database and the reconciler sends them later: stop trying on the first error."""
    sent: list[bool] = []
    failed = False
    for study in pending:
        enqueued = False
        if not failed:
            try:
                enqueue(study.id)
                enqueued = True
            except Exception as exc:
                log.error("enqueueing study %d failed: %s", study.id, exc, exc_info=True)
                failed = True
                result.enqueue_error = (
                    "The studies were saved but could not all be sent to the workers now; "
                    "they stay queued and will be sent automatically."
                )
        sent.append(enqueued)
    return sent
