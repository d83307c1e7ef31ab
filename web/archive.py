"""Zip archives in an upload: each entry is checked on its own before it becomes an `Upload`.

Refused with a reason (the rest of the archive still goes through): unsafe path names (absolute,
`..`, NUL, drive letters), encrypted entries, entries whose declared size is over the per-image
limit, a compression ratio that looks like a zip bomb, an actual size larger than declared (read
through a bounded reader, so a lying header cannot make us inflate more than the limit), archives
inside archives, and entries beyond the archive's total uncompressed budget. An archive with too
many entries is refused as a whole. Directory entries, `__MACOSX/` and dotfiles are skipped silently.
"""

from __future__ import annotations

import io
import re
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from shared.intake import Rejection, Upload, sanitise_filename

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive's end record
MiB = 1024 * 1024
DRIVE = re.compile(r"^[A-Za-z]:")


def _refused(name: str, reason: str) -> Rejection:
    """An archive or an entry of it refused (one category for the metrics: shared/intake_metrics.py)."""
    return Rejection(name, reason, category="archive_refused")


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int = 10_000
    max_ratio: float = 200.0  # uncompressed / compressed, checked for entries above ratio_min_bytes
    ratio_min_bytes: int = 1 * MiB
    max_total_bytes: int = 8 * 1024 * MiB


def is_zip(head: bytes) -> bool:
    return head[:4] in ZIP_MAGICS


def _skipped(parts: list[str]) -> bool:
    return any(part == "__MACOSX" or part.startswith(".") for part in parts)


def _unsafe(raw: str) -> bool:
    if "\x00" in raw or raw.startswith(("/", "\\")) or DRIVE.match(raw):
        return True
    return ".." in re.split(r"[/\\]", raw)


def display_path(archive: str, raw: str) -> str:
    """`archive.zip/folder/file.png` for display: each component cleaned of control characters."""
    parts = []
    for part in re.split(r"[/\\]", raw.replace("\x00", "")):
        clean = "".join(ch for ch in part if unicodedata.category(ch) not in {"Cc", "Cf", "Cs", "Zl", "Zp"})
        if clean.strip():
            parts.append(clean.strip())
    name = "/".join([archive, *parts])
    return name if len(name) <= 255 else "…" + name[-254:]


def expand_zip(filename: str | None, stream: BinaryIO, max_file_bytes: int,
               limits: ArchiveLimits | None = None) -> Iterator[Upload | Rejection]:
    """The archive's image entries as `Upload`s, or a `Rejection` per refused entry (lazily: one
    entry in memory at a time)."""
    limits = limits or ArchiveLimits()
    archive = sanitise_filename(filename)
    try:
        zf = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError):
        yield _refused(archive, "The zip archive is damaged or incomplete and could not be opened.")
        return
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            yield _refused(archive, f"The archive has {len(infos)} entries; at most {limits.max_entries} "
                                     "are accepted in one zip. Split it into smaller archives.")
            return
        budget = limits.max_total_bytes
        for info in infos:
            raw = info.orig_filename  # before zipfile cuts it at a NUL
            name = display_path(archive, raw)
            if _unsafe(raw):
                yield _refused(name, "Refused: the path inside the archive is unsafe "
                                      "(absolute, contains '..' or a NUL character).")
                continue
            if info.is_dir() or _skipped(re.split(r"[/\\]", raw)):
                continue
            reason = _check_header(info, max_file_bytes, budget, limits)
            if reason is None:
                data, reason = _read_bounded(zf, info, max_file_bytes)
            if reason is not None:
                yield _refused(name, reason)
                continue
            assert data is not None
            budget -= len(data)
            if is_zip(data[:4]):
                yield _refused(name, "Archives inside archives are not accepted: unpack the inner zip first.")
                continue
            yield Upload(name, io.BytesIO(data), display_safe=True)


def _check_header(info: zipfile.ZipInfo, max_file_bytes: int, budget: int,
                  limits: ArchiveLimits) -> str | None:
    if info.flag_bits & 0x1:
        return "The entry is encrypted; upload the images without a password."
    mib = max_file_bytes // MiB
    if info.file_size > max_file_bytes:
        return f"The entry unpacks to {info.file_size // MiB} MiB, over the {mib} MiB limit per image."
    if info.file_size > budget:
        return (f"The archive unpacks to more than {limits.max_total_bytes // MiB} MiB in total; "
                "this entry and the rest were not read. Split the archive.")
    if info.file_size >= limits.ratio_min_bytes:
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_ratio:
            return (f"Refused as a possible zip bomb: the entry is compressed {ratio:.0f}:1 "
                    f"(at most {limits.max_ratio:.0f}:1 is accepted).")
    return None


def _read_bounded(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_file_bytes: int) -> tuple[bytes | None, str | None]:
    """Read at most min(declared, limit) + 1 bytes: more than declared means a forged header."""
    cap = min(info.file_size, max_file_bytes)
    try:
        with zf.open(info) as entry:
            data = entry.read(cap + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        return None, f"The entry is damaged and could not be unpacked ({str(exc)[:120]})."
    if len(data) > cap:
        return None, "Refused: the entry unpacks to more bytes than its header declares (a forged size)."
    return data, None
