"""A real `xray worker` (prefork, on the real Redis, its own queue) with XRAY_WORKER_METRICS_PORT and
XRAY_LOG_FORMAT=json: its main process serves the pool processes' metrics, and they move as studies
end (done, failed by reason, retried); its log is one JSON object per line, with the study's ids."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from contextlib import suppress
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from migrations import upgrade
from shared.config import PROJECT_ROOT, Settings
from shared.db import make_engine, make_session_factory, session_scope
from shared.models import Batch, Study
from shared.queue import enqueue_diagnosis, make_celery
from shared.runtime import resolve_auto
from shared.storage import LocalStorage
from tests.worker.test_worker_celery import FINISH_TIMEOUT_S, _delete_test_keys, _env, _wait

pytestmark = pytest.mark.slow

# absl's lines (I1204 21:40:01.123 123 file.cc:12] ...), its first warning, and TensorFlow's CPU notice.
NATIVE = re.compile(r"^([IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] |WARNING: All log messages before absl|To enable the "
                    r"following instructions)")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _model_info(samples: Samples) -> list[dict[str, str]]:
    return [dict(labels) for (name, labels), value in samples.items() if name == "xray_worker_model_info" and value]


def test_worker_metrics_and_json_logs(settings: Settings, redis_url: str, service_bundle: Path,
                                      nih_full_images: list[Path], tmp_path: Path) -> None:
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    storage = LocalStorage(settings.storage_dir)
    port = _free_port()
    env = _env(settings, redis_url, service_bundle)
    env.update({"XRAY_WORKER_METRICS_PORT": str(port), "XRAY_WORKER_METRICS_ADDRESS": "127.0.0.1",
                "XRAY_LOG_FORMAT": "json", "XRAY_MAX_ATTEMPTS": "2"})
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    stale = settings.var_dir / "metrics" / f"worker-{port}"
    stale.mkdir(parents=True)
    (stale / "counter_1.db").write_bytes(b"left by an earlier run")  # must be cleared, not read
    client = redis.Redis.from_url(redis_url)
    producer = make_celery(settings, redis_url)
    out_path, err_path = tmp_path / "worker.out", tmp_path / "worker.err"

    def add(name: str, data: bytes, stored_path: str | None = None) -> int:
        with session_scope(factory) as session:
            study = Study(batch=Batch(label="metrics test"), original_filename=name,
                          sha256=hashlib.sha256(data).hexdigest(), format="png", size_bytes=len(data),
                          stored_path=stored_path or storage.put_original(data, "png"))
            session.add(study)
            session.flush()
            return study.id

    def status(study_id: int) -> str:
        with session_scope(factory) as session:
            return str(session.scalar(select(Study.status).where(Study.id == study_id)))

    def describe() -> str:
        return f"worker log tail:\n{err_path.read_text(errors='replace')[-3000:]}"

    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "worker", "--concurrency", "1"], env=env,
                                cwd=PROJECT_ROOT, stdout=out, stderr=err, start_new_session=True)
    try:
        def ready() -> bool:
            with suppress(OSError):
                return bool(_model_info(_scrape(port)))
            return False

        _wait(ready, FINISH_TIMEOUT_S, describe)
        before = _scrape(port)
        assert _value(before, "xray_worker_studies_done_total") == 0  # the stale file was cleared

        good = add("Doe_John.png", nih_full_images[0].read_bytes())
        enqueue_diagnosis(producer, good)
        _wait(lambda: status(good) == "done", FINISH_TIMEOUT_S, describe)
        done = _scrape(port)

        broken = add("broken.png", b"not an image\n" * 50)
        # A stored path the storage refuses: a storage error, transient, so retried once (after 5 s), then
        # failed on the last attempt.
        outside = add("outside.png", b"elsewhere", stored_path="../outside.png")
        for study_id in (broken, outside):
            enqueue_diagnosis(producer, study_id)
        _wait(lambda: status(broken) == "failed" and status(outside) == "failed", FINISH_TIMEOUT_S, describe)
        after = _scrape(port)

        def moved(a: Samples, b: Samples, name: str, **labels: str) -> float:
            return _value(b, name, **labels) - _value(a, name, **labels)

        assert moved(before, done, "xray_worker_studies_done_total") == 1
        for stage in ("read", "decode", "preprocess", "forward", "cam", "write", "record"):
            assert moved(before, done, "xray_worker_stage_duration_seconds_count", stage=stage) == 1, stage
            assert moved(before, done, "xray_worker_stage_duration_seconds_sum", stage=stage) > 0, stage
        assert moved(done, after, "xray_worker_studies_failed_total", reason="invalid_image") == 1
        assert moved(done, after, "xray_worker_studies_failed_total", reason="transient") == 1
        assert moved(done, after, "xray_worker_retries_total", cause="storage") == 1
        assert moved(done, after, "xray_worker_studies_done_total") == 0
        with session_scope(factory) as session:
            version = session.scalar(select(Study.model_version).where(Study.id == good))
        assert _model_info(after) == [{"version": version, "runtime": "-".join(resolve_auto("auto", "auto"))}]

        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, describe()
    finally:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        _delete_test_keys(client, settings.queue_name)
        client.close()
        engine.dispose()

    # The log: one JSON object per line, the study's ids on the lines about it, no file name. TensorFlow's
    # C++ core writes a few lines of its own straight to stderr, past Python's logging: those are let be.
    lines = [line for line in err_path.read_text().splitlines() if line.strip()]
    assert [line for line in lines if not line.startswith("{") and not NATIVE.match(line)] == []
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert all({"time", "level", "logger", "process", "message"} <= set(entry) for entry in entries)
    about_good = [e for e in entries if e.get("study_id") == good]
    assert any("done" in e["message"] for e in about_good), about_good
    assert all(e.get("batch_id") is not None for e in about_good if e["logger"] == "worker.processing")
    assert "Doe_John" not in err_path.read_text()
