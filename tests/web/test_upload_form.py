"""The upload form: too many parts is refused with that reason and its limit (not "too large"), and
file parts wait in a private folder under XRAY_VAR_DIR (0700), never in the system temp folder, and
leave nothing there."""

from __future__ import annotations

import io
import os
import stat

import numpy as np
from flask import request

from shared.config import Settings
from tests.dicom_factory import dicom_from_array
from tests.web.support import make_app, upload
from web import MAX_FORM_PARTS
from web.request import SPOOL_DIR_KEY

BOUNDARY = "xraytestboundary"


def _multipart(parts: int) -> bytes:
    chunk = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
             "Content-Type: image/png\r\n\r\nx\r\n").encode()
    return chunk * parts + f"--{BOUNDARY}--\r\n".encode()


def test_too_many_parts_is_refused_with_that_reason(settings: Settings) -> None:
    app, producer = make_app(settings)
    body = _multipart(12_000)
    assert len(body) < settings.max_upload_bytes
    response = app.test_client().post("/api/v1/batches", data=body,
                                      content_type=f"multipart/form-data; boundary={BOUNDARY}")
    assert response.status_code == 413
    error = response.get_json()["error"]
    assert f"more than {MAX_FORM_PARTS} parts" in error and "MiB" not in error, error
    assert producer.sent == []


def test_file_parts_wait_in_a_private_folder_not_the_system_temp(settings: Settings) -> None:
    app, _ = make_app(settings)
    spool = app.config[SPOOL_DIR_KEY]
    assert stat.S_IMODE(os.stat(spool).st_mode) == 0o700
    assert os.path.commonpath([spool, str(settings.var_dir)]) == str(settings.var_dir)
    big = os.urandom(2 * 1024 * 1024)
    with app.test_request_context("/api/v1/batches", method="POST", content_type="multipart/form-data",
                                  data={"files": [(io.BytesIO(big), "Patient_Name.dcm")]}):
        stream = request.files["files"].stream
        where = os.readlink(f"/proc/self/fd/{stream.fileno()}")  # type: ignore[attr-defined]
        assert os.path.dirname(where.removesuffix(" (deleted)")) == spool, where  # not the system temp folder
        assert "Patient_Name" not in where and os.listdir(spool) == []  # unnamed: nothing to find or leave


def test_a_large_upload_goes_through_the_spool_and_leaves_nothing(settings: Settings) -> None:
    app, _ = make_app(settings)
    grey = np.random.default_rng(3).integers(0, 65535, size=(1024, 1024), dtype=np.uint16)
    data = dicom_from_array(grey, metadata={"PatientName": "Spool^Test"}, window="full")
    assert len(data) > 1024 * 1024
    response = upload(app.test_client(), [(data, "large.dcm")])
    assert response.status_code == 201, response.get_json()
    assert os.listdir(app.config[SPOOL_DIR_KEY]) == []
