"""`xray dicom listen` (gateway.receiver) against peers nobody here wrote: dcmtk's echoscu and
storescu, pynetdicom as a plain SCU, and a real Orthanc pushing studies as a hospital PACS would.
Every image goes through the shared intake: one batch per association, a committed row per
Success, a proper failure status for what is refused."""

from __future__ import annotations

import io
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage
from sqlalchemy import select

from shared.config import Settings
from shared.db import session_scope
from shared.images import read_image
from shared.models import Study
from shared.storage import LocalStorage
from tests.dicom_factory import dicom_from_array
from tests.gateway.support import Receiver, chest_dicoms, need, running_orthanc, running_receiver

pytestmark = pytest.mark.slow


def _studies(receiver: Receiver) -> list[tuple[int, int, str, str]]:
    with session_scope(receiver.session_factory) as session:
        return [(s.id, s.batch_id, s.status, s.format)
                for s in session.scalars(select(Study).order_by(Study.id))]


def _write(tmp_path: Path, files: list[bytes]) -> list[str]:
    paths = []
    for index, data in enumerate(files):
        path = tmp_path / f"image{index}.dcm"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def test_dcmtk_echo_and_store_one_batch_per_association(settings: Settings, nih_full_images: list[Path],
                                                         tmp_path: Path) -> None:
    echoscu, storescu = need("echoscu", "dcmtk"), need("storescu", "dcmtk")
    files = _write(tmp_path, chest_dicoms(nih_full_images, 4))
    with running_receiver(settings, ("ECHOSCU", "STORESCU")) as receiver:
        port = str(receiver.port)
        assert subprocess.run([echoscu, "-aec", "XRAY", "127.0.0.1", port], capture_output=True,
                              timeout=60).returncode == 0
        plain = [files[0], files[3]]  # MONOCHROME2 and MONOCHROME1, uncompressed: one association
        sent = subprocess.run([storescu, "-aec", "XRAY", "127.0.0.1", port, *plain], capture_output=True,
                              text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        studies = _studies(receiver)
        assert len(studies) == 2 and studies[0][1] == studies[1][1]  # one association, one batch
        assert all(s[2] == "queued" and s[3] == "dicom" for s in studies)
        assert receiver.enqueued == [s[0] for s in studies]
        # Compressed ones, each as its sender proposes it: RLE, then JPEG 2000 lossless.
        for option, path in (("-xr", files[1]), ("-xv", files[2])):
            sent = subprocess.run([storescu, option, "-aec", "XRAY", "127.0.0.1", port, path],
                                  capture_output=True, text=True, timeout=120)
            assert sent.returncode == 0, sent.stderr
        studies = _studies(receiver)
        assert len(studies) == 4 and len({s[1] for s in studies}) == 3  # a batch per association
        assert receiver.enqueued == [s[0] for s in studies]


def test_calling_aes_are_checked_and_unset_refuses_everyone(settings: Settings, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    echoscu = need("echoscu", "dcmtk")
    caplog.set_level(logging.WARNING)
    with running_receiver(settings, ("PACS1",)) as receiver:
        args = [echoscu, "-aec", "XRAY", "127.0.0.1", str(receiver.port)]
        assert subprocess.run([*args, "-aet", "PACS1"], capture_output=True, timeout=60).returncode == 0
        assert subprocess.run([*args, "-aet", "STRANGER"], capture_output=True, timeout=60).returncode != 0
    assert "refused an association from calling AE 'STRANGER'" in caplog.text
    caplog.clear()
    with running_receiver(settings, ()) as receiver:
        args = [echoscu, "-aec", "XRAY", "127.0.0.1", str(receiver.port), "-aet", "PACS1"]
        assert subprocess.run(args, capture_output=True, timeout=60).returncode != 0
    assert "XRAY_DICOM_ALLOWED_AETS is not set, so every association is refused" in caplog.text


def test_refused_instances_get_failure_statuses(settings: Settings, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    storescu = need("storescu", "dcmtk")
    caplog.set_level(logging.WARNING)
    ct = get_testdata_file("CT_small.dcm")
    with running_receiver(settings, ("*",)) as receiver:
        # A CT: its storage class is not offered, so the sender cannot even propose it.
        refused = subprocess.run([storescu, "-aec", "XRAY", "127.0.0.1", str(receiver.port), ct],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 or "No presentation context" in refused.stderr + refused.stdout
        # A Secondary Capture too small to be an X-ray: accepted by class, refused by the intake.
        tiny = dcmread(io.BytesIO(dicom_from_array(np.zeros((32, 32), np.uint8))))
        tiny.SOPClassUID = SecondaryCaptureImageStorage
        tiny.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(SecondaryCaptureImageStorage, tiny.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title="XRAY")
        assert assoc.is_established
        status = assoc.send_c_store(tiny)
        assoc.release()
        assert status.Status == 0xC000 and "64" in str(status.ErrorComment)
        assert _studies(receiver) == []
    assert "an instance was refused" in caplog.text


def test_orthanc_pushes_studies_to_the_receiver(settings: Settings, nih_full_images: list[Path],
                                                tmp_path: Path) -> None:
    files = chest_dicoms(nih_full_images, 4)
    with running_receiver(settings, ("ORTHANC",)) as receiver, \
            running_orthanc(tmp_path, {"xray": ("XRAY", "127.0.0.1", receiver.port)}) as orthanc:
        ids = [orthanc.upload(data) for data in files]
        answer = orthanc.store_to("xray", ids)
        assert answer["status"] == 200, answer
        studies = _studies(receiver)
        assert len(studies) == 4 and all(s[2] == "queued" for s in studies)
        assert receiver.enqueued == [s[0] for s in studies]
        # What arrived is the same picture (MONOCHROME1 the right way round), compressed or not.
        storage = LocalStorage(receiver.settings.storage_dir)
        with session_scope(receiver.session_factory) as session:
            stored = [storage.read(s.stored_path) for s in session.scalars(select(Study).order_by(Study.id))]
        expected = sorted(np.asarray(Image.open(p).convert("L").resize((256, 256)), np.float64).mean()
                          for p in nih_full_images[:4])
        got = sorted(read_image(data, receiver.settings.limits).pixels.mean() * 255 for data in stored)
        assert np.allclose(got, expected, atol=1.0)
