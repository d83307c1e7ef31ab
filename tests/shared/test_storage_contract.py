"""The storage interface's contract, run against every backend: a local folder and a real S3 server
(SeaweedFS). What the web and the workers rely on must hold the same for both."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import pytest

from shared.storage import InvalidStoredPath, LocalStorage, Storage, StorageError, StoredFileMissing
from tests.conftest import S3Place


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    place: S3Place = request.getfixturevalue("s3_place")
    return place.storage()


def test_original_is_content_addressed_and_stored_once(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"\xff\xd8\xff a JPEG, say" * 1000
    digest = hashlib.sha256(data).hexdigest()
    rel = storage.put_original(data, "JPG")
    assert rel == f"originals/{digest[:2]}/{digest}.jpg"  # the same path for every backend
    assert storage.read(rel) == data
    assert storage.size(rel) == len(data) and storage.exists(rel)
    writes: list[str] = []
    real_write = storage.write
    monkeypatch.setattr(storage, "write", lambda relpath, body: (writes.append(relpath), real_write(relpath, body)))
    assert storage.put_original(data, ".jpg") == rel
    assert writes == []  # the same bytes are already there: nothing is written again
    other = storage.put_original(data + b"!", "jpg")
    assert writes == [other] and storage.read(other) == data + b"!"


def test_study_files_replace_the_earlier_version(storage: Storage) -> None:
    rel = storage.put_cam_sheet(42, b"first")
    assert rel == "heatmaps/00000/42.png"
    assert storage.put_cam_sheet(42, b"second") == rel
    assert storage.read(rel) == b"second"
    assert storage.put_display(1_234_567, b"picture") == "display/01234/1234567.png"
    assert storage.read("display/01234/1234567.png") == b"picture"


def test_open_streams_the_file_with_its_size(storage: Storage) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    rel = storage.put_cam_sheet(7, data)
    stored = storage.open(rel)
    try:
        assert stored.size == len(data)
        assert isinstance(stored.modified, datetime)
        assert stored.stream.read(10) == data[:10]
        assert stored.stream.read() == data[10:]
    finally:
        stored.stream.close()


def test_missing_file(storage: Storage) -> None:
    rel = "originals/ab/" + "ab" * 32 + ".png"
    with pytest.raises(StoredFileMissing, match="missing"):
        storage.read(rel)
    with pytest.raises(StoredFileMissing):
        storage.open(rel)
    assert storage.size(rel) is None and not storage.exists(rel)


def test_delete(storage: Storage) -> None:
    rel = storage.put_cam_sheet(3, b"x")
    storage.delete(rel)
    assert not storage.exists(rel)
    storage.delete(rel)  # already gone: not an error


@pytest.mark.parametrize("relpath", ["../etc/passwd", "/etc/passwd", "originals/../../x", "a//b", "./a",
                                     "a\\..\\b", "", "a\x00b"])
def test_paths_outside_the_storage_are_refused(storage: Storage, relpath: str) -> None:
    for attempt in (storage.read, storage.open, storage.size, storage.delete, lambda r: storage.write(r, b"x")):
        with pytest.raises(InvalidStoredPath):
            attempt(relpath)


@pytest.mark.parametrize("study_id", [-1, True, "7", 1.5])
def test_bad_study_ids_are_refused(storage: Storage, study_id: object) -> None:
    with pytest.raises(StorageError, match="refused the study id"):
        storage.put_cam_sheet(study_id, b"x")  # type: ignore[arg-type]


def test_bad_extension_is_refused(storage: Storage) -> None:
    with pytest.raises(StorageError, match="extension"):
        storage.put_original(b"x", "png/../../x")


def test_description_names_the_place(storage: Storage) -> None:
    assert "folder" in storage.description or "s3://" in storage.description
