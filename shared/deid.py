"""De-identification of DICOM on intake (XRAY_DEIDENTIFY=1): the whole of PS3.15 Annex E's Basic
Application Level Confidentiality Profile (Table E.1-1, `shared.deid_profile`), applied at every depth
of nesting, so the stored original is de-identified too. Patient ID, name and accession number become
keyed pseudonyms (HMAC-SHA256 under a key derived from SECRET_KEY: a patient's studies still group,
nobody without the key can reverse one); instance UIDs become `2.25.<integer>` from the same HMAC;
private attributes, icons, overlays and curves are removed; attributes the table does not list are
removed or emptied by their kind. Images that may carry burned-in text are flagged
(`Deidentified.burned_in`). The full list is in docs/SECURITY.md.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import warnings
from dataclasses import dataclass
from typing import Any

from shared import deid_profile
from shared.config import ImageLimits
from shared.images import DICOM_PREFIX, DICOM_PREFIX_OFFSET, ImageInfo, inspect_image

KEY_LABEL = b"xray-deidentify-v1"
STANDARD_UID_ROOT = "1.2.840.10008."
METHOD = "PS3.15 E.1-1 Basic Profile (2026c); keyed pseudonyms and UIDs"  # LO: <= 64
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")

PSEUDONYMISED = ("PatientID", "PatientName", "AccessionNumber")
FREE_TEXT_VRS = {"LT", "ST", "UT"}
DATE_VRS = {"DA", "DT", "TM"}
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
# A dummy value per VR for the table's D action (never anything derived from the original).
DUMMIES: dict[str, Any] = {
    "AE": "REMOVED", "CS": "REMOVED", "LO": "REMOVED", "SH": "REMOVED", "PN": "REMOVED", "UC": "REMOVED",
    "LT": "REMOVED", "ST": "REMOVED", "UT": "REMOVED", "UR": "", "DA": "19000101", "TM": "000000",
    "DT": "19000101000000", "AS": "000Y", "DS": "0", "IS": "0",
}
# Modalities whose images often show text in the pixels (ultrasound, secondary capture, photographs,
# scanned documents, ...) and SOP classes of secondary capture: flagged unless BurnedInAnnotation is NO.
LIKELY_BURNED_IN = {"US", "SC", "OT", "XC", "ES", "GM", "SM", "DOC", "IVUS", "OP"}
SECONDARY_CAPTURE_ROOT = "1.2.840.10008.5.1.4.1.1.7"
BURNED_IN_WARNING = (
    "This image may show identifying text burned into its pixels (it declares burned-in annotation, "
    "or is a kind of image that often has it). De-identification removes the identifiers in the file's "
    "header, not text in the image: check the image before sharing it."
)


class Pseudonymiser:
    """Keyed, deterministic replacements for identifiers (same input, same output, under one key)."""

    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ValueError("de-identification needs SECRET_KEY: pseudonyms are keyed by it and must stay stable")
        self._key = hmac.new(secret_key.encode(), KEY_LABEL, hashlib.sha256).digest()

    def _digest(self, kind: str, value: str) -> str:
        return hmac.new(self._key, f"{kind}\x00{value.strip()}".encode(), hashlib.sha256).hexdigest()

    def patient_id(self, value: str) -> str:
        return "ANON-" + self._digest("PatientID", value)[:16].upper()

    def patient_name(self, value: str) -> str:
        return "ANON^" + self._digest("PatientName", value)[:12].upper()

    def accession_number(self, value: str) -> str:
        return "A" + self._digest("AccessionNumber", value)[:15].upper()  # SH: 16 characters at most

    def uid(self, value: str) -> str:
        value = value.strip().rstrip("\0")
        if value.startswith(STANDARD_UID_ROOT):
            return value
        return "2.25." + str(int(self._digest("UID", value)[:32], 16))


def _is_instance_uid(keyword: str) -> bool:
    return keyword.endswith(("InstanceUID", "FrameOfReferenceUID", "SeriesUID", "StudyUID")) or keyword in {
        "IrradiationEventUID", "ConcatenationUID", "DimensionOrganizationUID", "SynchronizationFrameOfReferenceUID",
        "StorageMediaFileSetUID", "TransactionUID", "FiducialUID", "TargetUID", "DoseReferenceUID",
    }


def _replace_uid(value: Any, pseudo: Pseudonymiser) -> Any:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [pseudo.uid(str(v)) for v in value]
    return pseudo.uid(str(value)) if value else value


def _pseudonymise(keyword: str, value: Any, pseudo: Pseudonymiser) -> str:
    text = str(value).strip()
    if not text:
        return ""
    return {"PatientID": pseudo.patient_id, "PatientName": pseudo.patient_name,
            "AccessionNumber": pseudo.accession_number}[keyword](text)


def _action(elem: Any) -> str | None:
    """What happens to one public element: the table's action, else the safety net's, else None (kept)."""
    action = deid_profile.action_for(int(elem.tag))
    if action is not None:
        return action
    vr = elem.VR
    if vr == "PN" or vr == "AS" or vr == "UN" or vr in FREE_TEXT_VRS:
        return "X"
    if vr in DATE_VRS:
        return "Z"
    if vr == "UI" and _is_instance_uid(elem.keyword or ""):
        return "U"
    return None


def _removed(action: str, vr: str) -> bool:
    """X and every choice that allows X; and where no stand-in can be made: a dummy sequence or binary
    value, a new UID for a value that is not a UID, anything of unknown VR (an attribute this pydicom
    does not know, read from an implicit VR file)."""
    return (action.startswith("X") or vr == "UN" or (action == "D" and (vr == "SQ" or vr in BINARY_VRS))
            or (action == "U" and vr != "UI"))


def _clean(ds: Any, pseudo: Pseudonymiser) -> None:
    """Apply the profile to `ds` and, recursively, to every item of every sequence it keeps."""
    for elem in list(ds):
        tag = elem.tag
        if tag.is_private or tag.group in (0x0000, 0x0002):  # command and meta groups never belong here
            del ds[tag]
            continue
        if elem.keyword in PSEUDONYMISED:
            elem.value = _pseudonymise(elem.keyword, elem.value, pseudo)
            continue
        action = _action(elem)
        if action is None:
            pass
        elif _removed(action, elem.VR):
            del ds[tag]
            continue
        elif action in ("Z", "Z/D"):
            elem.value = [] if elem.VR == "SQ" else None
            continue
        elif elem.VR == "UI":  # U, or D on a UID
            elem.value = _replace_uid(elem.value, pseudo)
        else:  # D
            elem.value = DUMMIES.get(elem.VR, 0)
        if elem.VR == "SQ":
            for item in elem.value:
                _clean(item, pseudo)


def burned_in_annotation(ds: Any) -> bool:
    """Might the pixels show identifying text? Declared YES, or undeclared on a likely kind of image."""
    declared = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if declared in ("YES", "NO"):
        return declared == "YES"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop_class = str(ds.get("SOPClassUID", "") or "")
    return modality in LIKELY_BURNED_IN or sop_class.startswith(SECONDARY_CAPTURE_ROOT)


def _mark(ds: Any) -> None:
    from pydicom.dataset import Dataset

    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = [code]
    ds.LongitudinalTemporalInformationModified = "REMOVED"


@dataclass(frozen=True)
class Deidentified:
    data: bytes  # the de-identified file
    burned_in: bool  # the pixels may still show identifying text (see `burned_in_annotation`)


def deidentify(data: bytes, secret_key: str) -> Deidentified:
    """The DICOM file `data` de-identified (see the module docstring), pixel data byte for byte intact.

    `data` must already have passed `shared.images.inspect_image`; a file written without the 128-byte
    preamble comes back as a complete DICOM file (preamble and file meta).
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset

    pseudo = Pseudonymiser(secret_key)
    has_prefix = data[DICOM_PREFIX_OFFSET:DICOM_PREFIX_OFFSET + 4] == DICOM_PREFIX
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_prefix)
    old_meta = getattr(ds, "file_meta", None)
    syntax = old_meta.get("TransferSyntaxUID") if old_meta is not None else None
    if syntax is None:
        implicit, little = ds.original_encoding
        syntax = (pydicom.uid.ImplicitVRLittleEndian if implicit
                  else pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian)
    burned_in = burned_in_annotation(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # values pydicom finds odd (the originals) are going anyway
        _clean(ds, pseudo)
    _mark(ds)
    if "SOPInstanceUID" not in ds:
        ds.SOPInstanceUID = pseudo.uid("sha256:" + hashlib.sha256(data).hexdigest())
    meta = FileMetaDataset()  # rebuilt: AE titles and private information of the sender stay behind
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format="MediaStorageSOPClassUID" in meta)
    return Deidentified(out.getvalue(), burned_in)


def deidentify_dicom(data: bytes, secret_key: str) -> bytes:
    """The de-identified file alone (see `deidentify`)."""
    return deidentify(data, secret_key).data


@dataclass(frozen=True)
class DeidentifiedUpload:
    data: bytes
    info: ImageInfo  # read back from `data`: what the database stores is what the stored file says
    burned_in: bool | None  # None: not a DICOM, nothing was checked


def deidentify_upload(data: bytes, info: ImageInfo, secret_key: str, limits: ImageLimits) -> DeidentifiedUpload:
    """For intake: a DICOM's bytes and header info after de-identification, and its burned-in flag.
    Other formats come back unchanged."""
    if info.format != "dicom":
        return DeidentifiedUpload(data, info, None)
    clean = deidentify(data, secret_key)
    return DeidentifiedUpload(clean.data, inspect_image(clean.data, limits), clean.burned_in)
