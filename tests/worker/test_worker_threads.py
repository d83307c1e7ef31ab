"""`xray worker --pool threads --concurrency K`: K studies in flight in one process sharing one model.

Unit tests of worker/watchdog.py (the hard time limit Celery does not enforce in this pool) with an
injected clock and exit function; then real `xray worker --pool threads` processes on the real Redis
(database 11, this test's own queue) and SQLite, with real NIH X-rays: several studies all end done
exactly once, and a study stuck in a blocking storage read makes the watchdog end the process, after
which a new worker diagnoses everything.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import psutil
import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from migrations import upgrade
from shared.config import Settings
from shared.db import make_engine, make_session_factory, session_scope
from shared.models import Study
from shared.queue import enqueue_diagnosis, heartbeat_pattern, make_celery
from shared.storage import Storage
from tests.faults.support import (
    FINISH_TIMEOUT_S,
    all_finished,
    assert_done_exactly_once,
    fault_env,
    insert_studies,
    log_tail,
    study_states,
)
from tests.service_harness import delete_queue_keys, service_env, wait_until, worker_process
from worker import watchdog as watchdog_module
from worker.watchdog import WATCHDOG_EXIT_CODE, Watchdog, check_interval_s, watching

# ------------------------------------------------------------------------------------ the watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Exits:
    """Stands in for os._exit: records the codes (and returns, which os._exit never does)."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.called = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.called.set()


def make_watchdog(limit_s: float = 60.0, interval_s: float | None = None) -> tuple[Watchdog, Clock, Exits]:
    clock, exits = Clock(), Exits()
    return Watchdog(limit_s, interval_s=interval_s, clock=clock, exit=exits), clock, exits


def test_a_study_past_the_limit_ends_the_process_with_a_critical_line(caplog: pytest.LogCaptureFixture) -> None:
    dog, clock, exits = make_watchdog(limit_s=60)
    dog.register(41)
    clock.now += 30
    dog.register(42)
    clock.now += 30  # 41 at exactly the limit: not past it
    assert dog.check() is False and exits.codes == []
    clock.now += 0.5
    with caplog.at_level(logging.CRITICAL, logger="worker.watchdog"):
        assert dog.check() is True
    assert exits.codes == [WATCHDOG_EXIT_CODE] and WATCHDOG_EXIT_CODE != 0
    [record] = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    message = record.getMessage()
    assert "study 41 " in message and "hard time limit of 60 s" in message and "XRAY_TASK_TIME_LIMIT" in message
    assert "other studies in flight: 42" in message


def test_finished_studies_are_forgotten() -> None:
    dog, clock, exits = make_watchdog(limit_s=10)
    token = dog.register(7)
    clock.now += 9
    dog.unregister(token)
    clock.now += 100
    assert dog.check() is False and dog.in_flight() == {}
    with dog.watching(8):
        clock.now += 5
        assert dog.in_flight() == {8: 5.0}
    clock.now += 100
    assert dog.check() is False and exits.codes == []


def test_an_exception_in_the_study_still_unregisters_it() -> None:
    dog, clock, exits = make_watchdog(limit_s=10)
    with pytest.raises(RuntimeError), dog.watching(9):
        raise RuntimeError("the study failed")
    clock.now += 100
    assert dog.check() is False and exits.codes == []


def test_two_deliveries_of_one_study_are_timed_separately() -> None:
    dog, clock, exits = make_watchdog(limit_s=10)
    first = dog.register(5)
    clock.now += 8
    second = dog.register(5)
    dog.unregister(first)  # the first delivery ends; the second is 0 s old, not 8
    clock.now += 8
    assert dog.in_flight() == {5: 8.0} and dog.check() is False
    clock.now += 3
    assert dog.check() is True
    dog.unregister(second)


def test_it_fires_once() -> None:
    dog, clock, exits = make_watchdog(limit_s=1)
    dog.register(1)
    clock.now += 2
    assert dog.check() is True
    assert dog.check() is False
    assert exits.codes == [WATCHDOG_EXIT_CODE]


def test_the_thread_checks_on_its_own_and_stops() -> None:
    dog, clock, exits = make_watchdog(limit_s=30, interval_s=0.01)
    dog.start()
    try:
        dog.register(3)
        time.sleep(0.05)
        assert exits.codes == []
        clock.now += 31
        assert exits.called.wait(5.0)
        assert exits.codes == [WATCHDOG_EXIT_CODE]
    finally:
        dog.stop()
    assert dog._thread is None

    quiet, _, quiet_exits = make_watchdog(limit_s=30, interval_s=0.01)
    quiet.start()
    quiet.stop()
    assert quiet_exits.codes == []


def test_the_check_interval_is_small_relative_to_the_limit() -> None:
    for limit in (1, 3, 20, 60, 600, 3600):
        interval = check_interval_s(limit)
        assert 0.05 <= interval <= 5.0
        assert interval <= max(0.05, limit / 20)
    assert Watchdog(600, clock=Clock(), exit=Exits()).interval_s == 5.0
    with pytest.raises(ValueError):
        Watchdog(0)


def test_watching_is_a_no_op_without_a_process_watchdog_and_times_with_one() -> None:
    assert watchdog_module._active is None  # prefork children, and this test process
    with watching(1):
        pass
    dog = watchdog_module.start_watchdog(3600)  # the real one (os._exit): far from its limit here
    try:
        assert watchdog_module.start_watchdog(10) is dog  # once per process
        with watching(11):
            assert set(dog.in_flight()) == {11}
        assert dog.in_flight() == {}
    finally:
        watchdog_module.stop_watchdog()
    assert watchdog_module._active is None


# ------------------------------------------------------------------ real threads-pool workers

CONCURRENCY = 3


def threads_worker(env: dict[str, str], log_path: Path,
                   concurrency: int = CONCURRENCY) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """`xray worker --pool threads` as a real subprocess in its own process group; always stopped."""
    return worker_process(env, log_path, concurrency, pool="threads")


def nih_payloads(images: list[Path], count: int) -> list[tuple[str, bytes]]:
    return [(path.name, path.read_bytes()) for path in images[:count]]


def two_worker_logs(tmp_path: Path, factory: sessionmaker[Session],
                    ids: list[int]) -> tuple[Path, Path, Callable[[], str]]:
    """Log files for a first and a second worker, and a failure description naming both."""
    first_log, second_log = tmp_path / "worker-1.log", tmp_path / "worker-2.log"

    def describe() -> str:
        return (f"{study_states(factory, ids)}; first worker log:\n{log_tail(first_log)}\n"
                f"second worker log:\n{log_tail(second_log)}")

    return first_log, second_log, describe


@pytest.mark.slow
def test_threads_worker_diagnoses_several_studies_in_flight_exactly_once(
        settings: Settings, redis_url: str, service_bundle: Path, nih_full_images: list[Path],
        tmp_path: Path) -> None:
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    payloads = nih_payloads(nih_full_images, 12)
    ids = insert_studies(factory, Storage(settings.storage_dir), payloads, "threads", ["png"] * len(payloads))
    producer = make_celery(settings, redis_url)
    log_path = tmp_path / "worker.log"

    def describe() -> str:
        return f"{study_states(factory, ids)}; worker log tail:\n{log_tail(log_path)}"

    try:
        # service_env: the production reconcile deadline (900 s), so that nothing is re-sent meanwhile
        # and "exactly once" can mean one claim per study.
        with threads_worker(service_env(settings, redis_url, service_bundle), log_path) as proc:
            for study_id in ids:
                enqueue_diagnosis(producer, study_id)
            wait_until(lambda: all_finished(factory, ids), FINISH_TIMEOUT_S, describe=describe)
            assert proc.poll() is None, describe()
            # one process, one model: no pool children, one heartbeat, from the worker itself
            assert psutil.Process(proc.pid).children(recursive=True) == []
            client = redis.Redis.from_url(redis_url)
            keys = client.scan_iter(match=heartbeat_pattern(settings))
            beats = [json.loads(client.get(key) or b"{}") for key in keys]
            assert [beat.get("pid") for beat in beats] == [proc.pid], beats
        states = assert_done_exactly_once(factory, ids)
        assert {i: s.attempts for i, s in states.items()} == dict.fromkeys(ids, 1), describe()
        with session_scope(factory) as session:
            spans = session.execute(select(Study.id, Study.started_at, Study.finished_at)
                                    .where(Study.id.in_(ids))).all()
    finally:
        delete_queue_keys(redis_url, settings.queue_name)
        engine.dispose()

    log_text = log_path.read_text(errors="replace")
    assert f"pool threads: {CONCURRENCY} studies in flight in this one process sharing one model" in log_text
    # the model is loaded after Celery set up logging, so its line is in the worker's log
    assert re.search(r"\] model \S+ \(.*\) loaded from ", log_text), log_text[-3000:]
    for study_id in ids:
        assert len(re.findall(rf"study {study_id} done:", log_text)) == 1, log_text[-3000:]
    # several studies were in flight at once: some study started before another had finished
    spans = sorted(spans, key=lambda s: s.started_at)
    overlapping = sum(1 for a, b in zip(spans, spans[1:], strict=False) if b.started_at < a.finished_at)
    assert overlapping >= 1, spans


@pytest.mark.slow
def test_watchdog_ends_a_threads_worker_whose_study_hangs_and_the_study_is_retried(
        settings: Settings, redis_url: str, service_bundle: Path, nih_full_images: list[Path],
        tmp_path: Path) -> None:
    """A study whose original is a FIFO with no writer: reading it blocks forever (as a hung network
    mount would), which no thread can interrupt. The watchdog ends the process at the hard limit with
    its exit code and a CRITICAL line; the message was never acknowledged, so once the file is good
    again a new worker gets the study back (attempts 2) and diagnoses it and the others."""
    limit_s = 5
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    storage = Storage(settings.storage_dir)
    payloads = nih_payloads(nih_full_images, 4)
    ids = insert_studies(factory, storage, payloads, "hang", ["png"] * len(payloads))
    stuck = ids[0]
    with session_scope(factory) as session:
        stuck_path = storage.path(session.execute(select(Study.stored_path).where(Study.id == stuck)).scalar_one())
    stuck_path.unlink()
    os.mkfifo(stuck_path)
    env = fault_env(settings, redis_url, service_bundle, XRAY_TASK_TIME_LIMIT=str(limit_s),
                    XRAY_TASK_SOFT_TIME_LIMIT=str(limit_s - 1))
    producer = make_celery(settings, redis_url)
    first_log, second_log, describe = two_worker_logs(tmp_path, factory, ids)

    try:
        with threads_worker(env, first_log) as proc:
            for study_id in ids:
                enqueue_diagnosis(producer, study_id)
            wait_until(lambda: proc.poll() is not None, FINISH_TIMEOUT_S, describe=describe)
            assert proc.returncode == WATCHDOG_EXIT_CODE, describe()
        critical = [line for line in first_log.read_text(errors="replace").splitlines() if "CRITICAL" in line]
        assert any(f"study {stuck} " in line and f"hard time limit of {limit_s} s" in line for line in critical), \
            describe()
        assert study_states(factory, [stuck])[stuck].status == "processing"

        stuck_path.unlink()
        stuck_path.write_bytes(payloads[0][1])  # the storage is healthy again
        with threads_worker(env, second_log) as proc:
            wait_until(lambda: all_finished(factory, ids), FINISH_TIMEOUT_S, describe=describe)
            assert proc.poll() is None, describe()
        states = assert_done_exactly_once(factory, ids)
        assert states[stuck].attempts == 2, describe()
    finally:
        delete_queue_keys(redis_url, settings.queue_name)
        engine.dispose()


@pytest.mark.slow
def test_a_threads_worker_past_its_memory_cap_finishes_its_study_and_restarts_cleanly(
        settings: Settings, redis_url: str, service_bundle: Path, nih_full_images: list[Path],
        tmp_path: Path) -> None:
    """Celery's worker_max_memory_per_child is prefork-only; worker/memory_cap.py stands in for it.
    With a cap every process exceeds (1 MB), the worker finishes the study in flight, takes no more
    and exits 0 on its own; the studies it did not take wait in Redis, and a worker with the normal
    cap diagnoses them. No study is interrupted: every one is done at its first attempt."""
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    payloads = nih_payloads(nih_full_images, 4)
    ids = insert_studies(factory, Storage(settings.storage_dir), payloads, "memcap", ["png"] * len(payloads))
    env = service_env(settings, redis_url, service_bundle)
    producer = make_celery(settings, redis_url)
    first_log, second_log, describe = two_worker_logs(tmp_path, factory, ids)

    try:
        with threads_worker({**env, "XRAY_WORKER_MAX_MEMORY_MB": "1"}, first_log, concurrency=1) as proc:
            for study_id in ids:
                enqueue_diagnosis(producer, study_id)
            wait_until(lambda: proc.poll() is not None, FINISH_TIMEOUT_S, describe=describe)
            assert proc.returncode == 0, describe()
        warnings = [line for line in first_log.read_text(errors="replace").splitlines()
                    if "past XRAY_WORKER_MAX_MEMORY_MB=1:" in line]
        assert len(warnings) == 1, describe()
        states = study_states(factory, ids)
        done_first = [i for i in ids if states[i].status == "done"]
        assert 1 <= len(done_first) < len(ids), describe()
        assert all(states[i].status == "queued" for i in ids if i not in done_first), describe()

        with threads_worker(env, second_log) as proc:
            wait_until(lambda: all_finished(factory, ids), FINISH_TIMEOUT_S, describe=describe)
            assert proc.poll() is None, describe()
        states = assert_done_exactly_once(factory, ids)
        assert {i: s.attempts for i, s in states.items()} == dict.fromkeys(ids, 1), describe()
    finally:
        delete_queue_keys(redis_url, settings.queue_name)
        engine.dispose()
