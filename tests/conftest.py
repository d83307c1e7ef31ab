"""Fixtures every room's tests share: the provided data, settings on a temporary folder, and the
real Redis and PostgreSQL of this machine (each test run uses its own Redis database number, queue
name and PostgreSQL database, and removes only what it wrote)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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
def settings(tmp_path: Path) -> Settings:
    """Settings on a fresh folder: SQLite database and storage under tmp_path, own queue name."""
    env = {
        "XRAY_VAR_DIR": str(tmp_path / "var"),
        "XRAY_QUEUE": f"xray.test.{uuid.uuid4().hex[:8]}",
    }
    return load_settings(env)


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
