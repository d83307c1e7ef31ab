"""De-identification (shared.deid): pseudonyms are keyed and consistent, UIDs deterministic and valid,
dates and other identifiers gone, pixels intact, and the result still a DICOM the service accepts."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from shared import deid_profile
from shared.config import ImageLimits
from shared.deid import DeidentifiedUpload, Pseudonymiser, burned_in_annotation, deidentify_dicom, deidentify_upload
from shared.images import inspect_image, read_image
from tests.dicom_factory import dicom_from_array, dicom_from_png

KEY = "k" * 32
IDENTIFIERS = {
    "PatientID": "MRN-778812", "PatientName": "Smithers^Waylon", "AccessionNumber": "ACC55231",
    "StudyDate": "20240105", "PatientBirthDate": "19610312", "InstitutionName": "St Elsewhere",
    "ReferringPhysicianName": "Hibbert^Julius", "OperatorsName": "Nahasapeemapetilon^Apu",
    "PatientAddress": "742 Evergreen Terrace", "StudyDescription": "CHEST PA for Waylon",
}


def _grey() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(96, 80), dtype=np.uint8)


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_pseudonyms_are_keyed_consistent_and_fit_their_vr() -> None:
    a, b = Pseudonymiser(KEY), Pseudonymiser("another key" * 3)
    assert a.patient_id("MRN-1") == a.patient_id(" MRN-1 ") == Pseudonymiser(KEY).patient_id("MRN-1")
    assert a.patient_id("MRN-1") != a.patient_id("MRN-2")
    assert a.patient_id("MRN-1") != b.patient_id("MRN-1")
    assert len(a.accession_number("X" * 16)) <= 16  # SH
    uid = a.uid("1.2.3.4.5")
    assert re.fullmatch(r"2\.25\.[1-9][0-9]*", uid) and len(uid) <= 64
    assert a.uid("1.2.3.4.5") == uid and a.uid("1.2.3.4.6") != uid
    assert a.uid("1.2.840.10008.5.1.4.1.1.1.1") == "1.2.840.10008.5.1.4.1.1.1.1"  # a SOP class stays
    with pytest.raises(ValueError, match="SECRET_KEY"):
        Pseudonymiser("")


def test_dicom_is_deidentified_and_pixels_are_untouched() -> None:
    grey = _grey()
    original = dicom_from_array(grey, metadata=IDENTIFIERS)
    src = _read(original)
    clean = deidentify_dicom(original, KEY)
    ds = _read(clean)
    pseudo = Pseudonymiser(KEY)
    assert ds.PatientID == pseudo.patient_id("MRN-778812")
    assert str(ds.PatientName) == pseudo.patient_name("Smithers^Waylon")
    assert ds.AccessionNumber == pseudo.accession_number("ACC55231")
    assert ds.StudyInstanceUID == pseudo.uid(src.StudyInstanceUID) != src.StudyInstanceUID
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == pseudo.uid(src.SOPInstanceUID)
    assert ds.SOPClassUID == src.SOPClassUID
    assert ds.StudyDate == "" and ds.PatientBirthDate == ""
    for keyword in ("InstitutionName", "OperatorsName", "PatientAddress", "StudyDescription"):
        assert keyword not in ds
    assert ds.get("ReferringPhysicianName", "") == ""
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    for value in IDENTIFIERS.values():
        assert value.encode() not in clean
    assert src.StudyInstanceUID.encode() not in clean
    assert ds.PixelData == src.PixelData
    limits = ImageLimits()
    assert np.array_equal(read_image(clean, limits).pixels, read_image(original, limits).pixels)
    assert deidentify_dicom(original, KEY) == clean  # deterministic: a re-upload is the same file


def test_private_tags_sequences_and_bare_datasets(data_dir: Path) -> None:
    png = sorted((data_dir / "nih-full" / "images").glob("*.png"))
    if not png:
        pytest.skip("no NIH images")
    original = dicom_from_png(png[0], metadata={"PatientID": "SEQ-PATIENT-9"}, preamble=False)
    ds = pydicom.dcmread(io.BytesIO(original), force=True)
    ds.add_new(0x00091010, "LO", "private Smithers")
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.99.1"
    item.PatientName = "Nested^Name"
    item.add_new(0x00291010, "LO", "nested private Smithers")
    ds.ViewCodeSequence = [item]  # a sequence the profile keeps: its items are cleaned all the same
    ds.SourceImageSequence = [Dataset()]  # X/Z/U* in the table: removed
    ds.SourceImageSequence[0].ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.99.2"
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    clean = deidentify_dicom(buffer.getvalue(), KEY)
    assert clean[128:132] == b"DICM"  # a complete file now
    out = _read(clean)
    assert 0x00091010 not in out
    assert "SourceImageSequence" not in out
    nested = out.ViewCodeSequence[0]
    assert 0x00291010 not in nested
    assert str(nested.PatientName) == Pseudonymiser(KEY).patient_name("Nested^Name")
    assert nested.ReferencedSOPInstanceUID == Pseudonymiser(KEY).uid("1.2.826.0.1.3680043.99.1")
    for needle in (b"Smithers", b"Nested^Name", b"SEQ-PATIENT-9", b"3680043.99"):
        assert needle not in clean


def test_deidentify_upload_rereads_metadata_and_leaves_png_alone() -> None:
    limits = ImageLimits()
    original = dicom_from_array(_grey(), metadata=IDENTIFIERS)
    info = inspect_image(original, limits)
    assert info.metadata is not None and info.metadata.patient_id == "MRN-778812"
    clean = deidentify_upload(original, info, KEY, limits)
    clean_info = clean.info
    assert clean.burned_in is False  # a DX that does not say otherwise
    assert clean_info.metadata is not None
    assert clean_info.metadata.patient_id == Pseudonymiser(KEY).patient_id("MRN-778812")
    assert clean_info.metadata.study_date is None
    assert (clean_info.width, clean_info.height) == (info.width, info.height)
    buffer = io.BytesIO()
    Image.fromarray(_grey(), mode="L").save(buffer, format="PNG")
    png = buffer.getvalue()
    png_info = inspect_image(png, limits)
    assert deidentify_upload(png, png_info, KEY, limits) == DeidentifiedUpload(png, png_info, None)


# What an attack on the running service found left in a stored file: each gone now.
FOUND_LEFT = {
    "MedicalAlerts": "HIV positive John Doe", "Allergies": "Penicillin John Doe", "PatientState": "Doe state",
    "SpecialNeeds": "Doe needs", "PlacerOrderNumberImagingServiceRequest": "PLACER-DOE",
    "FillerOrderNumberImagingServiceRequest": "FILLER-DOE", "DischargeDiagnosisDescription": "Doe discharge",
    "IssuerOfAdmissionID": "Doe issuer", "ServiceEpisodeDescription": "Doe episode", "StationName": "DOESTATION",
    "GantryID": "DOEGANTRY", "CassetteID": "DOECASSETTE", "GeneratorID": "DOEGENERATOR",
    "DeviceUID": "1.2.826.0.1.3680043.10.777.1",
}


def test_what_was_found_left_in_a_stored_file_is_gone() -> None:
    original = dicom_from_array(_grey(), metadata=FOUND_LEFT)
    ds = _read(original)
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated, icon.PixelData = 1, 4, 8, b"DoeI"
    ds.IconImageSequence = [icon]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert b"John Doe" in buffer.getvalue() and b"DoeI" in buffer.getvalue()
    clean = deidentify_dicom(buffer.getvalue(), KEY)
    for needle in (b"Doe", b"DOE", b"3680043.10.777"):
        assert needle not in clean
    out = _read(clean)
    assert "IconImageSequence" not in out and "MedicalAlerts" not in out
    assert out.DeviceUID == Pseudonymiser(KEY).uid(FOUND_LEFT["DeviceUID"])  # U: replaced, consistently


def test_the_profile_table_is_the_whole_standard_table() -> None:
    single, masked = deid_profile.table()
    assert len(single) > 600 and len(masked) == 3  # curves, overlay data, overlay comments
    tag = pydicom.datadict.tag_for_keyword
    assert deid_profile.action_for(tag("PatientName")) == "Z"
    assert deid_profile.action_for(tag("StudyInstanceUID")) == "U"
    assert deid_profile.action_for(tag("StationName")) == "X/Z/D"
    assert deid_profile.action_for(tag("SourceImageSequence")) == "X/Z/U*"
    assert deid_profile.action_for(0x60023000) == "X"  # overlay data of any 60xx group
    for kept in ("Modality", "PhotometricInterpretation", "ViewPosition", "BodyPartExamined", "WindowCenter",
                 "RescaleSlope", "BurnedInAnnotation", "PixelData", "Rows", "SOPClassUID"):
        assert deid_profile.action_for(tag(kept)) is None, kept


@pytest.mark.parametrize(("fields", "flagged"), [
    ({"BurnedInAnnotation": "YES", "Modality": "DX"}, True),
    ({"BurnedInAnnotation": "NO", "Modality": "US"}, False),
    ({"Modality": "DX"}, False),
    ({"Modality": "US"}, True),
    ({"Modality": "OT", "BurnedInAnnotation": "YES "}, True),
    ({"Modality": "CR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.2"}, True),  # secondary capture
])
def test_burned_in_annotation_is_flagged(fields: dict[str, str], flagged: bool) -> None:
    ds = Dataset()
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    assert burned_in_annotation(ds) is flagged
