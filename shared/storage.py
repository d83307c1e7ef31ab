"""Files under STORAGE_DIR: content-addressed originals and per-study heatmaps.

The database holds only the relative paths this module returns. Every write is atomic (a temporary
file in the same folder, fsync, `os.replace`, fsync of the folder), so a reader sees either nothing
or the whole file, and a failed write leaves nothing behind. A study's heatmaps are one file, its CAM
sheet (`put_cam_sheet`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path, PurePosixPath

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


def _write_error(exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StorageError(FULL_MESSAGE)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST):
        return StorageError(READ_ONLY_MESSAGE)
    return StorageError(f"the server could not store the file ({exc.strerror or exc})")


class Storage:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    # -- paths -------------------------------------------------------------------------------------

    def path(self, relpath: str) -> Path:
        """The absolute path of a stored file; refuses anything that would leave the storage folder."""
        if not relpath or "\x00" in relpath or "\\" in relpath:
            raise StorageError("refused an invalid stored-file path")
        pure = PurePosixPath(relpath)
        if pure.is_absolute() or any(part in ("..", ".", "") for part in relpath.split("/")):
            raise StorageError("refused a stored-file path outside the storage folder")
        candidate = (self.root / pure).resolve()  # follows symbolic links
        if candidate != self.root and self.root not in candidate.parents:
            raise StorageError("refused a stored-file path outside the storage folder")
        return candidate

    @staticmethod
    def original_relpath(sha256: str, extension: str) -> str:
        return f"originals/{sha256[:2]}/{sha256}.{extension}"

    @staticmethod
    def cam_sheet_relpath(study_id: int) -> str:
        return f"heatmaps/{study_id // 1000:05d}/{study_id}.png"

    @staticmethod
    def display_relpath(study_id: int) -> str:
        return f"display/{study_id // 1000:05d}/{study_id}.png"

    # -- writing -----------------------------------------------------------------------------------

    def put_original(self, data: bytes, extension: str) -> str:
        """Store an uploaded file under its sha256; storing the same bytes again is free."""
        extension = extension.lower().lstrip(".")
        if not _EXTENSION.match(extension):
            raise StorageError(f"refused the file extension {extension!r}")
        relpath = self.original_relpath(hashlib.sha256(data).hexdigest(), extension)
        target = self.path(relpath)
        try:
            if target.stat().st_size == len(data):
                return relpath  # same content, same name: already stored
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _write_error(exc) from exc
        self._write_atomic(target, data)
        return relpath

    def put_cam_sheet(self, study_id: int, data: bytes) -> str:
        """Store (or replace) a study's CAM sheet (`shared.gradcam.cam_sheet_png`: every finding's map
        in one file); returns its path."""
        return self._put_study_file(self.cam_sheet_relpath, study_id, data)

    def put_display(self, study_id: int, data: bytes) -> str:
        """Store (or replace) a study's display picture (`shared.display.display_png`); returns its path."""
        return self._put_study_file(self.display_relpath, study_id, data)

    def _put_study_file(self, relpath_of: Callable[[int], str], study_id: int, data: bytes) -> str:
        """Atomic and durable like every write here; a new folder's parent is fsynced too, so the
        folder itself survives a crash. Folders hold 1,000 studies each."""
        if isinstance(study_id, bool) or not isinstance(study_id, int) or study_id < 0:
            raise StorageError(f"refused the study id {study_id!r}")
        relpath = relpath_of(study_id)
        target = self.path(relpath)
        new_folder = not target.parent.is_dir()
        self._write_atomic(target, data)
        if new_folder:
            _fsync_dir(target.parent.parent)
        return relpath

    def _write_atomic(self, target: Path, data: bytes) -> None:
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

    # -- reading -----------------------------------------------------------------------------------

    def read(self, relpath: str) -> bytes:
        path = self.path(relpath)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise StoredFileMissing(f"the stored file {relpath} is missing from the server's storage") from exc
        except OSError as exc:
            log.error("storage: cannot read %s: %s", path, exc)
            raise StorageError(f"the server could not read a stored file ({exc.strerror or exc})") from exc

    def exists(self, relpath: str) -> bool:
        return self.path(relpath).is_file()


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
