"""`xray dicom listen`: a DICOM Storage SCP (pynetdicom) for chest radiographs.

Verification (C-ECHO) and Storage (C-STORE) of CR, DX (for presentation and for processing) and
Secondary Capture images in the common transfer syntaxes. Each received image goes through
`shared.intake.ingest`, exactly like an upload (validation, storage, de-identification, commit,
then queueing); the images of one association form one batch. A C-STORE is answered Success only
once its study row is committed, so nothing answered Success is lost if the receiver stops.
Calling AE titles must be listed in XRAY_DICOM_ALLOWED_AETS (`*` for any); unset, every association
is refused, with a log line that says how to allow one.
"""

from __future__ import annotations

import io
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    Verification,
)
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.intake import IntakeError, Upload, ingest
from shared.storage import Storage

log = logging.getLogger(__name__)

STORAGE_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
TRANSFER_SYNTAXES = [
    ImplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless,
    JPEGLosslessSV1, JPEG2000Lossless, JPEG2000, RLELossless,
]
# C-STORE failure statuses (PS3.4 B.2.3): the instance was refused, with a reason in ErrorComment.
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700
SUCCESS = 0x0000


@dataclass
class ReceiverConfig:
    aet: str
    host: str
    port: int
    allowed_aets: tuple[str, ...]  # () refuses everyone; ("*",) allows any calling AE

    @classmethod
    def from_settings(cls, settings: Settings) -> ReceiverConfig:
        return cls(settings.dicom_aet, settings.dicom_host, settings.dicom_port, settings.dicom_allowed_aets)


@dataclass
class _Batches:
    """The batch each open association's images join (made by its first image)."""

    ids: dict[int, int] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)  # images received per association
    lock: threading.Lock = field(default_factory=threading.Lock)


def build_ae(config: ReceiverConfig) -> AE:
    ae = AE(ae_title=config.aet)
    ae.add_supported_context(Verification)
    for sop_class in STORAGE_CLASSES:
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    if not config.allowed_aets:
        # Nobody may call: a random title no modality uses. The log says how to allow one.
        ae.require_calling_aet = [f"X{secrets.token_hex(7).upper()}"]
        log.warning("DICOM receiver: XRAY_DICOM_ALLOWED_AETS is not set, so every association is refused; "
                    "set it to the calling AE titles of your PACS and modalities (comma-separated), or * for any")
    elif "*" not in config.allowed_aets:
        ae.require_calling_aet = list(config.allowed_aets)
    return ae


def store_handlers(settings: Settings, session_factory: sessionmaker[Session], storage: Storage,
                   enqueue: Callable[[int], None]) -> tuple[Callable[[Any], Dataset | int], Callable[[Any], None]]:
    """The C-STORE handler (one received image through the shared intake) and the one that forgets an
    association's batch when it ends."""
    batches = _Batches()

    def handle_store(event: Any) -> Dataset | int:
        key = id(event.assoc)
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # noqa: BLE001 - a malformed dataset: refuse this one instance
            log.warning("DICOM receiver: an instance could not be read (%s); refused", type(exc).__name__)
            return _failure(CANNOT_UNDERSTAND, "The dataset could not be read.")
        calling = str(event.assoc.requestor.ae_title).strip()
        with batches.lock:
            batch_id = batches.ids.get(key)
            number = batches.counts[key] = batches.counts.get(key, 0) + 1
        try:
            result = ingest(
                [Upload(f"{calling}-{number}.dcm", io.BytesIO(data))],  # a display name without identifiers
                session_factory=session_factory, storage=storage, limits=settings.limits, enqueue=enqueue,
                batch_id=batch_id, label=f"DICOM from {calling}" if batch_id is None else None,
                deidentify_key=settings.secret_key if settings.deidentify else None,
            )
        except IntakeError as exc:
            log.error("DICOM receiver: an instance could not be saved (%s); refused, the sender may retry", exc)
            return _failure(OUT_OF_RESOURCES, str(exc)[:64])
        if result.rejected:
            reason = result.rejected[0].reason
            log.warning("DICOM receiver: an instance was refused: %s", reason)
            return _failure(CANNOT_UNDERSTAND, reason[:64])
        with batches.lock:
            batches.ids.setdefault(key, result.batch_id)  # type: ignore[arg-type]
        study = result.accepted[0]
        log.info("DICOM receiver: study %d accepted from %s (batch %s)", study.study_id, calling, result.batch_id)
        return SUCCESS

    def forget(event: Any) -> None:
        with batches.lock:
            batches.ids.pop(id(event.assoc), None)
            batches.counts.pop(id(event.assoc), None)

    return handle_store, forget


def _failure(status: int, comment: str) -> Dataset:
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = comment.replace("\\", "/")  # LO: at most 64 characters, no backslash
    return answer


def _echo(_event: Any) -> int:
    return SUCCESS


def _rejected(event: Any) -> None:
    log.warning("DICOM receiver: refused an association from calling AE %r; add it to XRAY_DICOM_ALLOWED_AETS "
                "to allow it", event.assoc.requestor.ae_title)


def serve(settings: Settings, session_factory: sessionmaker[Session], storage: Storage,
          enqueue: Callable[[int], None], block: bool = True) -> Any:
    """Start the receiver; with `block=False` returns pynetdicom's server (call `.shutdown()`)."""
    config = ReceiverConfig.from_settings(settings)
    ae = build_ae(config)
    handle_store, forget = store_handlers(settings, session_factory, storage, enqueue)
    handlers = [
        (evt.EVT_C_STORE, handle_store),
        (evt.EVT_C_ECHO, _echo),
        (evt.EVT_REJECTED, _rejected),
        (evt.EVT_RELEASED, forget),
        (evt.EVT_ABORTED, forget),
    ]
    log.info("DICOM receiver: AE %s listening on %s:%d", config.aet, config.host, config.port)
    return ae.start_server((config.host, config.port), block=block, evt_handlers=handlers)
