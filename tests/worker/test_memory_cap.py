"""worker/memory_cap.py: the threads/solo pools' replacement for `worker_max_memory_per_child`, with
an injected memory reading and shutdown (the real worker case is in tests/test_worker_threads.py)."""

from __future__ import annotations

import logging

import pytest

from shared.config import load_settings
from shared.queue import celery_config
from worker import memory_cap
from worker.memory_cap import MemoryCap, MiB, resident_bytes


class Readings:
    def __init__(self, mb: float) -> None:
        self.mb = mb

    def __call__(self) -> int:
        return int(self.mb * MiB)


def make_cap(limit_mb: int, used_mb: float) -> tuple[MemoryCap, Readings, list[str]]:
    readings, shutdowns = Readings(used_mb), []
    return MemoryCap(limit_mb, rss=readings, shutdown=lambda: shutdowns.append("warm")), readings, shutdowns


def test_under_or_at_the_cap_nothing_happens() -> None:
    cap, readings, shutdowns = make_cap(1000, 400)
    assert cap.after_task() is False
    readings.mb = 1000
    assert cap.after_task() is False and shutdowns == [] and not cap.fired


def test_past_the_cap_it_asks_for_one_warm_shutdown_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    cap, readings, shutdowns = make_cap(1000, 1000.5)
    with caplog.at_level(logging.WARNING, logger="worker.memory_cap"):
        assert cap.after_task() is True
    assert shutdowns == ["warm"]
    [record] = caplog.records
    assert "uses 1000 MB, past XRAY_WORKER_MAX_MEMORY_MB=1000" in record.getMessage()
    readings.mb = 5000
    assert cap.after_task() is False and shutdowns == ["warm"]  # once: the shutdown is under way


def test_the_cap_must_be_positive() -> None:
    for bad in (0, -5):
        with pytest.raises(ValueError, match="must be positive"):
            MemoryCap(bad)


def test_the_real_reading_is_this_process_resident_memory() -> None:
    assert 10 * MiB < resident_bytes() < 64 * 1024 * MiB


def test_check_after_task_is_a_no_op_until_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert memory_cap._active is None  # prefork children and this test process
    memory_cap.check_after_task()
    cap = memory_cap.install(10**6)  # the real cap, with the real shutdown: far from it here
    try:
        assert memory_cap._active is cap and cap.limit_mb == 10**6
        memory_cap.check_after_task()
        assert not cap.fired
    finally:
        memory_cap.uninstall()
    assert memory_cap._active is None


def test_one_setting_sets_both_pools_caps() -> None:
    settings = load_settings({"XRAY_WORKER_MAX_MEMORY_MB": "1500"})
    assert settings.worker_max_memory_mb == 1500
    assert celery_config(settings, "redis://x")["worker_max_memory_per_child"] == 1500 * 1024  # KiB
    assert load_settings({}).worker_max_memory_mb == 3000
