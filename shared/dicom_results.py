"""A done study's results as DICOM, made with highdicom: a Structured Report and a Secondary Capture.

- The Structured Report is a Comprehensive SR holding a TID 1500 Measurement Report. Each of the 14
  findings is one measurement group: the finding (a code of the local scheme `99XRAY`, the NIH
  ChestX-ray14 label: these text-mined labels are not SNOMED concepts), its probability (DCM 122157),
  its operating threshold (DCM 122411), present or absent (SNOMED 52101004 / 272519000), the algorithm
  (name, model version, runtime) and, when the finding has a box, the box as a closed POLYLINE SCOORD
  on the source image. The report says it is a research aid (a TEXT comment, the series description)
  and is flagged preliminary and unverified.
- The Secondary Capture is the X-ray (as the model saw it) with the heatmap and boxes of the positive
  findings and the words RESEARCH_NOTICE burned in: RGB, BurnedInAnnotation YES, at most
  OVERLAY_MAX_SIDE pixels on its long side.

Both belong to the source's study and copy its patient and study attributes; each is in its own
series. When the source is not a DICOM image (PNG, JPEG), the SR's coordinates point at the
Secondary Capture instead (scaled to its size), the one image of that study a PACS holds.
Rendering is deterministic: UIDs and dates come from the study (shared/results.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from shared.config import ImageLimits
from shared.findings import DISPLAY_NAMES
from shared.gradcam import Box, overlay_rgb
from shared.results import (
    ALGORITHM_NAME,
    MANUFACTURER,
    RESEARCH_NOTICE,
    DoneStudy,
    FindingResult,
    derived_uid,
    dicom_bytes,
    is_referencable,
    source_header,
    source_pixels,
    study_cams,
)
from shared.storage import Storage

LOCAL_SCHEME = "99XRAY"
LOCAL_SCHEME_NAME = "Diagnose My X-Ray findings (NIH ChestX-ray14 labels)"
SR_SERIES_NUMBER = 9901
OVERLAY_SERIES_NUMBER = 9902
OVERLAY_MAX_SIDE = 2048
NOTICE_TEXT = (f"{RESEARCH_NOTICE}. Findings of an automated model ({ALGORITHM_NAME}); a research aid that "
               "does not replace a radiologist's reading.")
BOX_COLOUR = (0, 255, 0)
NOTICE_COLOUR = (255, 255, 0)


def finding_code(label: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=label, scheme_designator=LOCAL_SCHEME, meaning=DISPLAY_NAMES.get(label, label))


@dataclass(frozen=True)
class RegionTarget:
    """The image the SR's coordinates are on, and how the original's pixels map onto it."""

    evidence: Dataset  # the instance named in the SR's evidence (its patient/study attributes are copied)
    sop_class_uid: str
    sop_instance_uid: str
    frames: tuple[int, ...] | None
    scale_x: float
    scale_y: float


def overlay_size(width: int, height: int) -> tuple[int, int]:
    """The Secondary Capture's size: the original's, shrunk to OVERLAY_MAX_SIDE on its long side."""
    scale = min(1.0, OVERLAY_MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def region_target(done: DoneStudy, source: Dataset) -> RegionTarget:
    if is_referencable(source):
        frames = (1,) if int(source.get("NumberOfFrames", 1) or 1) > 1 else None
        return RegionTarget(source, str(source.SOPClassUID), str(source.SOPInstanceUID), frames, 1.0, 1.0)
    width, height = overlay_size(done.width, done.height)
    evidence = Dataset()
    evidence.update(source)
    evidence.SeriesInstanceUID = done.uid("overlay-series")
    evidence.SOPClassUID = SecondaryCaptureImageStorage
    evidence.SOPInstanceUID = done.uid("overlay")
    return RegionTarget(evidence, SecondaryCaptureImageStorage, evidence.SOPInstanceUID, None,
                        width / done.width, height / done.height)


def box_outline(box: Box, scale_x: float = 1.0, scale_y: float = 1.0) -> np.ndarray:
    """A box as a closed polyline of (column, row) image coordinates: the outer edges of its pixels."""
    x0, y0 = box.x * scale_x, box.y * scale_y
    x1, y1 = (box.x + box.width) * scale_x, (box.y + box.height) * scale_y
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def _algorithm(done: DoneStudy) -> hd.sr.AlgorithmIdentification:
    parameters = [f"runtime {done.model_runtime or 'unknown'}",
                  "trained weights" if done.model_trained else "untrained demo weights"]
    return hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=done.model_version, parameters=parameters,
                                         family=codes.DCM.ArtificialIntelligence, manufacturer=MANUFACTURER)


FindingGroup = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations


def _finding_group(done: DoneStudy, finding: FindingResult, target: RegionTarget,
                   algorithm: hd.sr.AlgorithmIdentification) -> FindingGroup:
    """One finding's TID 1501 group (image level, when it has no box) or TID 1410 group (its box)."""
    unit = codes.UCUM.NoUnits
    measurements = [
        hd.sr.Measurement(name=codes.DCM.Probability, value=finding.probability, unit=unit),
        hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=finding.threshold, unit=unit),
    ]
    evaluation = hd.sr.QualitativeEvaluation(
        name=finding_code(finding.label), value=codes.SCT.Present if finding.positive else codes.SCT.Absent)
    common = {
        "tracking_identifier": hd.sr.TrackingIdentifier(uid=done.uid(f"tracking-{finding.label}"),
                                                        identifier=finding.label),
        "finding_type": finding_code(finding.label),
        "algorithm_id": algorithm,
        "measurements": measurements,
        "qualitative_evaluations": [evaluation],
    }
    frames = list(target.frames) if target.frames else None
    if finding.box is None:
        image = hd.sr.SourceImageForMeasurementGroup(target.sop_class_uid, target.sop_instance_uid, frames)
        return hd.sr.MeasurementsAndQualitativeEvaluations(**common, source_images=[image])
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=box_outline(finding.box, target.scale_x, target.scale_y),
        source_image=hd.sr.SourceImageForRegion(target.sop_class_uid, target.sop_instance_uid, frames),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(**common, referenced_region=region)


def _dicom_moment(moment: datetime) -> tuple[str, str]:
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")


def _pin_times(dataset: Dataset, done: DoneStudy) -> None:
    """Date the instance by the study's finish, not by the clock, so a second rendering is identical."""
    date, time = _dicom_moment(done.finished_at)
    dataset.InstanceCreationDate, dataset.InstanceCreationTime = date, time
    for item in dataset.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = date + time


def structured_report(done: DoneStudy, source: Dataset) -> hd.sr.ComprehensiveSR:
    """The study's findings as a Comprehensive SR (TID 1500) in the source's study (module docstring)."""
    target = region_target(done, source)
    algorithm = _algorithm(done)
    device = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", done.model_version), name=ALGORITHM_NAME, manufacturer_name=MANUFACTURER,
            model_name=f"{ALGORITHM_NAME} {done.model_version}"),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[_finding_group(done, f, target, algorithm) for f in done.findings],
    )
    report[0].ContentSequence.append(hd.sr.TextContentItem(
        name=codes.DCM.Comment, value=NOTICE_TEXT, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    date, time = _dicom_moment(done.finished_at)
    sr = hd.sr.ComprehensiveSR(
        evidence=[target.evidence], content=report,
        series_instance_uid=done.uid("sr-series"), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=done.uid("sr"), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description=RESEARCH_NOTICE, content_date=date, content_time=time,
        series_date=date, series_time=time,
        manufacturer_model_name=ALGORITHM_NAME, software_versions=done.model_version,
        coding_schemes=[CodingSchemeIdentificationItem(designator=LOCAL_SCHEME, name=LOCAL_SCHEME_NAME)],
    )
    _pin_times(sr, done)
    return sr


# -- the Secondary Capture -------------------------------------------------------------------------


def overlay_picture(done: DoneStudy, pixels: np.ndarray, cams: Mapping[str, np.ndarray]) -> np.ndarray:
    """(H, W, 3) uint8: the X-ray, the strongest heatmap of the positive findings at each pixel, each
    positive finding's box with its name and probability, and the research notice in a banner."""
    width, height = overlay_size(done.width, done.height)
    grey = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
    if grey.shape != (height, width):
        picture = Image.fromarray(grey, mode="F").resize((width, height), Image.Resampling.LANCZOS)
        grey = np.clip(np.asarray(picture, dtype=np.float32), 0.0, 1.0)
    # The positive findings' low-resolution maps, combined cell by cell before overlay_rgb upsamples them.
    maps = [cams[f.label] for f in done.positives if f.label in cams]
    heat = np.max(maps, axis=0) if maps else np.zeros((1, 1), dtype=np.float32)
    image = overlay_rgb(grey, heat)
    draw = ImageDraw.Draw(image)
    text_size = max(12, round(max(width, height) / 48))
    font = ImageFont.load_default(size=text_size)
    line = max(2, round(max(width, height) / 256))
    scale_x, scale_y = width / done.width, height / done.height
    banner = text_size + 2 * line + 4  # the notice's strip along the top; captions go below it
    for finding in done.positives:
        if finding.box is None:
            continue
        x0, y0 = finding.box.x * scale_x, finding.box.y * scale_y
        x1 = (finding.box.x + finding.box.width) * scale_x - 1
        y1 = (finding.box.y + finding.box.height) * scale_y - 1
        draw.rectangle([x0, y0, x1, y1], outline=BOX_COLOUR, width=line)
        caption = f"{DISPLAY_NAMES.get(finding.label, finding.label)} {finding.probability:.2f}"
        draw.text((x0 + line + 2, max(y0 + line + 2, banner + 2)), caption, fill=BOX_COLOUR, font=font,
                  stroke_width=1, stroke_fill=(0, 0, 0))
    draw.rectangle([0, 0, width - 1, banner], fill=(0, 0, 0))
    draw.text((line + 2, line + 2), RESEARCH_NOTICE, fill=NOTICE_COLOUR, font=font)
    return np.asarray(image, dtype=np.uint8)


def secondary_capture(done: DoneStudy, source: Dataset, pixels: np.ndarray,
                      cams: Mapping[str, np.ndarray]) -> hd.sc.SCImage:
    """The overlay picture as an RGB Secondary Capture in the source's study (module docstring)."""
    date, time = _dicom_moment(done.finished_at)
    sc = hd.sc.SCImage(
        pixel_array=overlay_picture(done, pixels, cams), photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=("L", "F"),  # replaced below: not known here
        study_instance_uid=str(source.StudyInstanceUID),
        series_instance_uid=done.uid("overlay-series"), series_number=OVERLAY_SERIES_NUMBER,
        sop_instance_uid=done.uid("overlay"), instance_number=1, manufacturer=MANUFACTURER,
        patient_id=str(source.PatientID), patient_name=source.PatientName,
        patient_birth_date=str(source.PatientBirthDate), patient_sex=str(source.PatientSex) or None,
        accession_number=str(source.AccessionNumber), study_id=str(source.StudyID),
        study_date=str(source.StudyDate) or None, study_time=str(source.StudyTime) or None,
        referring_physician_name=source.ReferringPhysicianName,
        series_description=RESEARCH_NOTICE, content_date=date, content_time=time,
        manufacturer_model_name=ALGORITHM_NAME, software_versions=done.model_version,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    if is_referencable(source):
        sc.copy_patient_and_study_information(source)  # all of the Patient and Study modules
    sc.PatientOrientation = source.get("PatientOrientation", "")
    # A chest: unpaired, so Laterality (type 2C) stays absent unless the source says otherwise.
    sc.BodyPartExamined = source.get("BodyPartExamined") or "CHEST"
    if source.get("Laterality"):
        sc.Laterality = source.Laterality
    sc.DateOfSecondaryCapture, sc.TimeOfSecondaryCapture = date, time
    _pin_times(sc, done)
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = NOTICE_TEXT
    sc.DerivationDescription = "Heatmap and boxes of the findings above threshold burned in"
    if is_referencable(source):
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        sc.SourceImageSequence = [reference]
    return sc


def study_sr(storage: Storage, done: DoneStudy) -> bytes:
    """The study's Structured Report as a DICOM file, from its stored source."""
    return dicom_bytes(structured_report(done, source_header(storage, done)))


def study_overlay(storage: Storage, done: DoneStudy, limits: ImageLimits | None = None) -> bytes:
    """The study's Secondary Capture as a DICOM file, from its stored source and CAM sheet."""
    return dicom_bytes(secondary_capture(done, source_header(storage, done), source_pixels(storage, done, limits),
                                         study_cams(storage, done)))
