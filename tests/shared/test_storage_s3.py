"""The S3 backend against a real S3 server (SeaweedFS): keys under the prefix, and errors a person can
act on, told apart as the callers need (unreachable = try again later; refused or missing = fix a
setting); and `make_storage` reading STORAGE_URL."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from shared.config import Settings, load_settings
from shared.storage import LocalStorage, StorageError, StorageUnavailable, StoredFileMissing, make_storage
from shared.storage_s3 import S3Storage
from tests.conftest import S3_TEST_BUCKET, S3Place
from tests.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, unique_prefix


def test_keys_live_under_the_prefix(s3_place: S3Place) -> None:
    storage = s3_place.storage()
    rel = storage.put_original(b"bytes of an x-ray", "png")
    sheet = storage.put_cam_sheet(5, b"sheet")
    assert s3_place.server.keys(S3_TEST_BUCKET, s3_place.prefix) == sorted(
        [f"{s3_place.prefix}/{rel}", f"{s3_place.prefix}/{sheet}"])
    head = s3_place.server.client().head_object(Bucket=S3_TEST_BUCKET, Key=f"{s3_place.prefix}/{sheet}")
    assert head["ContentType"] == "image/png"


def test_no_prefix_means_keys_at_the_bucket_root(seaweed: SeaweedServer) -> None:
    bucket = seaweed.make_bucket(f"root-{unique_prefix()}")
    rel = seaweed.storage(bucket).put_cam_sheet(1, b"x")
    assert seaweed.keys(bucket) == [rel]


def test_wrong_credentials_are_a_clear_error_not_an_outage(seaweed: SeaweedServer) -> None:
    storage = S3Storage(S3_TEST_BUCKET, unique_prefix(), endpoint_url=seaweed.endpoint_url,
                        access_key_id=ACCESS_KEY, secret_access_key="not the secret")
    with pytest.raises(StorageError, match="refused this server's credentials") as caught:
        storage.put_cam_sheet(1, b"x")
    assert not isinstance(caught.value, StorageUnavailable)
    assert "not the secret" not in str(caught.value)


def test_missing_bucket_is_named(seaweed: SeaweedServer) -> None:
    storage = seaweed.storage("no-such-bucket-here")
    with pytest.raises(StorageError, match="'no-such-bucket-here' does not exist") as caught:
        storage.put_cam_sheet(1, b"x")
    assert not isinstance(caught.value, StorageUnavailable | StoredFileMissing)
    with pytest.raises(StorageError, match="does not exist"):
        storage.check_bucket()


def test_unreachable_store_is_unavailable(tmp_path: Path) -> None:
    from cli.up import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    storage = S3Storage("bucket", "p", endpoint_url=endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    started = time.monotonic()
    for attempt in (lambda: storage.put_original(b"x", "png"), lambda: storage.read("heatmaps/00000/1.png"),
                    lambda: storage.open("heatmaps/00000/1.png")):
        with pytest.raises(StorageUnavailable, match=f"object store at {endpoint} is unreachable"):
            attempt()
    assert time.monotonic() - started < 30  # boto3 retries briefly, then the caller decides


def _write_in_child(storage: S3Storage, parent_client: object,
                    queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        queue.put((storage.put_cam_sheet(2, b"from the child"), storage._client() is parent_client))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put((repr(exc), None))


def test_a_forked_process_gets_its_own_client(s3_place: S3Place) -> None:
    """gunicorn and Celery's pool fork after the storage is made: the child must not reuse the
    parent's connections."""
    storage = s3_place.storage()
    storage.put_cam_sheet(1, b"from the parent")
    parent_client = storage._client()
    queue: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()  # type: ignore[type-arg]
    child = multiprocessing.get_context("fork").Process(target=_write_in_child, args=(storage, parent_client, queue))
    child.start()
    child.join(60)
    assert queue.get(timeout=5) == ("heatmaps/00000/2.png", False)
    assert storage.read("heatmaps/00000/2.png") == b"from the child"
    assert storage._client() is parent_client


def test_make_storage_reads_storage_url(tmp_path: Path) -> None:
    assert isinstance(make_storage(load_settings({"STORAGE_DIR": str(tmp_path / "a")})), LocalStorage)
    local = make_storage(load_settings({"STORAGE_URL": f"file://{tmp_path / 'b'}"}))
    assert isinstance(local, LocalStorage) and local.root == (tmp_path / "b").resolve()
    settings = load_settings({"STORAGE_URL": "s3://scans/xray/prod/", "S3_ENDPOINT_URL": "http://s3.local:8333",
                              "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
                              "AWS_DEFAULT_REGION": "eu-west-1"})
    remote = make_storage(settings)
    assert isinstance(remote, S3Storage)
    assert (remote.bucket, remote.prefix, remote.endpoint_url) == ("scans", "xray/prod", "http://s3.local:8333")
    assert remote.key("heatmaps/00000/1.png") == "xray/prod/heatmaps/00000/1.png"
    assert "s3cr3t-value" not in repr(settings) and "s3cr3t-value" not in remote.description


@pytest.mark.parametrize("url", ["s3://", "ftp://host/x", "file://host/x", "bucket/prefix"])
def test_make_storage_refuses_unknown_urls(url: str) -> None:
    with pytest.raises(ValueError, match="STORAGE_URL"):
        make_storage(Settings(storage_url=url))
