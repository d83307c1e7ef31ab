"""shared.storage: content addressing, atomic writes, refused paths, user-facing errors.

Tests run as root, for whom permission bits do not stop writes, so a read-only folder or a full
disk cannot be made real here. They are simulated in two honest ways: a storage root whose path
runs through a regular file (the kernel itself refuses: ENOTDIR/EEXIST), and `os` functions patched
to fail with the errno the kernel would give (EROFS from open, ENOSPC from fsync: the moment a full
disk usually shows up with delayed allocation).
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from shared.storage import FULL_MESSAGE, READ_ONLY_MESSAGE, Storage, StorageError, StoredFileMissing


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_put_original_is_content_addressed(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "store")
    data = b"\x89PNG not really, but bytes" * 100
    digest = hashlib.sha256(data).hexdigest()
    rel = storage.put_original(data, "PNG")
    assert rel == f"originals/{digest[:2]}/{digest}.png"
    assert storage.read(rel) == data
    assert storage.path(rel) == (tmp_path / "store" / rel).resolve()
    assert storage.put_original(data, ".png") == rel  # same bytes, same file, no second copy
    assert _all_files(tmp_path / "store") == [storage.path(rel)]
    other = storage.put_original(data + b"!", "png")
    assert other != rel and storage.read(other) == data + b"!"


def test_put_heatmap_replaces_atomically(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    rel = storage.put_heatmap(42, "Pleural_Thickening", b"first")
    assert rel == "heatmaps/42/Pleural_Thickening.png"
    inode_before = storage.path(rel).stat().st_ino
    assert storage.put_heatmap(42, "Pleural_Thickening", b"second") == rel
    assert storage.read(rel) == b"second"
    # os.replace put a new file in place (a reader holding the old one keeps a whole file).
    assert storage.path(rel).stat().st_ino != inode_before
    assert [p.name for p in _all_files(tmp_path)] == ["Pleural_Thickening.png"]


@pytest.mark.parametrize(
    "relpath",
    ["../etc/passwd", "/etc/passwd", "originals/../../x", "a//b", "./a", "a\\..\\b", "", "a\x00b"],
)
def test_path_refuses_traversal(tmp_path: Path, relpath: str) -> None:
    with pytest.raises(StorageError):
        Storage(tmp_path / "store").path(relpath)


def test_path_refuses_symlink_out_of_root(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    (root / "link").symlink_to(tmp_path)
    storage = Storage(root)
    with pytest.raises(StorageError, match="outside the storage folder"):
        storage.read("link/secret.txt")


@pytest.mark.parametrize("label", ["../x", "a/b", "", ".hidden", "x" * 65])
def test_put_heatmap_refuses_bad_labels(tmp_path: Path, label: str) -> None:
    with pytest.raises(StorageError):
        Storage(tmp_path).put_heatmap(1, label, b"x")
    assert _all_files(tmp_path) == []


def test_put_original_refuses_bad_extension(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        Storage(tmp_path).put_original(b"x", "png/../../x")


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StoredFileMissing, match="missing"):
        Storage(tmp_path).read("originals/ab/abc.png")


def test_root_that_is_a_file_gives_user_message(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where the storage folder should be")
    storage = Storage(blocker / "storage")
    with pytest.raises(StorageError) as caught:
        storage.put_original(b"data", "png")
    assert caught.value.message == READ_ONLY_MESSAGE
    assert blocker.read_text().startswith("a regular file")


def test_read_only_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = Storage(tmp_path / "store")
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & os.O_CREAT and str(path).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    with pytest.raises(StorageError) as caught:
        storage.put_heatmap(1, "Mass", b"png")
    monkeypatch.undo()
    assert str(caught.value) == READ_ONLY_MESSAGE
    assert _all_files(tmp_path) == []


def test_disk_full_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = Storage(tmp_path / "store")
    kept = storage.put_heatmap(7, "Edema", b"the complete earlier version")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError) as caught:
        storage.put_original(b"x" * 100_000, "png")
    with pytest.raises(StorageError):
        storage.put_heatmap(7, "Edema", b"a newer version that does not fit")
    monkeypatch.undo()
    assert caught.value.message == FULL_MESSAGE
    # No temporary files, no partial original; the earlier heatmap is intact.
    assert _all_files(tmp_path) == [storage.path(kept)]
    assert storage.read(kept) == b"the complete earlier version"


def test_put_heatmaps_writes_a_study_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = Storage(tmp_path)
    files = {f"Label_{i}": bytes([i]) * (100 + i) for i in range(14)}
    synced: list[bool] = []  # True for a folder, False for a file
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    paths = storage.put_heatmaps(9, files)
    monkeypatch.undo()
    assert paths == {label: f"heatmaps/9/{label}.png" for label in files}
    for label, data in files.items():
        assert storage.read(paths[label]) == data
    assert _all_files(tmp_path) == sorted(storage.path(p) for p in paths.values())
    # Every file's data, then the study folder once (and its parent, the folder being new).
    assert synced.count(False) == 14 and synced.count(True) == 2 and synced[:14] == [False] * 14


def test_put_heatmaps_error_midway_leaves_nothing_half_written(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    storage = Storage(tmp_path)
    kept = storage.put_heatmaps(3, {"Edema": b"earlier Edema", "Mass": b"earlier Mass"})
    real_write = os.write
    calls = {"n": 0}

    def full_on_third(fd: int, data: bytes | memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_on_third)
    with pytest.raises(StorageError) as caught:
        storage.put_heatmaps(3, {"Edema": b"new Edema", "Mass": b"new Mass", "Hernia": b"new Hernia"})
    monkeypatch.undo()
    assert caught.value.message == FULL_MESSAGE
    # The two temporary files already written are gone; no stored file changed, none was added.
    assert _all_files(tmp_path) == sorted(storage.path(p) for p in kept.values())
    assert storage.read(kept["Edema"]) == b"earlier Edema" and storage.read(kept["Mass"]) == b"earlier Mass"


def test_put_heatmaps_refuses_a_bad_label_before_writing_any(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="refused the heatmap label"):
        Storage(tmp_path).put_heatmaps(1, {"Mass": b"x", "../escape": b"y"})
    assert _all_files(tmp_path) == []
