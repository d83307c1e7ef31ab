"""`xray storage check`: writes, reads back and deletes a probe file in the configured storage, and
says plainly whether that storage is reachable and writable (a local folder, or a real S3 server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main
from tests.conftest import S3Place
from tests.seaweed import SeaweedServer, unique_prefix


def _check(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str],
           *extra: str) -> tuple[int, str]:
    for name in ("STORAGE_URL", "STORAGE_DIR", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["storage", "check", *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = _check(monkeypatch, capsys, {"STORAGE_DIR": str(tmp_path / "store")})
    assert code == 0, output
    assert f"the folder {(tmp_path / 'store').resolve()}" in output and "reachable and writable" in output
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []  # the probe is gone


def test_local_folder_that_cannot_be_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("a file where the folder should be")
    code, output = _check(monkeypatch, capsys, {"STORAGE_URL": f"file://{tmp_path / 'file' / 'store'}"})
    assert code == 1
    assert "FAILED: could not write a probe file: the server cannot write to its storage folder" in output


def test_s3_bucket(s3_place: S3Place, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = _check(monkeypatch, capsys, s3_place.env())
    assert code == 0, output
    assert f"s3://{s3_place.bucket}/{s3_place.prefix} at {s3_place.server.endpoint_url}" in output
    assert "read it back: ok" in output
    assert s3_place.server.keys(s3_place.bucket, s3_place.prefix) == []


def test_s3_refused_credentials(s3_place: S3Place, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    code, output = _check(monkeypatch, capsys, {**s3_place.env(), "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert code == 1
    assert "could not write a probe file" in output and "refused this server's credentials" in output


def test_s3_missing_bucket_and_creating_it(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    env = seaweed.env(f"new-{unique_prefix()}", "xray")
    code, output = _check(monkeypatch, capsys, env)
    assert code == 1 and "does not exist" in output and "--create-bucket" in output
    code, output = _check(monkeypatch, capsys, env, "--create-bucket")
    assert code == 0 and "bucket: created" in output, output
    code, output = _check(monkeypatch, capsys, env, "--create-bucket")
    assert code == 0 and "bucket: exists" in output, output


def test_s3_unreachable(s3_place: S3Place, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.up import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    code, output = _check(monkeypatch, capsys, {**s3_place.env(), "S3_ENDPOINT_URL": endpoint})
    assert code == 1 and f"the object store at {endpoint} is unreachable" in output


def test_unknown_storage_url(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = _check(monkeypatch, capsys, {"STORAGE_URL": "ftp://files/x"})
    assert code == 2 and "STORAGE_URL 'ftp://files/x'" in output


def test_worker_preflight_names_a_storage_it_cannot_use(s3_place: S3Place, seaweed: SeaweedServer,
                                                        tmp_path: Path) -> None:
    from cli.worker import storage_problem
    from shared.config import Settings

    base = Settings(storage_dir=tmp_path / "store")
    assert storage_problem(base) is None
    assert storage_problem(s3_place.settings(base)) is None
    missing = s3_place.settings(base).with_overrides(storage_url="s3://not-made-yet/x")
    problem = storage_problem(missing)
    assert problem is not None and "cannot use the storage (STORAGE_URL)" in problem and "does not exist" in problem
    assert "STORAGE_URL" in (storage_problem(base.with_overrides(storage_url="s3://")) or "")
