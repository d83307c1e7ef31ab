"""Where originals and heatmaps live: one interface, `Storage`, and two backends.

`LocalStorage` keeps files in a folder (STORAGE_DIR, the default); `S3Storage` (shared/storage_s3.py)
keeps them in any S3-compatible object store (STORAGE_URL=s3://bucket/prefix). `make_storage(settings)`
picks one. The database holds only the relative paths this module returns ("originals/ab/<sha256>.jpg",
"heatmaps/00012/12345.png"): the same for every backend, so a study's row never names a backend.

Every write is atomic for readers: a reader sees either nothing or the whole file, and a failed write
leaves nothing behind (a local file is written to a temporary name, fsynced and renamed; an S3 PUT is
atomic by itself). Originals are content-addressed by sha256, so storing the same bytes again is free.
Errors are `StorageError`s with a message a person can act on; `StorageUnavailable` means "the store
cannot be reached now, try again", `StoredFileMissing` that nothing is stored under a valid path.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from shared.config import Settings

log = logging.getLogger(__name__)

_EXTENSION = re.compile(r"^[a-z0-9]{1,8}$")
_TEMP_PREFIX = ".tmp-"

FULL_MESSAGE = "the server's storage is full; the file was not stored"
READ_ONLY_MESSAGE = "the server cannot write to its storage folder"


class StorageError(Exception):
    """A storage problem, with a message a person can act on (internals go to the log)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StoredFileMissing(StorageError):
    """The path is valid but no file is stored there."""


class InvalidStoredPath(StorageError):
    """A path that is not a stored file's path (empty, absolute, `..`, outside the storage)."""


class StorageUnavailable(StorageError):
    """The storage cannot be reached now (network, server down or overloaded): try again later."""


@dataclass
class StoredStream:
    """A stored file opened for streaming (the web serves images this way); close `stream` when done."""

    stream: BinaryIO
    size: int
    modified: datetime | None = None


def check_relpath(relpath: str) -> PurePosixPath:
    """`relpath` as a relative POSIX path inside the storage, or InvalidStoredPath."""
    if not relpath or "\x00" in relpath or "\\" in relpath:
        raise InvalidStoredPath("refused an invalid stored-file path")
    pure = PurePosixPath(relpath)
    if pure.is_absolute() or any(part in ("..", ".", "") for part in relpath.split("/")):
        raise InvalidStoredPath("refused a stored-file path outside the storage folder")
    return pure


class Storage(ABC):
    """The storage interface: what the web, the workers and the command line use, for any backend."""

    # -- paths (the same for every backend) ---------------------------------------------------------

    @staticmethod
    def original_relpath(sha256: str, extension: str) -> str:
        return f"originals/{sha256[:2]}/{sha256}.{extension}"

    @staticmethod
    def cam_sheet_relpath(study_id: int) -> str:
        return f"heatmaps/{study_id // 1000:05d}/{study_id}.png"

    @staticmethod
    def display_relpath(study_id: int) -> str:
        return f"display/{study_id // 1000:05d}/{study_id}.png"

    @property
    @abstractmethod
    def description(self) -> str:
        """Where the files are, in words for an operator (never a secret)."""

    # -- writing -----------------------------------------------------------------------------------

    def put_original(self, data: bytes, extension: str) -> str:
        """Store an uploaded file under its sha256; storing the same bytes again is free."""
        extension = extension.lower().lstrip(".")
        if not _EXTENSION.match(extension):
            raise StorageError(f"refused the file extension {extension!r}")
        relpath = self.original_relpath(hashlib.sha256(data).hexdigest(), extension)
        if self.size(relpath) == len(data):
            return relpath  # same content, same name: already stored
        self.write(relpath, data)
        return relpath

    def put_cam_sheet(self, study_id: int, data: bytes) -> str:
        """Store (or replace) a study's CAM sheet (`shared.gradcam.cam_sheet_png`: every finding's map
        in one file); returns its path."""
        return self._put_study_file(self.cam_sheet_relpath, study_id, data)

    def put_display(self, study_id: int, data: bytes) -> str:
        """Store (or replace) a study's display picture (`shared.display.display_png`); returns its path."""
        return self._put_study_file(self.display_relpath, study_id, data)

    def _put_study_file(self, relpath_of: Callable[[int], str], study_id: int, data: bytes) -> str:
        if isinstance(study_id, bool) or not isinstance(study_id, int) or study_id < 0:
            raise StorageError(f"refused the study id {study_id!r}")
        relpath = relpath_of(study_id)
        self.write(relpath, data)
        return relpath

    @abstractmethod
    def write(self, relpath: str, data: bytes) -> None:
        """Store `data` at `relpath`, replacing what was there, atomically for readers."""

    @abstractmethod
    def delete(self, relpath: str) -> None:
        """Remove a stored file; removing a missing one is not an error."""

    # -- reading -----------------------------------------------------------------------------------

    @abstractmethod
    def read(self, relpath: str) -> bytes:
        """The whole stored file (StoredFileMissing when there is none)."""

    @abstractmethod
    def open(self, relpath: str) -> StoredStream:
        """The stored file opened for streaming, with its size (StoredFileMissing when there is none)."""

    @abstractmethod
    def size(self, relpath: str) -> int | None:
        """The stored file's size in bytes, or None when there is none."""

    def exists(self, relpath: str) -> bool:
        return self.size(relpath) is not None


def _write_error(exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StorageError(FULL_MESSAGE)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST):
        return StorageError(READ_ONLY_MESSAGE)
    return StorageError(f"the server could not store the file ({exc.strerror or exc})")


def _read_error(relpath: str, path: Path, exc: OSError) -> StorageError:
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return StoredFileMissing(f"the stored file {relpath} is missing from the server's storage")
    log.error("storage: cannot read %s: %s", path, exc)
    return StorageError(f"the server could not read a stored file ({exc.strerror or exc})")


class LocalStorage(Storage):
    """Files under a folder. A write goes to a temporary file in the same folder, is fsynced, renamed
    over the target (`os.replace`) and the folder fsynced; a new folder's parent is fsynced too, so the
    folder itself survives a crash. Study files are grouped 1,000 studies to a folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    @property
    def description(self) -> str:
        return f"the folder {self.root}"

    def path(self, relpath: str) -> Path:
        """The absolute path of a stored file; refuses anything that would leave the storage folder."""
        pure = check_relpath(relpath)
        candidate = (self.root / pure).resolve()  # follows symbolic links
        if candidate != self.root and self.root not in candidate.parents:
            raise InvalidStoredPath("refused a stored-file path outside the storage folder")
        return candidate

    # -- writing -----------------------------------------------------------------------------------

    def write(self, relpath: str, data: bytes) -> None:
        target = self.path(relpath)
        new_folder = not target.parent.is_dir()
        temp = self._write_temp(target, data)
        try:
            os.replace(temp, target)
        except OSError as exc:
            log.error("storage: cannot write %s: %s", target, exc)
            _remove_quietly(temp)
            raise _write_error(exc) from exc
        except BaseException:
            _remove_quietly(temp)
            raise
        _fsync_dir(target.parent)
        if new_folder:
            _fsync_dir(target.parent.parent)

    @staticmethod
    def _write_temp(target: Path, data: bytes) -> Path:
        """`data` in a new, fsynced temporary file beside `target`; nothing is left behind on error."""
        temp = target.with_name(f"{_TEMP_PREFIX}{secrets.token_hex(8)}-{target.name}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            log.error("storage: cannot create %s: %s", temp, exc)
            raise _write_error(exc) from exc
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("storage: cannot write %s: %s", temp, exc)
            _remove_quietly(temp)
            raise _write_error(exc) from exc
        except BaseException:
            _remove_quietly(temp)
            raise
        return temp

    def delete(self, relpath: str) -> None:
        path = self.path(relpath)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("storage: cannot remove %s: %s", path, exc)
            raise _write_error(exc) from exc

    # -- reading -----------------------------------------------------------------------------------

    def read(self, relpath: str) -> bytes:
        path = self.path(relpath)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise _read_error(relpath, path, exc) from exc

    def open(self, relpath: str) -> StoredStream:
        path = self.path(relpath)
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise _read_error(relpath, path, exc) from exc
        try:
            status = os.fstat(handle.fileno())
        except OSError as exc:
            handle.close()
            raise _read_error(relpath, path, exc) from exc
        return StoredStream(handle, status.st_size, datetime.fromtimestamp(status.st_mtime, UTC))

    def size(self, relpath: str) -> int | None:
        path = self.path(relpath)
        try:
            status = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _write_error(exc) from exc
        return status.st_size if path.is_file() else None


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:  # pragma: no cover - nothing more we can do; say so in the log
        log.error("storage: could not remove temporary file %s: %s", path, exc)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable. Some file systems refuse fsync on a folder: that is not an error."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- choosing a backend ----------------------------------------------------------------------------

def make_storage(settings: Settings) -> Storage:
    """The storage STORAGE_URL names: unset or `file:///path` a local folder (unset: STORAGE_DIR),
    `s3://bucket/prefix` an S3-compatible object store (S3_ENDPOINT_URL, AWS_* credentials)."""
    url = settings.storage_url.strip()
    if not url:
        return LocalStorage(settings.storage_dir)
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError(f"STORAGE_URL {url!r}: a local folder is written file:///absolute/path")
        return LocalStorage(unquote(parts.path))
    if parts.scheme == "s3":
        from shared.storage_s3 import S3Storage

        if not parts.netloc:
            raise ValueError(f"STORAGE_URL {url!r}: name the bucket, as in s3://bucket/prefix")
        return S3Storage.from_settings(parts.netloc, unquote(parts.path).strip("/"), settings)
    raise ValueError(f"STORAGE_URL {url!r}: use s3://bucket/prefix for an object store or file:///path "
                     "for a folder (or leave it unset for STORAGE_DIR)")
