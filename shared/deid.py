"""De-identification of DICOM on intake (XRAY_DEIDENTIFY=1), after PS3.15 Annex E's Basic Application
Confidentiality Profile, applied to the whole data set so the stored original is de-identified too.
Patient ID, name and accession number become keyed pseudonyms (HMAC-SHA256 under a key derived from
SECRET_KEY: a patient's studies still group, nobody without the key can reverse one), instance UIDs
become `2.25.<integer>` from the same HMAC, dates and other identifying attributes are emptied or
removed. The full list, and what is not covered (burned-in text), is in docs/SECURITY.md.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import warnings
from typing import Any

from shared.config import ImageLimits
from shared.images import DICOM_PREFIX, DICOM_PREFIX_OFFSET, ImageInfo, inspect_image

KEY_LABEL = b"xray-deidentify-v1"
STANDARD_UID_ROOT = "1.2.840.10008."
METHOD = "PS3.15 Basic Profile; HMAC-SHA256 pseudonyms; dates removed"  # LO: <= 64
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")

PSEUDONYMISED = ("PatientID", "PatientName", "AccessionNumber")
EMPTIED = {
    "PatientSex", "ReferringPhysicianName", "StudyID", "ContentCreatorName", "PatientBirthDate",
    "PatientBirthTime",
}
REMOVED = {
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "PatientTelecomInformation",
    "MilitaryRank", "BranchOfService", "MedicalRecordLocator", "EthnicGroup", "Occupation",
    "AdditionalPatientHistory", "PatientComments", "PatientReligiousPreference", "PatientAge",
    "PatientSize", "PatientWeight", "PatientInsurancePlanCodeSequence", "CountryOfResidence",
    "RegionOfResidence", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "AdmissionID",
    "IssuerOfAdmissionIDSequence", "ServiceEpisodeID", "CurrentPatientLocation", "PatientInstitutionResidence",
    "ResponsiblePerson", "ResponsibleOrganization", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "InstitutionCodeSequence", "StationName", "DeviceSerialNumber",
    "DetectorID", "PlateID", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence", "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
    "PerformingPhysicianName", "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "OperatorsName", "OperatorIdentificationSequence",
    "RequestingPhysician", "RequestingService", "ScheduledPerformingPhysicianName", "StudyDescription",
    "SeriesDescription", "ImageComments", "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence",
    "DerivationDescription", "RequestAttributesSequence", "ProtocolName", "PerformedProcedureStepID",
    "PerformedProcedureStepDescription", "ScheduledProcedureStepID", "RequestedProcedureID",
    "RequestedProcedureDescription", "ReasonForStudy", "ReasonForTheRequestedProcedure",
    "AcquisitionComments", "FrameComments", "AcquisitionDeviceProcessingDescription",
    "DetectorDescription", "ReferencedPatientSequence", "ReferencedStudySequence",
    "ReferencedPerformedProcedureStepSequence", "PerformedLocation", "ScheduledStudyLocation",
    "ScheduledStudyLocationAETitle", "OrderEnteredBy", "OrderEntererLocation", "OrderCallbackPhoneNumber",
    "InterpretationRecorder", "InterpretationAuthor", "DistributionName", "DistributionAddress",
    "IdentifyingComments", "TextComments", "TextString", "ContentSequence", "GraphicAnnotationSequence",
    "OverlayData", "OverlayComments", "PersonAddress", "PersonTelephoneNumbers", "PersonName",
    "VerifyingObserverName", "VerifyingObserverSequence", "VerifyingOrganization", "SourceApplicationEntityTitle",
    "DigitalSignaturesSequence", "MACParametersSequence", "EncryptedAttributesSequence",
    "OriginalAttributesSequence", "ModifiedAttributesSequence",
}
FREE_TEXT_VRS = {"LT", "ST", "UT"}
DATE_VRS = {"DA", "DT", "TM"}


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


def _clean(ds: Any, pseudo: Pseudonymiser) -> None:
    def visit(dataset: Any, elem: Any) -> None:
        keyword = elem.keyword or ""
        if elem.tag.is_private:
            return  # removed afterwards by remove_private_tags()
        if keyword in PSEUDONYMISED:
            elem.value = _pseudonymise(keyword, elem.value, pseudo)
        elif keyword in REMOVED or elem.VR in FREE_TEXT_VRS or elem.VR == "AS":
            del dataset[elem.tag]
        elif keyword in EMPTIED or elem.VR in DATE_VRS:
            elem.value = ""
        elif elem.VR == "PN":
            del dataset[elem.tag]
        elif elem.VR == "UI" and _is_instance_uid(keyword):
            elem.value = _replace_uid(elem.value, pseudo)

    ds.walk(visit, recursive=True)
    ds.remove_private_tags()


def _mark(ds: Any) -> None:
    from pydicom.dataset import Dataset

    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = [code]
    ds.LongitudinalTemporalInformationModified = "REMOVED"


def deidentify_dicom(data: bytes, secret_key: str) -> bytes:
    """The DICOM file `data` de-identified (see the module docstring), pixel data byte for byte intact.

    `data` must already have passed `shared.images.inspect_image`; a file written without the 128-byte
    preamble comes back as a complete DICOM file (preamble and file meta).
    """
    import pydicom

    pseudo = Pseudonymiser(secret_key)
    has_prefix = data[DICOM_PREFIX_OFFSET:DICOM_PREFIX_OFFSET + 4] == DICOM_PREFIX
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_prefix)
    meta = ds.file_meta if getattr(ds, "file_meta", None) is not None else pydicom.dataset.FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit
                                  else pydicom.uid.ExplicitVRLittleEndian if little
                                  else pydicom.uid.ExplicitVRBigEndian)
    _clean(ds, pseudo)
    _mark(ds)
    if "SOPInstanceUID" not in ds:
        ds.SOPInstanceUID = pseudo.uid("sha256:" + hashlib.sha256(data).hexdigest())
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    for keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                    "ReceivingApplicationEntityTitle", "PrivateInformationCreatorUID", "PrivateInformation"):
        if keyword in meta:
            delattr(meta, keyword)
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format="MediaStorageSOPClassUID" in meta)
    return out.getvalue()


def deidentify_upload(data: bytes, info: ImageInfo, secret_key: str, limits: ImageLimits) -> tuple[bytes, ImageInfo]:
    """For intake: a DICOM's bytes and header info after de-identification (read back from the new
    bytes, so what the database stores is exactly what the stored file says). Other formats unchanged."""
    if info.format != "dicom":
        return data, info
    clean = deidentify_dicom(data, secret_key)
    return clean, inspect_image(clean, limits)
