"""Helpers the DICOM network tests share (no tests here): real chest X-rays as DICOM files, the
receiver on a free port in this process, and a real Orthanc server acting as the hospital's PACS."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from cli.up import free_port
from gateway.receiver import serve
from migrations import upgrade
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.storage import LocalStorage
from tests.dicom_factory import dicom_from_array


def need(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} not found: install the Debian package {package}")
    return path


def chest_dicoms(nih_full_images: list[Path], count: int) -> list[bytes]:
    """Real NIH X-rays as DX files: MONOCHROME2 and MONOCHROME1, plain, RLE and JPEG 2000 lossless."""
    kinds = [("MONOCHROME2", None), ("MONOCHROME1", "rle"), ("MONOCHROME2", "jpeg2000-lossless"),
             ("MONOCHROME1", None)]
    files = []
    for index, path in enumerate(nih_full_images[:count]):
        grey = np.asarray(Image.open(path).convert("L").resize((256, 256)), dtype=np.uint8)
        photometric, compressed = kinds[index % len(kinds)]
        files.append(dicom_from_array(grey, photometric=photometric, compressed=compressed, window="full"))
    return files


@dataclass
class Receiver:
    settings: Settings
    port: int
    session_factory: Any
    enqueued: list[int] = field(default_factory=list)


@contextmanager
def running_receiver(settings: Settings, allowed: tuple[str, ...]) -> Iterator[Receiver]:
    """The receiver (gateway.receiver.serve) in this process, on a free port, with its own SQLite."""
    port = free_port()
    settings = settings.with_overrides(dicom_port=port, dicom_host="127.0.0.1", dicom_allowed_aets=allowed)
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    receiver = Receiver(settings, port, make_session_factory(engine))
    server = serve(settings, receiver.session_factory, LocalStorage(settings.storage_dir), receiver.enqueued.append,
                   block=False)
    try:
        yield receiver
    finally:
        server.shutdown()
        engine.dispose()


@dataclass
class Orthanc:
    http: str
    dicom_port: int
    aet: str = "ORTHANC"

    def upload(self, data: bytes) -> str:
        response = requests.post(f"{self.http}/instances", data=data, timeout=30)
        response.raise_for_status()
        return response.json()["ID"]

    def store_to(self, modality: str, resources: list[str]) -> dict[str, Any]:
        response = requests.post(f"{self.http}/modalities/{modality}/store",
                                 json={"Resources": resources, "Synchronous": True}, timeout=120)
        return {"status": response.status_code, "body": response.text}


@contextmanager
def running_orthanc(tmp_path: Path, modalities: dict[str, tuple[str, str, int]]) -> Iterator[Orthanc]:
    """A real Orthanc (Debian package orthanc) on free ports, its data in tmp_path, no plugins."""
    program = need("Orthanc", "orthanc")
    http_port, dicom_port = free_port(), free_port()
    folder = tmp_path / "orthanc"
    folder.mkdir()
    config = {
        "Name": "test-pacs", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [], "DicomModalities": {k: list(v) for k, v in modalities.items()},
        "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False, "StableAge": 1,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    proc = subprocess.Popen([program, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    orthanc = Orthanc(f"http://127.0.0.1:{http_port}", dicom_port)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{orthanc.http}/system", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield orthanc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
