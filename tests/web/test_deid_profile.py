"""De-identification end to end (XRAY_DEIDENTIFY=1): a DICOM with EVERY attribute of PS3.15 Table E.1-1
filled with a marker, plus private attributes, an icon image, overlays, curves and markers nested in a
kept sequence, goes through the real web intake. No marker may survive in the stored file's bytes, in
any text of the database, in the answers or pages, or in any log record. The pixels stay as they were,
and an image that declares burned-in annotation is flagged to the user."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataset import Dataset
from sqlalchemy import MetaData, select

from shared.config import Settings
from shared.db import make_engine
from shared.deid import deidentify_dicom
from shared.deid_profile import table
from shared.models import Study
from tests.conftest import Account
from tests.dicom_factory import dicom_from_array
from tests.web.support import make_app, session_for

KEY = "profile-test-secret-key-0123456789abcdef"
PREFIX = "ZQXJ"  # every text marker starts with it: nothing else in a file or a database does
# Dates and times too: a malformed value must not reach a log through a library warning either.
TEXT_VRS = {"AE", "CS", "LO", "SH", "PN", "LT", "ST", "UT", "UC", "UR", "DA", "TM", "DT"}
# Markers for VRs that cannot hold letters: distinctive values that occur nowhere else.
NUMBER_MARKERS = {"AS": "087Y",
                  "DS": "7654.321", "IS": "7654321"}
UID_ROOT = "1.2.826.0.1.3680043.10.54321."
BINARY_VRS = {"OB", "OW", "UN", "OD", "OF", "OL", "OV"}
INT_VRS = {"US": 48813, "SS": -12345, "UL": 3141592653, "SL": -314159265, "FL": 1234.5, "FD": 98765.4321,
           "SV": -98765432101, "UV": 98765432101}


def _vr(tag: int) -> str:
    """The dictionary's VR (the first of "US or SS"), LO for attributes newer than pydicom's dictionary."""
    return dictionary_VR(tag).split(" or ")[0] if dictionary_has_tag(tag) else "LO"


def _marker(vr: str, index: int) -> object:
    if vr in TEXT_VRS:
        return f"{PREFIX}{index:04d}"
    if vr in NUMBER_MARKERS:
        return NUMBER_MARKERS[vr]
    if vr == "UI":
        return f"{UID_ROOT}{index}"
    if vr in BINARY_VRS:
        return f"{PREFIX}B{index:03d}".encode()
    if vr in INT_VRS:
        return INT_VRS[vr]
    raise AssertionError(f"no marker for VR {vr}")


def _item(index: int) -> Dataset:
    """A sequence item full of identifiers (and a private attribute of its own)."""
    item = Dataset()
    item.PatientName = f"{PREFIX}{index:04d}^Item"
    item.ReferencedSOPInstanceUID = f"{UID_ROOT}{index}.1"
    item.add_new(0x00291010, "LO", f"{PREFIX}P{index:03d}")
    return item


def marked_dataset() -> tuple[bytes, list[bytes]]:
    """The file, and every marker as bytes (text markers also by their common prefix)."""
    grey = np.random.default_rng(19).integers(0, 256, size=(96, 88), dtype=np.uint8)
    ds = pydicom.dcmread(io.BytesIO(dicom_from_array(grey, window="full")))
    markers: list[bytes] = []
    single, _masked = table()
    for index, tag in enumerate(sorted(single), start=1):
        if tag >> 16 in (0x0000, 0x0002):
            continue  # command set (never in a file) and file meta (below)
        vr = _vr(tag)
        if vr == "SQ":
            ds.add_new(tag, vr, [_item(index)])
            markers += [f"{PREFIX}{index:04d}".encode(), f"{UID_ROOT}{index}.1".encode()]
            continue
        value = _marker(vr, index)
        ds.add_new(tag, vr, value)
        if not isinstance(value, int | float):
            markers.append(value if isinstance(value, bytes) else str(value).encode())
    # Repeating groups of the table: overlay data and comments (60xx), curves (50xx).
    ds.add_new(0x60003000, "OW", b"ZQXJOVLY")
    ds.add_new(0x60024000, "LT", f"{PREFIX}OVLC")
    ds.add_new(0x50003000, "OB", b"ZQXJCURV")
    ds.add_new(0x50022500, "LO", f"{PREFIX}CURL")
    # An icon image (an embedded thumbnail; in the table too), with pixels of its own.
    icon = Dataset()
    icon.Rows, icon.Columns, icon.SamplesPerPixel, icon.BitsAllocated = 2, 4, 1, 8
    icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 7, 0
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.PixelData = b"ZQXJICON"
    ds.IconImageSequence.append(icon)  # after the marker item the loop above put there
    # Private attributes: a block with text, a private sequence, and a private tag in a kept sequence.
    block = ds.private_block(0x0009, f"{PREFIX}CREATOR", create=True)
    block.add_new(0x10, "LO", f"{PREFIX}PRIV")
    block.add_new(0x11, "SQ", [_item(9001)])
    view = Dataset()
    view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = "R-10214", "SRT", "postero-anterior"
    view.PatientName = f"{PREFIX}VIEW^Nested"
    view.ReferencedSOPInstanceUID = f"{UID_ROOT}7001"
    view.add_new(0x00291010, "LO", f"{PREFIX}VIEWPRIV")
    ds.ViewCodeSequence = [view]
    ds.ViewPosition, ds.BodyPartExamined, ds.Modality = "PA", "CHEST", "DX"
    ds.BurnedInAnnotation = "YES"
    markers += [b"ZQXJOVLY", b"ZQXJCURV", b"ZQXJICON", f"{UID_ROOT}7001".encode(), PREFIX.encode()]
    # File meta and preamble.
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.SourceApplicationEntityTitle = f"{PREFIX}AET"
    ds.preamble = b"ZQXJPREAMBLE".ljust(128, b"\0")
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), [m for m in markers if m]


def _database_text(settings: Settings) -> str:
    """Every value of every row of every table, as text."""
    engine = make_engine(settings.database_url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return "\n".join(repr(tuple(row)) for t in meta.sorted_tables for row in conn.execute(select(t)))
    finally:
        engine.dispose()


def test_every_attribute_of_the_profile_leaves_no_trace(
        settings: Settings, account_factory: Callable[..., Account], caplog: pytest.LogCaptureFixture) -> None:
    original, markers = marked_dataset()
    caplog.clear()  # building it logs pydicom's complaints about the malformed markers: the service may not
    caplog.set_level(logging.DEBUG)
    source = pydicom.dcmread(io.BytesIO(original))
    assert all(m in original for m in markers)  # the test can fail: each marker is in the upload
    assert len(table()[0]) > 600  # the whole table, not a handful of attributes
    deid = settings.with_overrides(secret_key=KEY, deidentify=True)
    app, _ = make_app(deid, auth=False)
    client = app.test_client()
    admin = account_factory("admin")
    response = client.post("/api/v1/batches", headers=admin.headers, content_type="multipart/form-data",
                           data={"files": [(io.BytesIO(original), f"{PREFIX}chest.dcm")]})
    assert response.status_code == 201, response.get_json()
    accepted = response.get_json()["accepted"][0]
    assert "burned" in accepted["warning"]
    study_id = accepted["id"]
    with session_for(settings) as session:
        study = session.get(Study, study_id)
        assert study is not None and study.burned_in_annotation is True
        stored = Path(deid.storage_dir, study.stored_path).read_bytes()
    detail = client.get(f"/api/v1/studies/{study_id}", headers=admin.headers)
    page = client.get(f"/studies/{study_id}", headers=admin.headers)
    assert detail.get_json()["burned_in_annotation"] is True and detail.get_json()["warnings"]
    assert "Burned-in text" in page.get_data(as_text=True)

    answer = response.get_json()
    assert answer["accepted"][0].pop("filename") == f"{PREFIX}chest.dcm"  # the sender's own name, echoed
    texts = {"stored file": stored, "database": _database_text(settings).encode(),
             "upload answer": json.dumps(answer).encode(), "study JSON": detail.get_data(),
             "study page": page.get_data(), "log": caplog.text.encode()}
    for record in caplog.records:
        texts["log"] += (record.getMessage() + repr(record.args) + (record.exc_text or "")).encode()
    survivors = {where: [m for m in markers if m in text] for where, text in texts.items()}
    assert survivors == {where: [] for where in texts}

    clean = pydicom.dcmread(io.BytesIO(stored))
    single, _ = table()
    for elem in clean.iterall():  # numbers cannot be searched for as text: no element keeps its marker
        if int(elem.tag) in single and elem.VR in INT_VRS:
            assert elem.value != INT_VRS[elem.VR], elem
    assert not any(elem.tag.is_private for elem in clean.iterall())
    assert "IconImageSequence" not in clean and 0x60003000 not in clean and 0x50003000 not in clean
    assert clean.PatientIdentityRemoved == "YES" and clean.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert clean.StudyInstanceUID.startswith("2.25.")
    assert clean.ViewCodeSequence[0].ReferencedSOPInstanceUID.startswith("2.25.")
    for keyword in ("Modality", "PhotometricInterpretation", "ViewPosition", "BodyPartExamined", "WindowCenter",
                    "WindowWidth", "BurnedInAnnotation", "Rows", "Columns"):
        assert clean[keyword].value == source[keyword].value, keyword
    assert clean.PixelData == source.PixelData


def test_the_same_study_stays_one_study_across_uploads(settings: Settings,
                                                       account_factory: Callable[..., Account]) -> None:
    """Two images of one study, sent separately: the same new StudyInstanceUID (keyed, stable);
    a DX that declares no burned-in annotation is not flagged."""
    deid = settings.with_overrides(secret_key=KEY, deidentify=True)
    app, _ = make_app(deid, auth=False)
    client = app.test_client()
    admin = account_factory("admin")
    grey = np.random.default_rng(5).integers(0, 256, size=(80, 80), dtype=np.uint8)
    study_uid = "1.2.826.0.1.3680043.10.54321.424242"
    ids = []
    for seed in (1, 2):
        ds = pydicom.dcmread(io.BytesIO(dicom_from_array(np.roll(grey, seed), window="full")))
        ds.StudyInstanceUID = study_uid
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        body = client.post("/api/v1/batches", headers=admin.headers, content_type="multipart/form-data",
                           data={"files": [(io.BytesIO(buffer.getvalue()), "x.dcm")]}).get_json()
        assert "warning" not in body["accepted"][0]
        ids.append(body["accepted"][0]["id"])
    with session_for(settings) as session:
        studies = [session.get(Study, i) for i in ids]
        uids = {s.study_instance_uid for s in studies if s is not None}
        assert len(uids) == 1 and uids.pop().startswith("2.25.")
        assert [s.burned_in_annotation for s in studies if s is not None] == [False, False]


def test_every_attribute_in_a_bare_implicit_vr_file_too() -> None:
    """The same markers in a bare implicit VR data set (no preamble, no file meta), where attributes newer
    than pydicom's dictionary read back with an unknown VR (UN)."""
    original, markers = marked_dataset()
    ds = pydicom.dcmread(io.BytesIO(original))
    bare = Dataset()
    bare.update(ds)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, bare, implicit_vr=True, little_endian=True, enforce_file_format=False)
    upload = buffer.getvalue()
    assert upload[128:132] != b"DICM" and all(m in upload for m in markers)
    clean = deidentify_dicom(upload, KEY)
    assert [m for m in markers if m in clean] == []
    assert pydicom.dcmread(io.BytesIO(clean)).PixelData == ds.PixelData
