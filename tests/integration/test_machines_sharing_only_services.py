"""Workers on machines that share nothing but the services.

The web (gunicorn) and the workers run as separate processes, each as if on a machine of its own: its
own empty working folder, its own var folder, each worker its own copy of the model bundle, and no
folder in common. What they share is only PostgreSQL, Redis (this test's own queue) and an S3 store (a
real SeaweedFS server). Real X-rays are uploaded through the web's API, diagnosed by the workers, and
every heatmap is then served by the web out of the object store.

- 200 studies, two workers; one worker (its whole process group: the machine) is killed with SIGKILL
  while both are diagnosing. Nothing is lost: every study is done exactly once.
- 40 studies, one worker; the S3 server is killed mid-batch and started again a few seconds later on
  the same ports and data. The studies wait (retries with backoff) and complete; nothing is lost or
  half-written.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy.orm import Session, sessionmaker

from migrations import upgrade
from shared.config import PROJECT_ROOT
from shared.db import make_engine, make_session_factory
from shared.findings import FINDINGS
from tests.conftest import S3_TEST_BUCKET, make_account
from tests.faults.support import (
    FINISH_TIMEOUT_S,
    RECONCILE_AFTER_S,
    TASK_SOFT_TIME_LIMIT_S,
    TASK_TIME_LIMIT_S,
    all_finished,
    assert_done_exactly_once,
    count_by_status,
    free_port,
    kermany_payloads,
    log_tail,
    study_states,
)
from tests.seaweed import SeaweedServer, seaweed_server, unique_prefix
from tests.service_harness import delete_queue_keys, wait_until, web_process, worker_process

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What a machine of ours must not get from this one's environment: every setting is given explicitly.
_OWN_SETTINGS = ("XRAY_", "STORAGE_", "MODEL_DIR", "S3_", "AWS_", "DATABASE_URL", "REDIS_URL", "SECRET_KEY")


@dataclass
class Machine:
    name: str
    folder: Path  # its working folder: empty at start, nothing in it is shared
    env: dict[str, str]

    @property
    def log(self) -> Path:
        return self.folder.parent / f"{self.name}.log"  # beside, not in, the machine's folder


@dataclass
class Site:
    """The services in common and the machines that use them."""

    base_url: str
    token: str
    factory: sessionmaker[Session]
    s3: SeaweedServer
    bucket: str
    prefix: str
    machines: list[Machine]
    workers: dict[str, subprocess.Popen[bytes]]  # name -> the worker process (its group: the machine)

    def describe(self, ids: list[int]) -> str:
        logs = "\n".join(f"--- {m.name}:\n{log_tail(m.log, 2000)}" for m in self.machines)
        return f"{count_by_status(self.factory, ids)}\n{logs}"


@pytest.fixture(scope="module")
def prepared_bundle(service_bundle: Path) -> Path:
    """The test bundle with its runtime's cache made (OpenVINO's converted model, kept in the bundle):
    each machine gets a copy of a prepared bundle, as an operator would deploy it, instead of every
    worker spending half a minute converting the same model."""
    code = "import sys; from shared.runtime import load_predictor; load_predictor(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, "-c", code, str(service_bundle)], env=env, check=True, timeout=600)
    return service_bundle


def _machine(root: Path, name: str, shared_env: dict[str, str], bundle: Path | None = None) -> Machine:
    folder = root / name
    folder.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_SETTINGS)}
    env.update(shared_env)
    env["XRAY_VAR_DIR"] = str(folder / "var")
    env["HOME"] = str(folder)  # what programs keep in a home folder (gunicorn's control socket) stays here
    if bundle is not None:
        env["MODEL_DIR"] = str(shutil.copytree(bundle, folder / "model"))
    return Machine(name, folder, env)


@contextmanager
def site(tmp_path: Path, postgres_url: str, redis_url: str, bundle: Path, s3: SeaweedServer, bucket: str,
         workers: int) -> Iterator[Site]:
    upgrade(postgres_url)
    queue = f"xray.test.{uuid.uuid4().hex[:8]}"
    prefix = unique_prefix()
    shared_env = {
        "DATABASE_URL": postgres_url, "REDIS_URL": redis_url, "XRAY_QUEUE": queue,
        "SECRET_KEY": uuid.uuid4().hex, **s3.env(bucket, prefix),
        # Short deadlines so that recovery from a lost worker takes seconds (tests/faults/support.py).
        "XRAY_RECONCILE_AFTER": str(RECONCILE_AFTER_S), "XRAY_TASK_TIME_LIMIT": str(TASK_TIME_LIMIT_S),
        "XRAY_TASK_SOFT_TIME_LIMIT": str(TASK_SOFT_TIME_LIMIT_S),
        "OPENBLAS_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    machines = [_machine(tmp_path, "web", shared_env)]
    machines += [_machine(tmp_path, f"worker-{i + 1}", shared_env, bundle) for i in range(workers)]
    engine = make_engine(postgres_url)
    port = free_port()
    try:
        with ExitStack() as stack:
            web = machines[0]
            stack.enter_context(web_process(web.env, web.log, port, cwd=web.folder))
            started = {m.name: stack.enter_context(worker_process(m.env, m.log, cwd=m.folder))
                       for m in machines[1:]}
            token = make_account(postgres_url, "radiographer", "admin").token
            yield Site(f"http://127.0.0.1:{port}", token, make_session_factory(engine), s3, bucket, prefix,
                       machines, started)
    finally:
        delete_queue_keys(redis_url, queue)
        engine.dispose()


def _upload(place: Site, payloads: list[tuple[str, bytes]]) -> list[int]:
    files = [("files", (name, data, "image/jpeg")) for name, data in payloads]
    response = requests.post(f"{place.base_url}/api/v1/batches", files=files, timeout=300,
                             headers={"Authorization": f"Bearer {place.token}"})
    assert response.status_code == 201, response.text
    accepted = response.json()["accepted"]
    assert len(accepted) == len(payloads) and not any(a["duplicate"] for a in accepted)
    return [a["id"] for a in accepted]


def _check_served(place: Site, ids: list[int], payloads: list[tuple[str, bytes]], every_layer: bool) -> None:
    """Every study's image (the uploaded bytes) and heatmap come from the web, out of S3. A study's
    heatmaps are one stored CAM sheet with a layer per finding: `every_layer` fetches all 14 layers of
    every study, otherwise each study's sheet is fetched once, through a finding that rotates over
    the 14 (every label is served, and the request count stays a few hundred)."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {place.token}"

    def check(index: int) -> None:
        study_id, data = ids[index], payloads[index][1]
        image = session.get(f"{place.base_url}/studies/{study_id}/image", timeout=60)
        assert image.status_code == 200 and image.content == data, study_id
        detail = session.get(f"{place.base_url}/api/v1/studies/{study_id}", timeout=60).json()
        findings = detail["findings"]
        assert [f["label"] for f in findings] == list(FINDINGS)
        for finding in findings if every_layer else [findings[index % len(findings)]]:
            heatmap = session.get(f"{place.base_url}{finding['heatmap_url']}", timeout=60)
            assert heatmap.status_code == 200, (study_id, finding["label"], heatmap.text[:300])
            assert heatmap.headers["Content-Type"] == "image/png" and heatmap.content.startswith(PNG_SIGNATURE)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(check, range(len(ids))))


def _check_nothing_shared(place: Site, count: int) -> None:
    """The files are in the store, and in no machine's folder."""
    keys = place.s3.keys(place.bucket, place.prefix)
    assert sum("/originals/" in k for k in keys) == count and sum("/heatmaps/" in k for k in keys) == count
    assert len(keys) == 2 * count, [k for k in keys if "/originals/" not in k and "/heatmaps/" not in k]
    for machine in place.machines:
        kept = [p for p in machine.folder.rglob("*") if p.is_file() and not p.is_relative_to(machine.folder / "model")]
        assert not [p for p in kept if p.suffix in (".png", ".jpg", ".jpeg", ".dcm")], (machine.name, kept)


def test_two_workers_200_studies_one_killed(tmp_path: Path, postgres_url: str, redis_url: str,
                                            prepared_bundle: Path, kermany_dir: Path, seaweed: SeaweedServer) -> None:
    payloads = kermany_payloads(kermany_dir, 200)
    with site(tmp_path, postgres_url, redis_url, prepared_bundle, seaweed, S3_TEST_BUCKET, workers=2) as place:
        ids = _upload(place, payloads)
        # Kill worker-1's machine while both workers are diagnosing (one study each in flight).
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while True:
            counts = count_by_status(place.factory, ids)
            if counts.get("processing", 0) >= 2 and counts.get("done", 0) >= 10:
                break
            assert time.monotonic() < deadline, f"both workers never diagnosed at once: {place.describe(ids)}"
            time.sleep(0.02)
        victim = place.workers["worker-1"]
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        in_flight = {i for i, s in study_states(place.factory, ids).items() if s.status == "processing"}
        assert count_by_status(place.factory, ids).get("done", 0) < len(ids), "the kill came after the batch"

        wait_until(lambda: all_finished(place.factory, ids), FINISH_TIMEOUT_S, interval_s=1.0,
                   describe=lambda: place.describe(ids))
        states = assert_done_exactly_once(place.factory, ids)
        # The study the dead machine held was diagnosed again by the other one.
        assert any(states[i].attempts >= 2 for i in in_flight), place.describe(ids)
        _check_served(place, ids, payloads, every_layer=False)
        _check_nothing_shared(place, len(ids))


def test_object_store_down_mid_batch(tmp_path: Path, postgres_url: str, redis_url: str, prepared_bundle: Path,
                                     kermany_dir: Path) -> None:
    payloads = kermany_payloads(kermany_dir, 240)[200:]  # others than the 200 above
    with seaweed_server() as s3, site(tmp_path, postgres_url, redis_url, prepared_bundle, s3,
                                      s3.make_bucket("outage"), workers=1) as place:
        ids = _upload(place, payloads)
        wait_until(lambda: count_by_status(place.factory, ids).get("done", 0) >= 5, FINISH_TIMEOUT_S,
                   interval_s=0.05, describe=lambda: place.describe(ids))
        s3.stop()  # SIGKILL: a crash
        time.sleep(5)
        assert count_by_status(place.factory, ids).get("done", 0) < len(ids), "the outage came after the batch"
        s3.start()  # the same ports and data

        wait_until(lambda: all_finished(place.factory, ids), FINISH_TIMEOUT_S, interval_s=1.0,
                   describe=lambda: place.describe(ids))
        assert_done_exactly_once(place.factory, ids)
        worker_log = place.machines[1].log.read_text(errors="replace")
        assert f"the object store at {s3.endpoint_url} is unreachable" in worker_log, "no study met the outage"
        _check_served(place, ids, payloads, every_layer=True)
        _check_nothing_shared(place, len(ids))
