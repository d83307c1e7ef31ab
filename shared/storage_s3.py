"""`S3Storage`: the storage interface (shared/storage.py) on an S3-compatible object store, via boto3.

Keys are `<prefix>/<relative path>`, so the database's paths are the same as with a local folder. A
PUT is atomic (readers see the old object or the whole new one), and boto3 sends a checksum of the
body that the store verifies. Originals are content-addressed: a HEAD finds bytes already stored.

Errors become StorageErrors a person can act on: an unreachable, failing or overloaded store is
`StorageUnavailable` (the worker retries the study later, the web answers 503), a missing object
`StoredFileMissing`, a wrong bucket or refused credentials a plain StorageError naming the setting.
boto3 itself retries a failed request twice with a short backoff before any of that.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from shared.storage import (
    Storage,
    StorageError,
    StorageUnavailable,
    StoredFileMissing,
    StoredStream,
    check_relpath,
)

if TYPE_CHECKING:
    from shared.config import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 30
MAX_ATTEMPTS = 3  # boto3's own tries of one request (standard retry mode: backoff with jitter)
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                 "ExpiredToken", "AllAccessDisabled"}
_BUSY_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
               "RequestTimeTooSkewed"}


class S3Storage(Storage):
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None, session_token: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._client_args: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "region_name": region or "us-east-1",
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "aws_session_token": session_token,
            "config": Config(
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
                # Stores other than AWS (SeaweedFS, MinIO, Ceph) are addressed by path, not by host name.
                s3={"addressing_style": "path" if endpoint_url else "auto"},
            ),
        }
        self._local = threading.local()
        self._pid = os.getpid()

    @classmethod
    def from_settings(cls, bucket: str, prefix: str, settings: Settings) -> S3Storage:
        return cls(bucket, prefix, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                   access_key_id=settings.s3_access_key_id, secret_access_key=settings.s3_secret_access_key,
                   session_token=settings.s3_session_token)

    @property
    def description(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"the object store bucket s3://{self.bucket}/{self.prefix}{where}"

    def _client(self) -> Any:
        """One client per thread and process: a client made before a fork (gunicorn, Celery's
        prefork pool) must not share its connections with the child."""
        if self._pid != os.getpid():
            self._local, self._pid = threading.local(), os.getpid()
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = boto3.session.Session().client("s3", **self._client_args)
        return client

    def key(self, relpath: str) -> str:
        pure = check_relpath(relpath).as_posix()
        return f"{self.prefix}/{pure}" if self.prefix else pure

    # -- writing -----------------------------------------------------------------------------------

    def write(self, relpath: str, data: bytes) -> None:
        key = self.key(relpath)
        content_type = mimetypes.guess_type(relpath)[0] or "application/octet-stream"
        with self._errors("store", relpath):
            self._client().put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def delete(self, relpath: str) -> None:
        key = self.key(relpath)
        with self._errors("remove", relpath):
            self._client().delete_object(Bucket=self.bucket, Key=key)

    # -- reading -----------------------------------------------------------------------------------

    def read(self, relpath: str) -> bytes:
        stored = self.open(relpath)
        try:
            with self._errors("read", relpath):
                return stored.stream.read()
        finally:
            stored.stream.close()

    def open(self, relpath: str) -> StoredStream:
        key = self.key(relpath)
        with self._errors("read", relpath):
            answer = self._client().get_object(Bucket=self.bucket, Key=key)
        return StoredStream(answer["Body"], int(answer["ContentLength"]), answer.get("LastModified"))

    def size(self, relpath: str) -> int | None:
        key = self.key(relpath)
        try:
            with self._errors("look up", relpath):
                answer = self._client().head_object(Bucket=self.bucket, Key=key)
        except StoredFileMissing:
            return None
        return int(answer["ContentLength"])

    def check_bucket(self) -> None:
        """Raise a StorageError unless the bucket exists and these credentials may use it."""
        with self._errors("reach", _BUCKET):
            self._client().head_bucket(Bucket=self.bucket)

    def create_bucket(self) -> None:
        with self._errors("create", _BUCKET):
            self._client().create_bucket(Bucket=self.bucket)

    # -- errors ------------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str, relpath: str) -> Iterator[None]:
        """boto3's and the store's errors as StorageErrors; the details go to the log."""
        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, action, relpath) from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StorageError("the server has no complete credentials for the object store: set "
                               "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from exc
        except (ConnectionError, HTTPClientError, OSError) as exc:
            log.warning("storage: cannot %s %s in s3://%s: %s", action, relpath, self.bucket, exc)
            raise StorageUnavailable(f"the object store{self._at} is unreachable, so {_thing(relpath)} "
                                     f"could not be {_PAST[action]}") from exc
        except BotoCoreError as exc:
            log.error("storage: cannot %s %s in s3://%s: %s", action, relpath, self.bucket, exc)
            raise StorageError(f"the object store{self._at} failed ({type(exc).__name__}), so "
                               f"{_thing(relpath)} could not be {_PAST[action]}") from exc

    @property
    def _at(self) -> str:
        return f" at {self.endpoint_url}" if self.endpoint_url else ""

    def _client_error(self, exc: ClientError, action: str, relpath: str) -> StorageError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code == "NoSuchBucket" or (code in _MISSING_CODES and relpath == _BUCKET):
            log.error("storage: the bucket s3://%s does not exist", self.bucket)
            return StorageError(f"the storage bucket {self.bucket!r} does not exist{self._at}: create it "
                                "(`xray storage check --create-bucket`), or correct STORAGE_URL")
        if code in _MISSING_CODES:
            return StoredFileMissing(f"the stored file {relpath} is missing from the server's storage")
        log.error("storage: cannot %s %s in s3://%s: %s %s", action, relpath, self.bucket, code,
                  error.get("Message", ""))
        if code in _DENIED_CODES:
            return StorageError(f"the object store{self._at} refused this server's credentials for bucket "
                                f"{self.bucket!r} ({code}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and "
                                "the bucket's policy")
        if code in _BUSY_CODES or status >= 500:
            return StorageUnavailable(f"the object store{self._at} is unavailable ({code or status}), so "
                                      f"{_thing(relpath)} could not be {_PAST[action]}")
        return StorageError(f"the object store{self._at} refused to {action} {_thing(relpath)} ({code or status})")


_BUCKET = "the bucket"
_PAST = {"store": "stored", "remove": "removed", "read": "read", "look up": "looked up",
         "reach": "reached", "create": "created"}


def _thing(relpath: str) -> str:
    return _BUCKET if relpath == _BUCKET else "the file"
