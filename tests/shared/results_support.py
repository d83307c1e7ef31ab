"""Done studies made the real way for the result encoders' tests (no tests here): real NIH X-rays (a PNG,
a DICOM built from one, a de-identified DICOM) stored, then diagnosed by `worker.processing.process_study`
with an untrained bundle, on a SQLite database and storage under one folder."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, selectinload, sessionmaker

from migrations import upgrade
from shared.config import Settings, load_settings
from shared.db import make_engine, make_session_factory, session_scope
from shared.deid import deidentify_dicom
from shared.models import Batch, Study
from shared.results import DoneStudy
from shared.storage import LocalStorage, Storage
from tests.dicom_factory import dicom_from_png

DCIODVFY = shutil.which("dciodvfy")
SECRET = "results-test-secret-key-0123456789abcdef"


@dataclass
class DoneStudies:
    settings: Settings
    factory: sessionmaker[Session]
    storage: Storage
    ids: dict[str, int]  # "png" | "dicom" | "deid" -> study id
    sources: dict[str, bytes]  # the DICOM originals as stored, by kind

    def done(self, kind: str) -> DoneStudy:
        with self.factory() as session:
            study = session.get(Study, self.ids[kind], options=[selectinload(Study.findings)])
            assert study is not None
            return DoneStudy.from_row(study)


def add_study(factory: sessionmaker[Session], storage: Storage, data: bytes, name: str, fmt: str,
              **fields: object) -> int:
    relpath = storage.put_original(data, "dcm" if fmt == "dicom" else fmt)
    with session_scope(factory) as session:
        study = Study(batch=Batch(label="results"), original_filename=name, sha256=hashlib.sha256(data).hexdigest(),
                      stored_path=relpath, format=fmt, size_bytes=len(data), **fields)
        session.add(study)
        session.flush()
        return study.id


def make_done_studies(root: Path, png: Path, env: dict[str, str] | None = None) -> DoneStudies:
    """Three done studies of the same real X-ray: as PNG, as a DX DICOM, as a de-identified DX DICOM
    (`env`: more settings, e.g. XRAY_DICOM_DESTINATIONS)."""
    from shared.classifier import Classifier, init_bundle
    from shared.diagnosis import Diagnoser
    from worker.processing import process_study

    settings = load_settings({"XRAY_VAR_DIR": str(root / "var"), **(env or {})})
    upgrade(settings.database_url)
    factory = make_session_factory(make_engine(settings.database_url))
    storage = LocalStorage(settings.storage_dir)
    bundle = root / "bundle"
    init_bundle(bundle, input_size=64, seed=3)
    diagnoser = Diagnoser(Classifier.load(bundle))
    dicom = dicom_from_png(png, window="full", metadata={"StudyTime": "101500", "ReferringPhysicianName": "WHO^DR"})
    sources = {"dicom": dicom, "deid": deidentify_dicom(dicom, SECRET)}
    ids = {
        "png": add_study(factory, storage, png.read_bytes(), png.name, "png"),
        "dicom": add_study(factory, storage, sources["dicom"], "x.dcm", "dicom", patient_id="TEST-0001"),
        "deid": add_study(factory, storage, sources["deid"], "y.dcm", "dicom"),
    }
    for study_id in ids.values():
        outcome = process_study(factory, storage, diagnoser, study_id, settings=settings)
        assert outcome.status == "done", outcome
    return DoneStudies(settings, factory, storage, ids, sources)


def dciodvfy_errors(path: Path) -> tuple[list[str], str]:
    """dciodvfy's "Error" lines for a file, and its whole report (for the failure message)."""
    if DCIODVFY is None:
        pytest.skip("dciodvfy not found: install the Debian package dicom3tools")
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    report = result.stdout + result.stderr
    return [line for line in report.splitlines() if line.startswith("Error")], report
