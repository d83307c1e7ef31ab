"""worker.huge_pages: `xray worker` runs with glibc's malloc backed by transparent huge pages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.huge_pages import TUNABLE, wanted, with_huge_pages

PROJECT = Path(__file__).resolve().parent.parent
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def test_the_tunable_is_added_to_what_is_there() -> None:
    assert with_huge_pages({})["GLIBC_TUNABLES"] == f"{TUNABLE}=1"
    env = with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "PATH": "/bin"})
    assert env == {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{TUNABLE}=1", "PATH": "/bin"}


def test_an_operators_own_value_is_kept() -> None:
    env = {"GLIBC_TUNABLES": f"{TUNABLE}=0"}
    assert with_huge_pages(env) == env


@pytest.mark.parametrize(("value", "expected"), [(None, True), ("1", True), ("0", False), ("off", False),
                                                 ("False", False), ("yes", True)])
def test_the_setting_turns_it_off(value: str | None, expected: bool) -> None:
    assert wanted({} if value is None else {"XRAY_WORKER_HUGE_PAGES": value}) is expected


REPORT = """
from worker.huge_pages import reexec_with_huge_pages
reexec_with_huge_pages()
import ctypes, os
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(64 << 20)  # plain malloc, as OpenVINO's allocations (NumPy madvises on its own)
ctypes.memset(block, 1, 64 << 20)
huge = sum(int(line.split()[1]) for line in open("/proc/self/smaps") if line.startswith("AnonHugePages:"))
print(os.environ.get("GLIBC_TUNABLES"), huge, os.getpid())
"""


def _report(**env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XRAY_WORKER_HUGE_PAGES")}
    child = subprocess.Popen([sys.executable, "-c", REPORT], cwd=PROJECT, env={**clean, **env},
                             stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    tunables, huge_kb, pid = out.split()
    assert int(pid) == child.pid  # the same process, run again: a supervisor still sees its child
    return tunables, int(huge_kb)


def test_the_process_runs_itself_again_with_the_tunable_and_gets_huge_pages() -> None:
    tunables, huge_kb = _report()
    assert tunables == f"{TUNABLE}=1"
    if not THP_MODE.is_file() or "[never]" in THP_MODE.read_text():
        pytest.skip("transparent huge pages are off in this kernel")
    assert huge_kb >= 2048


def test_without_the_setting_nothing_is_run_again() -> None:
    tunables, huge_kb = _report(XRAY_WORKER_HUGE_PAGES="0")
    assert tunables == "None"
    if THP_MODE.is_file() and "[madvise]" in THP_MODE.read_text():
        assert huge_kb < 2048  # so the test above shows the tunable's doing


def test_bench_probes_run_as_the_worker_unless_the_layout_asks_for_small_pages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.worker import probe_env

    monkeypatch.setenv("GLIBC_TUNABLES", f"glibc.malloc.arena_max=2:{TUNABLE}=1")
    assert probe_env("2x1")["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}=1"
    assert probe_env("2x1-4k")["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}=0"
