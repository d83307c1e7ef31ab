"""A failed commit during a real DICOM upload: the client gets a clear 500, and no log record (message,
arguments or traceback) holds the patient's name, ID, accession number or the file name."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import numpy as np
import pytest
from sqlalchemy import text

from shared.config import Settings
from shared.db import make_engine
from tests.conftest import Account
from tests.dicom_factory import dicom_from_array
from tests.web.support import make_app

MARKERS = {"PatientID": "PIDMARK-5521", "PatientName": "Markername^Quill", "AccessionNumber": "ACCMARK-7734"}
FILE_NAME = "Quill_Markername_chest.dcm"


def test_failed_commit_logs_no_patient_identifier(settings: Settings, account_factory: Callable[..., Account],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    app, producer = make_app(settings, auth=False)
    uploader = account_factory("uploader")
    # The database refuses every new study, as a full disk or a dropped connection would at commit.
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER refuse_studies BEFORE INSERT ON studies "
                          "BEGIN SELECT RAISE(ABORT, 'refused for the test'); END"))
    engine.dispose()
    grey = np.random.default_rng(7).integers(0, 256, size=(96, 80), dtype=np.uint8)
    data = dicom_from_array(grey, metadata=dict(MARKERS), window="full")
    caplog.set_level(logging.DEBUG)

    response = app.test_client().post("/api/v1/batches", headers=uploader.headers,
                                      content_type="multipart/form-data",
                                      data={"files": [(io.BytesIO(data), FILE_NAME)]})

    assert response.status_code == 500
    assert "could not save the studies" in response.get_json()["error"]
    assert producer.sent == []
    assert any("committing" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        rendered = record.getMessage() + repr(record.args) + (record.exc_text or "")
        if record.exc_info:
            rendered += logging.Formatter().formatException(record.exc_info)
        for marker in (*MARKERS.values(), "Markername", "Quill"):
            assert marker not in rendered, (record.name, record.getMessage())
    assert "Markername" not in caplog.text and "PIDMARK" not in caplog.text


def test_every_engine_hides_sql_parameters(settings: Settings) -> None:
    for url in (settings.database_url, "postgresql://xray@127.0.0.1:1/none"):
        engine = make_engine(url)  # no connection is made
        assert engine.hide_parameters, url
        engine.dispose()
