"""End to end, real processes: a real `xray worker` (Celery on the real Redis) diagnoses a DICOM study of
a real X-ray while the hospital's PACS (a real Orthanc, Debian package `orthanc`) is down; the delivery
task retries with backoff, Orthanc comes back, and the SR and Secondary Capture arrive once, in the
source's study, next to the source image."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from migrations import upgrade
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.models import Delivery
from shared.queue import enqueue_diagnosis, make_celery
from shared.storage import LocalStorage
from tests.dicom_factory import dicom_from_png
from tests.service_harness import service_env, wait_until, worker_process
from tests.shared.results_support import add_study
from tests.worker.orthanc_support import Orthanc

pytestmark = pytest.mark.slow


def test_results_reach_a_pacs_that_was_down(settings: Settings, redis_url: str, service_bundle: Path,
                                            nih_full_images: list[Path], tmp_path: Path) -> None:
    orthanc = Orthanc(tmp_path / "orthanc")
    orthanc.start()
    try:
        source = dicom_from_png(nih_full_images[4], window="full")
        orthanc.upload(source)  # the PACS holds the source image
        study_uid = pydicom.dcmread(io.BytesIO(source)).StudyInstanceUID
        orthanc.stop()  # ... and goes down before the results are ready

        upgrade(settings.database_url)
        factory = make_session_factory(make_engine(settings.database_url))
        study_id = add_study(factory, LocalStorage(settings.storage_dir), source, "chest.dcm", "dicom")

        def delivery() -> Delivery | None:
            with factory() as session:
                return session.scalar(select(Delivery).where(Delivery.study_id == study_id))

        env = service_env(settings, redis_url, service_bundle, XRAY_DICOM_DESTINATIONS=orthanc.destination,
                          XRAY_DICOM_AET="XRAYTEST")
        with worker_process(env, tmp_path / "worker.log"):
            enqueue_diagnosis(make_celery(settings, redis_url), study_id)
            log = tmp_path / "worker.log"
            wait_until(lambda: (row := delivery()) is not None and row.attempts >= 1, 300,
                       describe=lambda: f"no failed try recorded; worker log: {log.read_text()[-3000:]}")
            row = delivery()
            assert row is not None and row.status == "pending" and "could not be reached" in (row.error or "")
            orthanc.start()
            wait_until(lambda: (row := delivery()) is not None and row.status == "sent", 120,
                       describe=lambda: f"delivery {delivery().__dict__}; log: {log.read_text()[-3000:]}")
        instances = orthanc.study_instances(study_uid)
        classes = sorted(i["MainDicomTags"].get("SOPClassUID", "") for i in instances)
        assert len(instances) == 3, classes  # the source, the SR and the Secondary Capture: once each
        assert orthanc.instance_count() == 3
    finally:
        orthanc.stop()
