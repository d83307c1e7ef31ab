"""A study's CAM sheet stored in the background while the worker finishes the study.

`start_sheet_write` encodes the sheet (`shared.gradcam.cam_sheet_png`) and starts its durable write
(`Storage.begin_cam_sheet`: temporary file, rename, one fsync, fsync of the folder, on a native
thread without the GIL). Meanwhile the worker finds the boxes and prepares the record; it records the study
only after `PendingSheet.wait()` says the sheet is on disk, so a study is never `done` without its
heatmaps, and a failed write leaves the study to a retry.

Why: a worker process that runs its forward pass on one thread (`xray worker --concurrency 2` on two
cores) would otherwise leave its core idle while the disk syncs, 0.3-2 ms a study (more when two
processes sync at once), against a forward pass of 18-45 ms. A Python writer thread hid little of
it: it needs the GIL between system calls, which the busy main thread gives up only every 5 ms.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from shared.gradcam import cam_sheet_png
from shared.storage import PendingWrite, Storage


class PendingSheet:
    """A study's sheet being written: its path (known at once), the encode time, `wait()`."""

    def __init__(self, write: PendingWrite, encode_ms: float) -> None:
        self.relpath = write.relpath
        self.encode_ms = encode_ms
        self._write = write

    def wait(self) -> float:
        """Block until the sheet is durable; the write's milliseconds. StorageError if it failed."""
        return self._write.wait()

    def settle(self) -> None:
        """Block until the write has ended, without raising: nothing of this study is left
        running when its task returns."""
        self._write.settle()


def start_sheet_write(storage: Storage, study_id: int, cams: Mapping[str, np.ndarray]) -> PendingSheet:
    """Encode `cams` ({label: (h, w) map}) as the study's sheet and start writing it durably."""
    start = time.perf_counter()
    sheet = cam_sheet_png(cams)
    encode_ms = (time.perf_counter() - start) * 1000.0
    return PendingSheet(storage.begin_cam_sheet(study_id, sheet), encode_ms)
