"""`xray up` itself: start it on a free port with the embedded Redis, upload, poll to done, send a
study over DICOM (dcmtk's storescu) to its receiver and poll that to done too, stop it with Ctrl-C
(SIGINT), and check that no process it started is left behind."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from cli.up import free_port
from tests.gateway.support import chest_dicoms
from tests.service_harness import wait_until, xray_up

pytestmark = pytest.mark.slow


def test_xray_up_runs_and_stops_cleanly(tmp_path: Path, nih_full_images: list[Path]) -> None:
    from shared.classifier import init_bundle

    bundle = tmp_path / "bundle"
    init_bundle(bundle, input_size=96, seed=2)
    dicom_port = free_port()
    with xray_up(tmp_path, bundle, free_port(), dicom_port=dicom_port) as up:
        assert len(up.descendants()) >= 4  # redis, worker, DICOM receiver, web at least
        # Nobody is let in until the first admin exists, which the start-up message explains.
        assert " user add NAME --role admin" in up.log_text()
        files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in nih_full_images[:2]]
        assert requests.post(f"{up.base}/api/v1/batches", files=files, timeout=30).status_code == 401
        headers = up.admin_token()
        response = requests.post(f"{up.base}/api/v1/batches", files=files, headers=headers, timeout=30)
        assert response.status_code == 201, response.text
        batch_url = f"{up.base}/api/v1/batches/{response.json()['batch_id']}"
        wait_until(lambda: requests.get(batch_url, headers=headers, timeout=10).json()["counts"].get("done", 0) == 2,
                   300, interval_s=1.0, describe=lambda: up.log_text()[-3000:])
        storescu = shutil.which("storescu")
        if storescu is None:
            pytest.skip("storescu not found: install the Debian package dcmtk")
        dicom = tmp_path / "chest.dcm"
        dicom.write_bytes(chest_dicoms(nih_full_images[2:], 1)[0])
        sent = subprocess.run([storescu, "-aec", "XRAY", "127.0.0.1", str(dicom_port), str(dicom)],
                              capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        worklist = f"{up.base}/api/v1/worklist?status=all"

        def dicom_done() -> bool:
            studies = requests.get(worklist, headers=headers, timeout=10).json()["studies"]
            return any(s["filename"] == "STORESCU-1.dcm" and s["status"] == "done" for s in studies)

        wait_until(dicom_done, 300, interval_s=1.0, describe=lambda: up.log_text()[-3000:])
