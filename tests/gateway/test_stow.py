"""DICOMweb STOW-RS (`POST /dicomweb/studies`) through a client nobody here wrote: dicomweb-client's
`store_instances`, against the app served on a real port. The same intake as an upload: real X-rays
stored and queued, a bad instance refused with a reason in the PS3.18 response, the API's auth."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
from pydicom import dcmread
from sqlalchemy import select

from shared.config import Settings
from shared.models import AuditEvent, BatchUploader, Study
from tests.conftest import Account
from tests.dicom_factory import dicom_from_array
from tests.gateway.support import chest_dicoms
from tests.integration.test_submit import serve
from tests.web.support import make_app, session_for

dicomweb_client = pytest.importorskip("dicomweb_client", reason="pip install dicomweb-client (dev extra)")


def test_store_instances_with_dicomweb_client(settings: Settings, nih_full_images: list[Path],
                                              account_factory: Callable[..., Account]) -> None:
    app, producer = make_app(settings, auth=False)
    uploader = account_factory("uploader")
    good = [dcmread(io.BytesIO(data)) for data in chest_dicoms(nih_full_images, 2)]
    bad = dcmread(io.BytesIO(dicom_from_array(np.zeros((32, 32), np.uint8))))  # too small to be an X-ray
    with serve(app) as base:
        client = dicomweb_client.DICOMwebClient(url=f"{base}/dicomweb", headers=uploader.headers)
        answer = client.store_instances([*good, bad])
        refused = requests.post(f"{base}/dicomweb/studies", data=b"x", timeout=30,
                                headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
        wrong_type = requests.post(f"{base}/dicomweb/studies", data=b"x", timeout=30, headers={
            **uploader.headers, "Content-Type": "application/json"})
    stored = answer.ReferencedSOPSequence
    assert [item.ReferencedSOPInstanceUID for item in stored] == [str(ds.SOPInstanceUID) for ds in good]
    assert len(answer.FailedSOPSequence) == 1
    failure = answer.FailedSOPSequence[0]
    assert failure.ReferencedSOPInstanceUID == bad.SOPInstanceUID and failure.FailureReason == 0xC000
    assert refused.status_code == 401  # no token
    assert wrong_type.status_code == 415
    with session_for(settings) as session:
        studies = list(session.scalars(select(Study).order_by(Study.id)))
        assert len(studies) == 2 and all(s.status == "queued" and s.format == "dicom" for s in studies)
        assert [args[0] for _name, args in producer.sent] == [s.id for s in studies]
        assert session.scalar(select(BatchUploader.user_id).where(BatchUploader.batch_id == studies[0].batch_id))
        uploads = session.scalars(select(AuditEvent.study_id).where(AuditEvent.action == "upload")).all()
        assert sorted(uploads) == [s.id for s in studies]
