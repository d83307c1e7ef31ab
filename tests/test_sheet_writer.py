"""worker/sheet_writer.py: the background durable write of a study's CAM sheet."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from shared.gradcam import cam_from_png
from shared.storage import READ_ONLY_MESSAGE, Storage, StorageError
from worker.sheet_writer import start_sheet_write

MAPS = {"Mass": np.eye(7, dtype=np.float32), "Nodule": np.full((7, 7), 0.5, dtype=np.float32)}


def test_sheet_is_stored_and_readable_after_wait(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    pending = start_sheet_write(storage, 12, MAPS)
    assert pending.relpath == "heatmaps/00000/12.png" and pending.encode_ms >= 0.0
    assert pending.wait() >= 0.0
    stored = storage.read(pending.relpath)
    assert np.array_equal(cam_from_png(stored, "Mass"), MAPS["Mass"])
    assert np.allclose(cam_from_png(stored, "Nodule"), 0.5, atol=1e-5)


def test_write_error_comes_out_of_wait_and_settle_swallows_it(tmp_path: Path) -> None:
    (tmp_path / "heatmaps").write_text("a file where the heatmaps folder should be")
    pending = start_sheet_write(Storage(tmp_path), 3, MAPS)
    pending.settle()  # does not raise
    with pytest.raises(StorageError) as caught:
        pending.wait()
    assert caught.value.message == READ_ONLY_MESSAGE


def _write_in_child(root: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    pending = start_sheet_write(Storage(root), 99, MAPS)
    queue.put(pending.wait())


def test_forked_child_gets_its_own_writer_threads(tmp_path: Path) -> None:
    """Celery's prefork children are forked after the parent may have written: the parent's writer
    threads do not exist in the child, so the child must start its own rather than wait forever."""
    start_sheet_write(Storage(tmp_path), 1, MAPS).wait()  # the parent's writer exists now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_write_in_child, args=(str(tmp_path), queue))
    child.start()
    child.join(30)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child's sheet write never finished")
    assert child.exitcode == 0
    assert queue.get(timeout=5) >= 0.0
    assert (tmp_path / "heatmaps/00000/99.png").is_file()
