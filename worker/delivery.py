"""Send a done study's results (its Structured Report and Secondary Capture, shared/dicom_results.py) to
each DICOM destination it has a pending Delivery row for, by C-STORE (pynetdicom). Plain functions; the
Celery task (worker/tasks.py) adds the retries with backoff.

- The rows are written with the study's findings (worker/processing.record), one per destination in
  XRAY_DICOM_DESTINATIONS, so nothing is forgotten if a message is lost; the diagnosis task then
  enqueues the delivery.
- Each destination is tried on its own: one PACS being down does not hold back the others. A row is
  `sent` once the destination accepted both objects, else it stays `pending` with the reason, and is
  `failed` once `settings.delivery_max_attempts` tries are used up.
- The objects are rendered deterministically (same UIDs, same bytes), so a resend after a lost answer
  replaces what the PACS holds rather than adding a duplicate.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from shared.config import DicomDestination, Settings, parse_destinations
from shared.db import session_scope
from shared.models import Delivery, DeliveryStatus, Study
from shared.results import DoneStudy, NotDone
from shared.storage import Storage, StoredFileMissing

log = logging.getLogger(__name__)

ASSOCIATION_TIMEOUT_S = 30.0
MAX_REASON_CHARS = 500
# C-STORE statuses that mean "stored": success, and the warnings of PS3.4 B.2.3 (coercion, elements
# discarded, data set does not match the SOP class).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


class DeliveryError(Exception):
    """A destination did not take the results; the message says why, for the delivery row."""


Sender = Callable[[DicomDestination, str, Sequence[Dataset]], None]


@dataclass(frozen=True)
class DeliveryOutcome:
    study_id: int
    sent: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()  # try again later
    failed: tuple[str, ...] = ()  # attempts used up
    reasons: dict[str, str] = field(default_factory=dict)


def utcnow() -> datetime:
    return datetime.now(UTC)


def send_cstore(destination: DicomDestination, calling_aet: str, datasets: Sequence[Dataset],
                timeout_s: float = ASSOCIATION_TIMEOUT_S) -> None:
    """Store `datasets` at `destination` in one association; DeliveryError unless each was stored."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        why = "refused the association" if assoc.is_rejected else "could not be reached"
        raise DeliveryError(f"{destination} {why}")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = status.get("Status") if status else None
            if code is None:
                raise DeliveryError(f"{destination} gave no answer to the C-STORE of {ds.SOPClassUID.name}")
            if int(code) not in STORED_STATUSES:
                raise DeliveryError(f"{destination} refused the {ds.SOPClassUID.name} (status 0x{int(code):04X})")
    finally:
        if assoc.is_established:
            assoc.release()


def render_results(storage: Storage, done: DoneStudy, settings: Settings) -> list[Dataset]:
    """The study's SR and Secondary Capture, as the data sets sent (read back from the rendered files)."""
    from shared.dicom_results import study_overlay, study_sr  # highdicom: only where results are made

    return [pydicom.dcmread(io.BytesIO(data))
            for data in (study_sr(storage, done), study_overlay(storage, done, settings.limits))]


def deliver_study(session_factory: sessionmaker[Session], storage: Storage, settings: Settings, study_id: int,
                  send: Sender = send_cstore, now: Callable[[], datetime] = utcnow) -> DeliveryOutcome:
    """Send the study's results to each destination still pending; record each answer as it comes."""
    with session_scope(session_factory) as session:
        study = session.scalar(select(Study).where(Study.id == study_id)
                               .options(selectinload(Study.findings), selectinload(Study.deliveries)))
        if study is None:
            return DeliveryOutcome(study_id)
        pending = [(d.id, d.destination) for d in study.deliveries if d.status == DeliveryStatus.PENDING.value]
        if not pending:
            return DeliveryOutcome(study_id)
        try:
            done = DoneStudy.from_row(study)
        except NotDone as exc:
            return _fail_all(session_factory, study_id, pending, str(exc), now())
    try:
        datasets = render_results(storage, done, settings)
    except StoredFileMissing as exc:
        return _fail_all(session_factory, study_id, pending, f"the results could not be made: {exc}", now())

    sent, waiting, failed, reasons = [], [], [], {}
    for delivery_id, destination in pending:
        try:
            send(parse_destinations(destination)[0], settings.dicom_aet, datasets)
        except (DeliveryError, ValueError, OSError) as exc:
            reason = str(exc)[:MAX_REASON_CHARS]
            reasons[destination] = reason
            given_up = _note_failure(session_factory, delivery_id, reason, settings.delivery_max_attempts, now())
            (failed if given_up else waiting).append(destination)
            log.warning("study %s: results not delivered to %s: %s", study_id, destination, reason)
            continue
        _note_sent(session_factory, delivery_id, now())
        sent.append(destination)
        log.info("study %s: results delivered to %s", study_id, destination)
    return DeliveryOutcome(study_id, tuple(sent), tuple(waiting), tuple(failed), reasons)


def _note_sent(session_factory: sessionmaker[Session], delivery_id: int, at: datetime) -> None:
    with session_scope(session_factory) as session:
        session.execute(update(Delivery).where(Delivery.id == delivery_id)
                        .values(status=DeliveryStatus.SENT.value, attempts=Delivery.attempts + 1, error=None,
                                sent_at=at, updated_at=at))


def _note_failure(session_factory: sessionmaker[Session], delivery_id: int, reason: str, max_attempts: int,
                  at: datetime) -> bool:
    """Count the try and keep the reason; True when that was the last try (the row is now `failed`)."""
    with session_scope(session_factory) as session:
        attempts = session.scalar(select(Delivery.attempts).where(Delivery.id == delivery_id)) or 0
        given_up = attempts + 1 >= max_attempts
        session.execute(update(Delivery).where(Delivery.id == delivery_id, Delivery.status == "pending")
                        .values(attempts=attempts + 1, updated_at=at,
                                status=DeliveryStatus.FAILED.value if given_up else DeliveryStatus.PENDING.value,
                                error=f"gave up after {attempts + 1} attempts: {reason}" if given_up else reason))
    return given_up


def _fail_all(session_factory: sessionmaker[Session], study_id: int, pending: list[tuple[int, str]], reason: str,
              at: datetime) -> DeliveryOutcome:
    """Nothing can be sent for this study (no results, or their files are gone): say so on each row."""
    with session_scope(session_factory) as session:
        session.execute(update(Delivery).where(Delivery.id.in_([d for d, _ in pending]))
                        .values(status=DeliveryStatus.FAILED.value, error=reason[:MAX_REASON_CHARS], updated_at=at))
    log.error("study %s: results cannot be delivered: %s", study_id, reason)
    destinations = tuple(destination for _, destination in pending)
    return DeliveryOutcome(study_id, failed=destinations, reasons=dict.fromkeys(destinations, reason))
