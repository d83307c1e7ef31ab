"""A done study's results as a FHIR R4 DiagnosticReport (JSON-ready dict), a pure function of the study.

One resource, nothing to resolve elsewhere: the Observations (one per finding) and the Device (the model
and its version) are contained resources. Each Observation carries the probability as valueQuantity
(UCUM "1"), the operating threshold as its referenceRange's high end (values below it are the expected,
negative range), positive or negative as interpretation (v3 ObservationInterpretation POS / NEG), the
box as a component when it has one, and the model as `device` and `method`. The report points at the
imaging study by its StudyInstanceUID (`urn:dicom:uid`, the same study as the DICOM results) and at
the Structured Report by its SOP Instance UID. Status is `preliminary`: nobody has verified it.

The resources use only elements that R4 (4.0.1) and R4B share; tests validate them with
`fhir.resources.R4B`.
"""

from __future__ import annotations

from typing import Any

from shared.findings import DISPLAY_NAMES
from shared.report_text import plain_summary
from shared.results import (
    ALGORITHM_NAME,
    MANUFACTURER,
    RESEARCH_NOTICE,
    DoneStudy,
    FindingResult,
    derived_uid,
    source_header,
)
from shared.storage import Storage

# The code system of the NIH ChestX-ray14 labels (not SNOMED concepts): an OID URN, fixed forever.
FINDING_SYSTEM = f"urn:oid:{derived_uid('fhir-code-system', 'chestx-ray14-finding')}"
DICOM_UID_SYSTEM = "urn:dicom:uid"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
DIAGNOSTIC_SERVICE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0074"
LOINC = "http://loinc.org"
DEVICE_ID = "model"


def _uid_identifier(uid: str) -> dict[str, str]:
    return {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}


def observation_id(label: str) -> str:
    return "finding-" + label.lower().replace("_", "-")


def _probability(value: float) -> dict[str, Any]:
    return {"value": round(value, 6), "unit": "probability", "system": UCUM, "code": "1"}


def _observation(done: DoneStudy, finding: FindingResult, study_uid: str, method: dict[str, Any]) -> dict[str, Any]:
    name = DISPLAY_NAMES.get(finding.label, finding.label)
    verdict = ("POS", "Positive") if finding.positive else ("NEG", "Negative")
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": observation_id(finding.label),
        "status": "preliminary",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": "imaging", "display": "Imaging"}]}],
        "code": {"coding": [{"system": FINDING_SYSTEM, "code": finding.label, "display": name}],
                 "text": f"{name} (model probability)"},
        "effectiveDateTime": done.finished_at.isoformat(),
        "valueQuantity": _probability(finding.probability),
        "interpretation": [{"coding": [{"system": INTERPRETATION_SYSTEM, "code": verdict[0], "display": verdict[1]}],
                            "text": f"{verdict[1]}: {'at or above' if finding.positive else 'below'} the "
                                    f"operating threshold {finding.threshold:.4f}"}],
        "referenceRange": [{"high": _probability(finding.threshold),
                            "text": "Below the model's operating threshold for this finding"}],
        "method": method,
        "device": {"reference": f"#{DEVICE_ID}"},
        "note": [{"text": RESEARCH_NOTICE}],
    }
    if finding.box is not None:
        box = finding.box
        observation["component"] = [
            {"code": {"text": f"box {part} (pixels of the original image)"},
             "valueQuantity": {"value": value, "unit": "pixel"}}
            for part, value in (("x", box.x), ("y", box.y), ("width", box.width), ("height", box.height))
        ]
    observation["derivedFrom"] = [{"type": "ImagingStudy", "identifier": _uid_identifier(study_uid)}]
    return observation


def _device(done: DoneStudy) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "id": DEVICE_ID,
        "manufacturer": MANUFACTURER,
        "deviceName": [{"name": ALGORITHM_NAME, "type": "model-name"}],
        "type": {"text": "Artificial intelligence model (chest X-ray findings)"},
        "version": [{"value": done.model_version}],
        "note": [{"text": RESEARCH_NOTICE + ("" if done.model_trained else " (untrained demo weights)")}],
    }


def conclusion(done: DoneStudy) -> str:
    """The research notice, the findings above their thresholds, and the plain-language summary
    (`shared.report_text`) for a reader who is not a radiologist."""
    positives = [f"{DISPLAY_NAMES.get(f.label, f.label)} ({f.probability:.2f})"
                 for f in sorted(done.positives, key=lambda f: -f.probability)]
    found = ("Above the operating threshold: " + ", ".join(positives) + "."
             if positives else "No finding above its operating threshold.")
    return f"{RESEARCH_NOTICE}. {found} {plain_summary(done.findings, done.model_trained, done.not_frontal_reason)}"


def diagnostic_report(done: DoneStudy, study_uid: str, sr_uid: str | None = None,
                      patient_id: str | None = None) -> dict[str, Any]:
    """The report (module docstring). `study_uid`: the imaging study the results belong to (the
    source's, or the one made for a PNG/JPEG); `sr_uid`: the Structured Report's SOP Instance UID;
    `patient_id`: the (maybe pseudonymised) PatientID, as a logical subject reference."""
    method = {"text": f"{ALGORITHM_NAME}, model version {done.model_version}, runtime "
                      f"{done.model_runtime or 'unknown'}"}
    observations = [_observation(done, f, study_uid, method) for f in done.findings]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": f"study-{done.id}",
        "contained": [_device(done), *observations],
        "status": "preliminary",
        "category": [{"coding": [{"system": DIAGNOSTIC_SERVICE_SYSTEM, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}],
                 "text": "Chest X-ray, automated findings (research demo)"},
        "effectiveDateTime": done.finished_at.isoformat(),
        "issued": done.finished_at.isoformat(),
        "imagingStudy": [{"type": "ImagingStudy", "identifier": _uid_identifier(study_uid)}],
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "conclusion": conclusion(done),
    }
    if sr_uid:
        report["identifier"] = [_uid_identifier(sr_uid)]
    if patient_id:
        report["subject"] = {"type": "Patient", "identifier": {"value": patient_id}}
    return report


def study_report(storage: Storage, done: DoneStudy) -> dict[str, Any]:
    """`diagnostic_report` with the study UID and patient of the stored source (shared.results)."""
    header = source_header(storage, done)
    patient_id = str(header.get("PatientID", "") or "").strip() or None
    return diagnostic_report(done, str(header.StudyInstanceUID), sr_uid=done.uid("sr"), patient_id=patient_id)
