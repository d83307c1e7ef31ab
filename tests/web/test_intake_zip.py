"""Zip intake: a zip of nested folders becomes one study per image; refused entries say why (a zip
bomb by ratio, a forged size, path traversal, nested archives, too many entries); directories,
__MACOSX and dotfiles are skipped; a damaged zip is a clear rejection. Also sha256 dedupe and rerun."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from shared.config import Settings
from shared.intake import Rejection, Upload
from shared.models import Study
from tests.web.support import make_app, session_for, upload
from web.archive import ArchiveLimits, expand_zip


@pytest.fixture
def images(nih_full_images: list[Path], kermany_dir: Path) -> list[tuple[bytes, str]]:
    jpegs = sorted(kermany_dir.rglob("*.jpeg"))[:1] or sorted(kermany_dir.rglob("*.jpg"))[:1]
    return [(p.read_bytes(), p.name) for p in nih_full_images[:3] + jpegs]


def _zip(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=method) as zf:
        for name, data in entries:
            if name.endswith("/"):
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(name, data)
    return out.getvalue()


def _count(settings: Settings) -> int:
    with session_for(settings) as session:
        return int(session.scalar(select(func.count()).select_from(Study)) or 0)


def test_nested_folders_become_studies_and_junk_is_skipped(settings: Settings,
                                                           images: list[tuple[bytes, str]]) -> None:
    app, producer = make_app(settings)
    archive = _zip([
        ("day1/", b""),
        ("day1/ward4/" + images[0][1], images[0][0]),
        ("day1/ward4/deeper/" + images[1][1], images[1][0]),
        ("day1/" + images[3][1], images[3][0]),
        ("__MACOSX/day1/._" + images[0][1], b"resource fork"),
        ("day1/.DS_Store", b"finder junk"),
        ("day1/notes.txt", b"not an image"),
    ])
    response = upload(app.test_client(), [(archive, "scans.zip"), images[2]])
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    names = [a["filename"] for a in body["accepted"]]
    assert names == [f"scans.zip/day1/ward4/{images[0][1]}", f"scans.zip/day1/ward4/deeper/{images[1][1]}",
                     f"scans.zip/day1/{images[3][1]}", images[2][1]]
    assert [r["filename"] for r in body["rejected"]] == ["scans.zip/day1/notes.txt"]
    assert len(producer.sent) == 4 and _count(settings) == 4
    with session_for(settings) as session:
        formats = sorted(s.format for s in session.scalars(select(Study)))
    assert formats.count("jpeg") == 1 and formats.count("png") == 3


def test_zip_bomb_by_ratio_is_refused_and_the_rest_accepted(settings: Settings,
                                                            images: list[tuple[bytes, str]]) -> None:
    app, _ = make_app(settings)
    archive = _zip([("bomb.dcm", b"\x00" * (20 * 1024 * 1024)), ("ok.png", images[0][0])])
    assert len(archive) < 400_000  # 20 MiB of zeros deflate to ~20 KiB; the rest is a real PNG
    body = upload(app.test_client(), [(archive, "day.zip")]).get_json()
    assert [a["filename"] for a in body["accepted"]] == ["day.zip/ok.png"]
    (rejected,) = body["rejected"]
    assert rejected["filename"] == "day.zip/bomb.dcm" and "zip bomb" in rejected["reason"]


def test_declared_size_over_the_image_limit_is_refused(settings: Settings) -> None:
    small = settings.with_overrides(limits=settings.limits.__class__(max_bytes=1024 * 1024))
    app, _ = make_app(small)
    archive = _zip([("big.png", bytes(range(256)) * 8192)], method=zipfile.ZIP_STORED)  # 2 MiB stored
    response = upload(app.test_client(), [(archive, "big.zip")])
    assert response.status_code == 422
    assert "over the 1 MiB limit per image" in response.get_json()["rejected"][0]["reason"]


def _forge_sizes(archive: bytes, declared: int) -> bytes:
    """Rewrite the uncompressed size in the local header and the central directory (a lying zip)."""
    data = bytearray(archive)
    local = data.find(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, declared)
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, declared)
    return bytes(data)


def test_a_forged_small_size_cannot_make_us_inflate_more(images: list[tuple[bytes, str]]) -> None:
    honest = _zip([("liar.png", b"\x00" * 5_000_000)])
    items = list(expand_zip("liar.zip", io.BytesIO(_forge_sizes(honest, 1000)), 64 * 1024 * 1024))
    assert len(items) == 1 and isinstance(items[0], Rejection)
    assert "damaged" in items[0].reason or "forged" in items[0].reason


@pytest.mark.parametrize("name", ["../../etc/cron.d/x.png", "/abs/path.png", "a/../../b.png",
                                  "C:/windows/x.png", "evil\x00.png", "..\\..\\x.png"])
def test_unsafe_paths_are_refused(settings: Settings, images: list[tuple[bytes, str]], name: str) -> None:
    app, _ = make_app(settings)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("fine/" + images[0][1], images[0][0])
        zf.writestr(zipfile.ZipInfo("Q" * len(name.encode())), images[1][0])
    # zipfile cleans names on write: forge the raw name bytes in both headers.
    raw = out.getvalue().replace(b"Q" * len(name.encode()), name.encode())
    body = upload(app.test_client(), [(raw, "t.zip")]).get_json()
    assert [a["filename"] for a in body["accepted"]] == [f"t.zip/fine/{images[0][1]}"]
    (rejected,) = body["rejected"]
    assert "unsafe" in rejected["reason"]
    assert not any(p.name.endswith(".png") and "etc" in str(p) for p in settings.var_dir.rglob("*"))


def test_too_many_entries_refuses_the_archive(images: list[tuple[bytes, str]]) -> None:
    archive = _zip([(f"f{i}.png", b"x") for i in range(12)])
    items = list(expand_zip("many.zip", io.BytesIO(archive), 1024 * 1024, ArchiveLimits(max_entries=10)))
    assert len(items) == 1 and isinstance(items[0], Rejection)
    assert "12 entries" in items[0].reason and "at most 10" in items[0].reason


def test_total_budget_and_nested_zip_and_damaged_zip(images: list[tuple[bytes, str]]) -> None:
    inner = _zip([("x.png", images[0][0])])
    archive = _zip([("a.png", images[0][0]), ("inner.zip", inner), ("b.png", images[1][0])],
                   method=zipfile.ZIP_STORED)
    limits = ArchiveLimits(max_total_bytes=len(images[0][0]) + len(inner) + 10)
    items = list(expand_zip("t.zip", io.BytesIO(archive), 64 * 1024 * 1024, limits))
    assert isinstance(items[0], Upload) and items[0].filename == "t.zip/a.png"
    assert isinstance(items[1], Rejection) and "inside archives" in items[1].reason
    assert isinstance(items[2], Rejection) and "in total" in items[2].reason
    damaged = list(expand_zip("d.zip", io.BytesIO(b"PK\x03\x04" + b"\x00" * 50), 1024))
    assert len(damaged) == 1 and "damaged" in damaged[0].reason  # type: ignore[union-attr]


def test_same_bytes_again_answer_the_existing_study_unless_rerun(settings: Settings,
                                                                 images: list[tuple[bytes, str]]) -> None:
    app, producer = make_app(settings)
    client = app.test_client()
    first = upload(client, images[:2]).get_json()
    ids = [a["id"] for a in first["accepted"]]
    again = upload(client, [images[0], images[1], images[0]])
    assert again.status_code == 200  # nothing new
    body = again.get_json()
    assert [(a["id"], a["duplicate"], a["enqueued"]) for a in body["accepted"]] == \
        [(ids[0], True, False), (ids[1], True, False), (ids[0], True, False)]
    assert body["batch_id"] is None and _count(settings) == 2 and len(producer.sent) == 2
    # Within one upload: the second copy points at the first's new study.
    mixed = upload(client, [images[2], images[2], images[0]]).get_json()
    new_id = mixed["accepted"][0]["id"]
    assert [(a["id"], a["duplicate"]) for a in mixed["accepted"]] == [(new_id, False), (new_id, True), (ids[0], True)]
    rerun = upload(client, [images[0]], rerun="1")
    assert rerun.status_code == 201
    assert rerun.get_json()["accepted"][0]["duplicate"] is False
    assert rerun.get_json()["accepted"][0]["id"] not in ids and _count(settings) == 4


def test_a_failed_study_is_diagnosed_again_when_sent_again(settings: Settings,
                                                          images: list[tuple[bytes, str]]) -> None:
    app, _ = make_app(settings)
    client = app.test_client()
    study_id = upload(client, images[:1]).get_json()["accepted"][0]["id"]
    with session_for(settings) as session:
        session.get(Study, study_id).status = "failed"  # type: ignore[union-attr]
        session.commit()
    body = upload(client, images[:1]).get_json()
    assert body["accepted"][0]["duplicate"] is False and body["accepted"][0]["id"] != study_id
