"""A study's CAM sheet stored in the background while the worker finishes the study.

`start_sheet_write` encodes the sheet (`shared.gradcam.cam_sheet_png`) on the caller's thread and
hands the durable write (`Storage.put_cam_sheet`: temporary file, fsync, rename, fsync of the folder)
to a writer thread of this process. Meanwhile the caller finds the boxes and runs the record's SQL;
the record's transaction commits only after `PendingSheet.wait()` says the sheet is on disk, so a
study is never `done` without its heatmaps, and a failed write rolls the record back.

Why: a worker process that runs its forward pass on one thread (`xray worker --concurrency 2` on two
cores) would otherwise leave its core idle while the disk syncs, 0.3-2 ms a study (more when two
processes sync at once), against a forward pass of 18-45 ms. The write threads release the GIL
while they wait.

The writer threads belong to the process that made them: a forked child (Celery's prefork pool)
starts its own on first use.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from shared.gradcam import cam_sheet_png
from shared.storage import Storage

WRITER_THREADS = 2  # a threads-pool worker may have several studies between CAMs and commit

_lock = threading.Lock()
_writer: tuple[int, ThreadPoolExecutor] | None = None


def _reset_after_fork() -> None:
    global _lock, _writer
    _lock = threading.Lock()
    _writer = None  # the parent's threads do not exist in the child


os.register_at_fork(after_in_child=_reset_after_fork)


def _executor() -> ThreadPoolExecutor:
    global _writer
    with _lock:
        if _writer is None or _writer[0] != os.getpid():
            _writer = (os.getpid(), ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="cam-sheet-writer"))
        return _writer[1]


class PendingSheet:
    """A sheet being written: its path (known at once), the encode time, and `wait()`."""

    def __init__(self, relpath: str, encode_ms: float, future: Future[float]) -> None:
        self.relpath = relpath
        self.encode_ms = encode_ms
        self._future = future

    def wait(self) -> float:
        """Block until the sheet is durable; the write's milliseconds. Raises what the write raised
        (`shared.storage.StorageError` for a full or read-only disk)."""
        return self._future.result()

    def settle(self) -> None:
        """Block until the write has ended, successfully or not, without raising: nothing of this
        study is left running when its task returns."""
        self._future.exception()


def start_sheet_write(storage: Storage, study_id: int, cams: Mapping[str, np.ndarray]) -> PendingSheet:
    """Encode `cams` ({label: (h, w) map}) as the study's sheet and start writing it durably."""
    start = time.perf_counter()
    sheet = cam_sheet_png(cams)
    encode_ms = (time.perf_counter() - start) * 1000.0
    relpath = storage.cam_sheet_relpath(study_id)
    return PendingSheet(relpath, encode_ms, _executor().submit(_timed_put, storage, study_id, sheet))


def _timed_put(storage: Storage, study_id: int, sheet: bytes) -> float:
    start = time.perf_counter()
    storage.put_cam_sheet(study_id, sheet)
    return (time.perf_counter() - start) * 1000.0
