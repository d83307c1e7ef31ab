"""A real Orthanc (Debian package `orthanc`) for tests: started on free ports with a configuration the
test writes (its own storage folder, no plugins, HTTP on 127.0.0.1 only), stoppable and restartable on
the same storage, and a few calls of its REST API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

ORTHANC = shutil.which("Orthanc") or (Path("/usr/sbin/Orthanc") if Path("/usr/sbin/Orthanc").exists() else None)
AET = "ORTHANC"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Orthanc:
    def __init__(self, folder: Path) -> None:
        if ORTHANC is None:
            pytest.skip("Orthanc not found: install the Debian package orthanc")
        self.folder = folder
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config = folder / "orthanc.json"
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps({
            "Name": "xray-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": AET,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
            "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": True, "StorageCompression": False,
        }))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def destination(self) -> str:
        return f"{AET}@127.0.0.1:{self.dicom_port}"

    def start(self, timeout_s: float = 30.0) -> None:
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - the process holds it
        self.process = subprocess.Popen([str(ORTHANC), str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok and self._dicom_listening():
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError("Orthanc did not start in time")

    def _dicom_listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.dicom_port)) == 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def get(self, path: str) -> Any:
        response = requests.get(f"{self.url}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def upload(self, data: bytes) -> None:
        requests.post(f"{self.url}/instances", data=data, timeout=30).raise_for_status()

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """The instances Orthanc holds in the study with this StudyInstanceUID (each with its tags)."""
        found = requests.post(f"{self.url}/tools/lookup", data=study_uid, timeout=10).json()
        studies = [item["ID"] for item in found if item["Type"] == "Study"]
        return [instance for study in studies for instance in self.get(f"/studies/{study}/instances")]

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])
