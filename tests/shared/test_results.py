"""The result encoders on real done studies (a real NIH X-ray as PNG, as DICOM and as de-identified
DICOM, diagnosed by process_study with an untrained bundle): the Structured Report and the Secondary
Capture pass dciodvfy (Debian package dicom3tools) with no error and read back to the study's
findings; the FHIR DiagnosticReport validates with fhir.resources; everything is deterministic."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydicom.sr.codedict import codes
from pydicom.uid import SecondaryCaptureImageStorage

from shared.dicom_results import overlay_size, study_overlay, study_sr
from shared.fhir_report import FINDING_SYSTEM, observation_id, study_report
from shared.findings import FINDINGS
from shared.models import Batch, Study
from shared.report_text import AID_NOT_DIAGNOSIS
from shared.results import RESEARCH_NOTICE, UNKNOWN_PATIENT_NAME, DoneStudy, NotDone, derived_uid, dicom_bytes
from tests.shared.results_support import DoneStudies, dciodvfy_errors, make_done_studies

pytestmark = pytest.mark.slow
KINDS = ("png", "dicom", "deid")


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory, nih_full_images: list[Path]) -> DoneStudies:
    return make_done_studies(tmp_path_factory.mktemp("results"), nih_full_images[0])


@pytest.fixture(scope="module")
def rendered(studies: DoneStudies, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """kind -> {"sr": path, "overlay": path} of the files written for each study."""
    folder = tmp_path_factory.mktemp("rendered")
    files: dict[str, dict[str, Path]] = {}
    for kind in KINDS:
        done = studies.done(kind)
        files[kind] = {"sr": folder / f"{kind}-sr.dcm", "overlay": folder / f"{kind}-overlay.dcm"}
        files[kind]["sr"].write_bytes(study_sr(studies.storage, done))
        files[kind]["overlay"].write_bytes(study_overlay(studies.storage, done))
    return files


def stored_source(studies: DoneStudies, kind: str) -> pydicom.Dataset:
    done = studies.done(kind)
    return pydicom.dcmread(io.BytesIO(studies.storage.read(done.stored_path)))


def text_items(dataset: pydicom.Dataset, meaning: str) -> list[str]:
    """Every TEXT content item's value under the concept named `meaning`, anywhere in the tree."""
    found = []
    for item in dataset.ContentSequence:
        if item.get("ValueType") == "TEXT" and item.ConceptNameCodeSequence[0].CodeMeaning == meaning:
            found.append(str(item.TextValue))
        if "ContentSequence" in item:
            found.extend(text_items(item, meaning))
    return found


def sr_findings(path: Path) -> dict[str, dict[str, Any]]:
    """label -> probability, threshold, present, region (polyline or None), referenced instance."""
    report = hd.sr.srread(path).content
    groups = [*report.get_planar_roi_measurement_groups(), *report.get_image_measurement_groups()]
    result = {}
    for group in groups:
        values = {m.name: m.value for m in group.get_measurements()}
        label = group.finding_type.value
        (evaluation,) = [e for e in group.get_qualitative_evaluations() if e.name.value == label]
        roi = getattr(group, "roi", None)
        source = None if roi is None else roi.ContentSequence[0].ReferencedSOPSequence[0]
        result[label] = {
            "probability": values[codes.DCM.Probability],
            "threshold": values[codes.DCM.ThresholdValue],
            "present": evaluation.value == codes.SCT.Present,
            "region": None if roi is None else roi.value,
            "referenced": None if source is None else source.ReferencedSOPInstanceUID,
        }
    return result


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("what", ["sr", "overlay"])
def test_results_pass_dciodvfy(rendered: dict[str, dict[str, Path]], kind: str, what: str) -> None:
    errors, report = dciodvfy_errors(rendered[kind][what])
    assert errors == [], report
    assert ("ComprehensiveSR" if what == "sr" else "SCImage") in report


@pytest.mark.parametrize("kind", ["dicom", "deid"])
def test_sr_holds_the_14_findings_on_the_source_image(studies: DoneStudies, rendered: dict[str, dict[str, Path]],
                                                      kind: str) -> None:
    done = studies.done(kind)
    source = stored_source(studies, kind)
    path = rendered[kind]["sr"]
    found = sr_findings(path)
    assert sorted(found) == sorted(FINDINGS)
    for finding in done.findings:
        got = found[finding.label]
        assert got["probability"] == pytest.approx(finding.probability, abs=1e-6)
        assert got["threshold"] == pytest.approx(finding.threshold, abs=1e-6)
        assert got["present"] is finding.positive
        if finding.box is None:
            assert got["region"] is None
        else:
            box = finding.box
            x1, y1 = box.x + box.width, box.y + box.height
            assert got["region"].tolist() == [[box.x, box.y], [x1, box.y], [x1, y1], [box.x, y1], [box.x, box.y]]
            assert got["referenced"] == source.SOPInstanceUID
    assert any(f.positive for f in done.findings)  # the untrained bundle gives some: the check is not empty

    sr = pydicom.dcmread(path)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID not in (source.SeriesInstanceUID, done.uid("overlay-series"))
    for keyword in ("PatientID", "PatientName", "AccessionNumber", "StudyDate", "PatientBirthDate"):
        assert (sr.get(keyword) or "") == (source.get(keyword) or ""), keyword
    assert sr.SOPInstanceUID == done.uid("sr")
    assert sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED"
    assert text_items(sr, "Algorithm Version") == [done.model_version] * 14
    assert any(RESEARCH_NOTICE in text for text in text_items(sr, "Comment"))
    assert sr.SeriesDescription == RESEARCH_NOTICE


def test_deidentified_source_gives_deidentified_results(studies: DoneStudies,
                                                        rendered: dict[str, dict[str, Path]]) -> None:
    """Copying from the stored (de-identified) file is what keeps the results free of identifiers."""
    plain, deid = stored_source(studies, "dicom"), stored_source(studies, "deid")
    assert deid.PatientID != plain.PatientID and deid.StudyInstanceUID != plain.StudyInstanceUID
    for what in ("sr", "overlay"):
        result = pydicom.dcmread(rendered["deid"][what])
        assert result.PatientID == deid.PatientID and result.StudyInstanceUID == deid.StudyInstanceUID
        assert result.PatientIdentityRemoved == "YES"
        raw = rendered["deid"][what].read_bytes()
        assert plain.PatientID.encode() not in raw and str(plain.PatientName).encode() not in raw


def test_png_study_gets_an_unknown_patient_and_the_sr_points_at_the_overlay(
        studies: DoneStudies, rendered: dict[str, dict[str, Path]]) -> None:
    done = studies.done("png")
    sr = pydicom.dcmread(rendered["png"]["sr"])
    overlay = pydicom.dcmread(rendered["png"]["overlay"])
    assert sr.StudyInstanceUID == overlay.StudyInstanceUID == done.uid("study")
    assert sr.PatientID == overlay.PatientID and sr.PatientID.startswith("ANON-")
    assert str(sr.PatientName) == str(overlay.PatientName) == UNKNOWN_PATIENT_NAME
    width, height = overlay_size(done.width, done.height)
    assert (overlay.Columns, overlay.Rows) == (width, height)
    for finding in done.findings:
        got = sr_findings(rendered["png"]["sr"])[finding.label]
        if got["region"] is not None:
            assert got["referenced"] == overlay.SOPInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPClassUID == SecondaryCaptureImageStorage
    # Each PNG study is its own unknown patient.
    assert derived_uid(str(done.id + 1), done.sha256, done.model_version, "study") != done.uid("study")


@pytest.mark.parametrize("kind", KINDS)
def test_overlay_has_the_notice_the_boxes_and_the_source_study(studies: DoneStudies,
                                                               rendered: dict[str, dict[str, Path]],
                                                               kind: str) -> None:
    done = studies.done(kind)
    overlay = pydicom.dcmread(rendered[kind]["overlay"])
    assert overlay.SOPClassUID == SecondaryCaptureImageStorage and overlay.Modality == "OT"
    assert overlay.BurnedInAnnotation == "YES" and overlay.PhotometricInterpretation == "RGB"
    assert overlay.SOPInstanceUID == done.uid("overlay") and overlay.SeriesInstanceUID == done.uid("overlay-series")
    assert RESEARCH_NOTICE in overlay.ImageComments
    pixels = overlay.pixel_array
    assert pixels.shape == (overlay.Rows, overlay.Columns, 3) and pixels.dtype == np.uint8
    # The notice's banner: black with yellow letters across the top rows.
    banner = pixels[2:12, : overlay.Columns // 2]
    yellow = (banner[..., 0] > 200) & (banner[..., 1] > 200) & (banner[..., 2] < 80)
    assert yellow.sum() > 20 and (banner.sum(axis=2) == 0).mean() > 0.5
    # Each positive finding's box: green along its bottom edge (scaled to the picture).
    scale_y = overlay.Rows / done.height
    scale_x = overlay.Columns / done.width
    for finding in done.positives:
        assert finding.box is not None
        row = min(overlay.Rows - 1, round((finding.box.y + finding.box.height) * scale_y) - 1)
        left = round(finding.box.x * scale_x)
        right = max(left + 1, round((finding.box.x + finding.box.width) * scale_x) - 1)
        edge = pixels[row, left:right]
        assert (edge == (0, 255, 0)).all(axis=1).mean() > 0.9, finding.label
    if kind != "png":
        source = stored_source(studies, kind)
        assert overlay.StudyInstanceUID == source.StudyInstanceUID
        assert overlay.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


@pytest.mark.parametrize("kind", KINDS)
def test_rendering_is_deterministic(studies: DoneStudies, rendered: dict[str, dict[str, Path]], kind: str) -> None:
    """A resend carries the same UIDs and bytes, so a PACS never holds duplicates."""
    done = studies.done(kind)
    assert study_sr(studies.storage, done) == rendered[kind]["sr"].read_bytes()
    assert study_overlay(studies.storage, done) == rendered[kind]["overlay"].read_bytes()
    uids = {done.uid(kind) for kind in ("sr", "overlay", "sr-series", "overlay-series", "study")}
    assert len(uids) == 5
    for uid in uids:
        assert len(uid) <= 64 and uid.startswith("2.25.") and uid[5:].isdigit() and uid[5] != "0"


@pytest.mark.parametrize("kind", KINDS)
def test_fhir_report_validates_and_matches_the_findings(studies: DoneStudies, kind: str) -> None:
    done = studies.done(kind)
    body = study_report(studies.storage, done)
    report = DiagnosticReport.model_validate(body)
    assert report.status == "preliminary" and RESEARCH_NOTICE in (report.conclusion or "")
    assert (report.conclusion or "").endswith(AID_NOT_DIAGNOSIS)  # the plain-language summary closes it
    header_uid = (stored_source(studies, kind).StudyInstanceUID if kind != "png" else done.uid("study"))
    assert body["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{header_uid}"
    assert body["identifier"][0]["value"] == f"urn:oid:{done.uid('sr')}"
    contained = {resource["id"]: resource for resource in body["contained"]}
    assert contained["model"]["version"] == [{"value": done.model_version}]
    assert [r["reference"] for r in body["result"]] == [f"#{observation_id(label)}" for label in FINDINGS]
    for finding in done.findings:
        observation = contained[observation_id(finding.label)]
        assert observation["code"]["coding"][0] == {"system": FINDING_SYSTEM, "code": finding.label,
                                                    "display": finding.label.replace("_", " ")}
        assert observation["valueQuantity"]["value"] == pytest.approx(finding.probability, abs=1e-6)
        assert observation["referenceRange"][0]["high"]["value"] == pytest.approx(finding.threshold, abs=1e-6)
        assert observation["interpretation"][0]["coding"][0]["code"] == ("POS" if finding.positive else "NEG")
        assert observation["device"] == {"reference": "#model"}
    assert study_report(studies.storage, done) == body


def test_only_done_studies_have_results(studies: DoneStudies) -> None:
    with studies.factory() as session:
        study = Study(batch=Batch(label="q"), original_filename="q.png", sha256="0" * 64,
                      stored_path="originals/00/q.png", format="png", size_bytes=1)
        session.add(study)
        session.flush()
        with pytest.raises(NotDone, match="is queued"):
            DoneStudy.from_row(study)
        session.rollback()


def test_dicom_bytes_are_part10_files(rendered: dict[str, dict[str, Path]]) -> None:
    raw = rendered["dicom"]["sr"].read_bytes()
    assert raw[128:132] == b"DICM"
    assert pydicom.dcmread(io.BytesIO(raw)).file_meta.MediaStorageSOPInstanceUID == pydicom.dcmread(
        io.BytesIO(raw)).SOPInstanceUID


def test_a_large_png_gets_a_smaller_overlay_and_the_sr_scales_its_boxes_to_it(tmp_path: Path) -> None:
    """Over 2048 px on its long side the Secondary Capture is shrunk; a PNG study's SR, which points at
    it, has its boxes scaled to the same size."""
    from datetime import UTC, datetime

    from shared.dicom_results import overlay_picture, region_target, structured_report
    from shared.gradcam import Box
    from shared.results import FindingResult, unknown_patient

    moment = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    findings = tuple(FindingResult(label, 0.9 if label == "Mass" else 0.1, 0.5, label == "Mass",
                                   Box(1000, 600, 800, 1200) if label == "Mass" else None) for label in FINDINGS)
    done = DoneStudy(id=7, sha256="ab" * 32, format="png", stored_path="x.png", width=3000, height=2400,
                     model_version="0123456789abcdef", model_trained=False, model_runtime="tensorflow-f32",
                     created_at=moment, finished_at=moment, cam_sheet_path=None, findings=findings)
    assert overlay_size(3000, 2400) == (2048, 1638)
    header = unknown_patient(done)
    target = region_target(done, header)
    assert (target.scale_x, target.scale_y) == pytest.approx((2048 / 3000, 1638 / 2400))
    pixels = np.random.default_rng(0).random((2400, 3000), dtype=np.float32)
    picture = overlay_picture(done, pixels, {label: np.ones((7, 7), np.float32) for label in FINDINGS})
    assert picture.shape == (1638, 2048, 3)
    bottom = round((600 + 1200) * 1638 / 2400) - 1
    assert (picture[bottom, 700:1200] == (0, 255, 0)).all()  # the box's bottom edge, scaled
    path = tmp_path / "sr.dcm"
    path.write_bytes(dicom_bytes(structured_report(done, header)))
    region = sr_findings(path)["Mass"]["region"]
    assert region[2].tolist() == pytest.approx([1800 * 2048 / 3000, 1800 * 1638 / 2400])
    assert sr_findings(path)["Hernia"]["region"] is None  # no box: an image-level group
    errors, report = dciodvfy_errors(path)
    assert errors == [], report
