"""A done study as the result encoders see it (shared/dicom_results.py, shared/fhir.py), and the files
they read from storage: the source's DICOM header, the decoded picture, the CAM sheet.

Identity of the results (see docs/INTERFACES.md):
- Every UID the results carry is derived, never random: `2.25.<UUID>` from a SHA-256 of the study's
  id, its original's sha256 and the model version, plus the kind of object ("sr", "overlay", ...).
  Rendering a study twice gives the same UIDs (and the same bytes), so a resend to a PACS replaces
  the earlier copy instead of adding a duplicate.
- A DICOM original gives its patient and study attributes (de-identified ones when XRAY_DEIDENTIFY=1,
  since the stored file is then de-identified) and its StudyInstanceUID.
- A PNG or JPEG original has none: its results go to an "unknown patient" made for that study alone
  (PatientName `Unknown^Patient`, PatientID `ANON-` and 16 hex digits of the study UID's hash), in a new
  study whose StudyInstanceUID is derived like the rest, dated by the upload time (UTC).
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from shared.config import ImageLimits
from shared.findings import FINDINGS
from shared.gradcam import Box, cam_from_png
from shared.images import read_image
from shared.models import Finding, Study, StudyStatus
from shared.storage import Storage

RESEARCH_NOTICE = "AI research demo, not for diagnosis"
MANUFACTURER = "Diagnose My X-Ray"
ALGORITHM_NAME = "ResNet50 ChestX-ray14 CAM"
UNKNOWN_PATIENT_NAME = "Unknown^Patient"
UID_NAMESPACE = "diagnose-my-xray-results-v1"

# The patient and study attributes of type 2 (present, maybe empty) that the encoders copy.
TYPE2_ATTRIBUTES = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)
INSTANCE_ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")


class NotDone(ValueError):
    """The study has no results (yet): the message says which state it is in."""


@dataclass(frozen=True)
class FindingResult:
    label: str
    probability: float
    threshold: float
    positive: bool
    box: Box | None  # in the original's pixels


@dataclass(frozen=True)
class DoneStudy:
    """The columns of a done study that its results depend on (a plain value, no database session)."""

    id: int
    sha256: str
    format: str  # png | jpeg | dicom
    stored_path: str
    width: int
    height: int
    model_version: str
    model_trained: bool
    model_runtime: str | None
    created_at: datetime
    finished_at: datetime
    cam_sheet_path: str | None
    findings: tuple[FindingResult, ...]
    study_instance_uid: str | None = None  # the DICOM source's (None for PNG/JPEG)
    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    modality: str | None = None
    view_position: str | None = None
    not_frontal_reason: str | None = None  # shared.frontal: why the image is not a frontal chest X-ray

    @classmethod
    def from_row(cls, study: Study) -> DoneStudy:
        """The study with its findings loaded; NotDone unless it is done with all 14 findings."""
        if study.status != StudyStatus.DONE.value:
            raise NotDone(f"Study {study.id} is {study.status}: results exist only for done studies.")
        by_label = {f.label: f for f in study.findings}
        if set(by_label) != set(FINDINGS) or not study.model_version or not study.width or not study.height:
            raise NotDone(f"Study {study.id} is done but its findings are incomplete.")
        findings = tuple(_finding_result(by_label[label]) for label in FINDINGS)
        return cls(
            id=study.id, sha256=study.sha256, format=study.format, stored_path=study.stored_path,
            width=int(study.width), height=int(study.height), model_version=study.model_version,
            model_trained=bool(study.model_trained), model_runtime=study.model_runtime,
            created_at=_utc(study.created_at), finished_at=_utc(study.finished_at or study.updated_at),
            cam_sheet_path=next((f.heatmap_path for f in study.findings if f.heatmap_path), None),
            findings=findings, study_instance_uid=study.study_instance_uid, patient_id=study.patient_id,
            patient_name=study.patient_name, accession_number=study.accession_number, modality=study.modality,
            view_position=study.view_position, not_frontal_reason=study.not_frontal_reason,
        )

    def uid(self, kind: str) -> str:
        """The UID of one of this study's result objects (`kind`: "sr", "overlay", "sr-series", ...)."""
        return derived_uid(str(self.id), self.sha256, self.model_version, kind)

    @property
    def positives(self) -> tuple[FindingResult, ...]:
        return tuple(f for f in self.findings if f.positive)


def _finding_result(finding: Finding) -> FindingResult:
    box = None
    if finding.box_x is not None and finding.box_y is not None and finding.box_w and finding.box_h:
        box = Box(x=finding.box_x, y=finding.box_y, width=finding.box_w, height=finding.box_h)
    return FindingResult(label=finding.label, probability=float(finding.probability),
                         threshold=float(finding.threshold), positive=bool(finding.positive), box=box)


def derived_uid(*parts: str) -> str:
    """`2.25.` and a name-based UUID (version 8, RFC 9562) of the parts: the same parts, the same UID."""
    digest = bytearray(hashlib.sha256("\x1f".join((UID_NAMESPACE, *parts)).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80  # version 8
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC variant
    return f"2.25.{uuid.UUID(bytes=bytes(digest)).int}"


def _utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# -- the source's header ---------------------------------------------------------------------------


def source_header(storage: Storage, done: DoneStudy) -> Dataset:
    """The patient, study and instance attributes the results copy: the stored DICOM's header (pixel
    data not read), or the "unknown patient" of a PNG/JPEG study. Type 2 attributes are always present."""
    if done.format == "dicom":
        data = storage.read(done.stored_path)  # StoredFileMissing when it is gone
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=data[128:132] != b"DICM")
        if "StudyInstanceUID" not in header or not str(header.StudyInstanceUID).strip():
            header.StudyInstanceUID = done.uid("study")
        return with_type2_attributes(header)
    return unknown_patient(done)


def with_type2_attributes(header: Dataset) -> Dataset:
    """The header with every patient/study attribute of type 2 present (empty where it was missing)."""
    for keyword in TYPE2_ATTRIBUTES:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def unknown_patient(done: DoneStudy) -> Dataset:
    """The made-up patient and study of a PNG/JPEG original (no instance: nothing in a PACS shows it)."""
    header = Dataset()
    header.SpecificCharacterSet = "ISO_IR 192"
    header.StudyInstanceUID = done.uid("study")
    header.PatientName = UNKNOWN_PATIENT_NAME
    header.PatientID = "ANON-" + hashlib.sha256(header.StudyInstanceUID.encode()).hexdigest()[:16].upper()
    header.StudyDate = done.created_at.strftime("%Y%m%d")
    header.StudyTime = done.created_at.strftime("%H%M%S")
    return with_type2_attributes(header)


def is_referencable(header: Dataset) -> bool:
    """Whether the header names an image instance that results may point at (a DICOM source)."""
    return all(str(header.get(keyword, "") or "").strip() for keyword in INSTANCE_ATTRIBUTES)


# -- the picture and the maps ---------------------------------------------------------------------


def source_pixels(storage: Storage, done: DoneStudy, limits: ImageLimits | None = None) -> np.ndarray:
    """The original decoded as the model saw it: float32 (H, W) in [0, 1], 0 = black."""
    return read_image(storage.read(done.stored_path), limits or ImageLimits()).pixels


def study_cams(storage: Storage, done: DoneStudy) -> Mapping[str, np.ndarray]:
    """Every finding's low-resolution map, from the study's CAM sheet ({} when it has none)."""
    if not done.cam_sheet_path:
        return {}
    sheet = storage.read(done.cam_sheet_path)
    return {f.label: cam_from_png(sheet, f.label) for f in done.findings}


def dicom_bytes(dataset: Dataset) -> bytes:
    """A data set as a DICOM Part 10 file (preamble, file meta)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()
