"""Background durable writes of CAM sheets: shared._durable (native thread), Storage.begin_cam_sheet
and its fallback, worker/sheet_writer.py."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import shared.storage
from shared.gradcam import cam_from_png
from shared.storage import READ_ONLY_MESSAGE, Storage, StorageError
from worker.sheet_writer import start_sheet_write

MAPS = {"Mass": np.eye(7, dtype=np.float32), "Nodule": np.full((7, 7), 0.5, dtype=np.float32)}

native = pytest.mark.skipif(shared.storage._durable is None, reason="shared._durable is not built (no C compiler?)")


@pytest.fixture(params=["native", "fallback"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "native" and shared.storage._durable is None:
        pytest.skip("shared._durable is not built (no C compiler?)")
    if request.param == "fallback":
        monkeypatch.setattr(shared.storage, "_durable", None)
    return str(request.param)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_sheet_is_stored_and_readable_after_wait(tmp_path: Path, implementation: str) -> None:
    storage = Storage(tmp_path)
    pending = start_sheet_write(storage, 12, MAPS)
    assert pending.relpath == "heatmaps/00000/12.png" and pending.encode_ms >= 0.0
    assert pending.wait() >= 0.0
    stored = storage.read(pending.relpath)
    assert np.array_equal(cam_from_png(stored, "Mass"), MAPS["Mass"])
    assert np.allclose(cam_from_png(stored, "Nodule"), 0.5, atol=1e-5)
    # Replacing it gives a new file in place; no temporary file is left.
    inode = storage.path(pending.relpath).stat().st_ino
    storage.begin_cam_sheet(12, b"second").wait()
    assert storage.read(pending.relpath) == b"second"
    assert storage.path(pending.relpath).stat().st_ino != inode
    assert _files(tmp_path) == ["heatmaps/00000/12.png"]


def test_write_error_comes_out_of_wait_and_settle_swallows_it(tmp_path: Path, implementation: str) -> None:
    (tmp_path / "heatmaps").mkdir()
    (tmp_path / "heatmaps" / "00000").write_text("a file where the sheets' folder should be")
    with pytest.raises(StorageError) as caught:
        pending = Storage(tmp_path).begin_cam_sheet(3, b"sheet")
        pending.settle()  # does not raise
        pending.wait()
    assert caught.value.message == READ_ONLY_MESSAGE


@native
def test_native_write_fails_cleanly_on_a_read_only_folder(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    storage.put_cam_sheet(5, b"the earlier sheet")
    folder = storage.path("heatmaps/00000")
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user whom file modes do not stop (root)")
        with pytest.raises(StorageError) as caught:
            storage.begin_cam_sheet(5, b"a newer sheet").wait()
    finally:
        folder.chmod(0o700)
    assert caught.value.message == READ_ONLY_MESSAGE
    assert storage.read("heatmaps/00000/5.png") == b"the earlier sheet"


def test_failed_rename_leaves_no_temporary_file(tmp_path: Path, implementation: str) -> None:
    storage = Storage(tmp_path)
    storage.put_cam_sheet(1, b"folder made")
    (tmp_path / "heatmaps/00000/4.png").mkdir()  # a folder where the sheet should go
    (tmp_path / "heatmaps/00000/4.png/keep").write_text("x")
    with pytest.raises(StorageError) as caught:
        storage.begin_cam_sheet(4, b"sheet").wait()
    assert caught.value.message.startswith("the server could not store the file")
    assert _files(tmp_path) == ["heatmaps/00000/1.png", "heatmaps/00000/4.png/keep"]


@native
def test_native_write_runs_while_the_caller_holds_the_gil(tmp_path: Path) -> None:
    """The point of the native thread: the write finishes while this thread keeps running Python
    (a Python writer thread would wait for the GIL until the switch interval)."""
    storage = Storage(tmp_path)
    storage.put_cam_sheet(1, b"folder made")
    old = threading.Event()
    pending = storage.begin_cam_sheet(2, b"x" * 4096)
    deadline = time.perf_counter() + 5.0
    while not storage.path("heatmaps/00000/2.png").exists() and time.perf_counter() < deadline:
        old.is_set()  # pure Python, never blocks, never releases the GIL on purpose
    assert storage.path("heatmaps/00000/2.png").exists()
    assert pending.wait() > 0.0


@native
def test_native_module_refuses_paths_for_names(tmp_path: Path) -> None:
    from shared import _durable

    for temp, final in ((".tmp-x", "../escape.png"), ("a/b", "c.png"), ("", "c.png"), (".tmp-x", "..")):
        with pytest.raises(ValueError, match="plain file names"):
            _durable.start(str(tmp_path), temp, final, b"x")
    with pytest.raises(OSError) as caught:
        _durable.start(str(tmp_path / "missing"), ".tmp-x", "c.png", b"x").wait()
    assert caught.value.filename == str(tmp_path / "missing")
    assert _files(tmp_path) == []


def test_fallback_writes_before_returning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared.storage, "_durable", None)
    pending = Storage(tmp_path).begin_cam_sheet(8, b"sheet")
    assert (tmp_path / "heatmaps/00000/8.png").read_bytes() == b"sheet"
    assert pending.wait() >= 0.0
