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

from shared.storage import FULL_MESSAGE, READ_ONLY_MESSAGE, LocalStorage, StorageError, StoredFileMissing


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_put_original_is_content_addressed(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
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


def test_put_cam_sheet_replaces_atomically(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    rel = storage.put_cam_sheet(42, b"first")
    assert rel == "heatmaps/00000/42.png"
    inode_before = storage.path(rel).stat().st_ino
    assert storage.put_cam_sheet(42, b"second") == rel
    assert storage.read(rel) == b"second"
    # os.replace put a new file in place (a reader holding the old one keeps a whole file).
    assert storage.path(rel).stat().st_ino != inode_before
    assert [p.name for p in _all_files(tmp_path)] == ["42.png"]
    assert storage.put_cam_sheet(1_234_567, b"x") == "heatmaps/01234/1234567.png"  # 1,000 per folder


def test_put_cam_sheet_is_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file's data, then its folder (the name), then a new folder's parent (the folder)."""
    storage = LocalStorage(tmp_path)
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    storage.put_cam_sheet(9, b"sheet")
    first = list(synced)
    synced.clear()
    storage.put_cam_sheet(10, b"sheet")  # its folder exists now: no parent fsync
    monkeypatch.undo()
    folder = storage.path("heatmaps/00000")
    assert first[1:] == [str(folder), str(folder.parent)] and ".tmp-" in first[0]
    assert synced[1:] == [str(folder)] and ".tmp-" in synced[0]


@pytest.mark.parametrize("study_id", [-1, True, "7", 1.5])
def test_put_cam_sheet_refuses_bad_study_ids(tmp_path: Path, study_id: object) -> None:
    with pytest.raises(StorageError, match="refused the study id"):
        LocalStorage(tmp_path).put_cam_sheet(study_id, b"x")  # type: ignore[arg-type]
    assert _all_files(tmp_path) == []


@pytest.mark.parametrize(
    "relpath",
    ["../etc/passwd", "/etc/passwd", "originals/../../x", "a//b", "./a", "a\\..\\b", "", "a\x00b"],
)
def test_path_refuses_traversal(tmp_path: Path, relpath: str) -> None:
    with pytest.raises(StorageError):
        LocalStorage(tmp_path / "store").path(relpath)


def test_path_refuses_symlink_out_of_root(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    (root / "link").symlink_to(tmp_path)
    storage = LocalStorage(root)
    with pytest.raises(StorageError, match="outside the storage folder"):
        storage.read("link/secret.txt")


def test_put_original_refuses_bad_extension(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        LocalStorage(tmp_path).put_original(b"x", "png/../../x")


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StoredFileMissing, match="missing"):
        LocalStorage(tmp_path).read("originals/ab/abc.png")


def test_root_that_is_a_file_gives_user_message(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where the storage folder should be")
    storage = LocalStorage(blocker / "storage")
    with pytest.raises(StorageError) as caught:
        storage.put_original(b"data", "png")
    assert caught.value.message == READ_ONLY_MESSAGE
    assert blocker.read_text().startswith("a regular file")


def test_read_only_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path / "store")
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & os.O_CREAT and str(path).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    with pytest.raises(StorageError) as caught:
        storage.put_cam_sheet(1, b"png")
    monkeypatch.undo()
    assert str(caught.value) == READ_ONLY_MESSAGE
    assert _all_files(tmp_path) == []


def test_disk_full_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path / "store")
    kept = storage.put_cam_sheet(7, b"the complete earlier version")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError) as caught:
        storage.put_original(b"x" * 100_000, "png")
    with pytest.raises(StorageError):
        storage.put_cam_sheet(7, b"a newer version that does not fit")
    monkeypatch.undo()
    assert caught.value.message == FULL_MESSAGE
    # No temporary files, no partial original; the earlier sheet is intact.
    assert _all_files(tmp_path) == [storage.path(kept)]
    assert storage.read(kept) == b"the complete earlier version"
