"""shared.accounts: roles, scrypt password hashes, API tokens stored as sha256 only, and the login rate
limiter, whose counts live in the database (two engines stand in for two gunicorn processes)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import accounts
from shared.accounts import AccountError, LoginLimits
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.models import ApiToken, Base, LoginFailure, Role, User

PASSWORD = "correct horse battery"


def _factory(url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    return make_session_factory(engine)


@pytest.fixture
def db(settings: Settings) -> Iterator[Session]:
    with _factory(settings.database_url)() as session:
        yield session


def test_roles_and_permissions() -> None:
    assert accounts.can("uploader", accounts.UPLOAD) and not accounts.can("uploader", accounts.READ_STUDIES)
    assert not accounts.can("uploader", accounts.BATCHES_ALL)
    assert accounts.can("radiologist", accounts.REVIEW) and accounts.can("radiologist", accounts.EXPORT)
    assert not accounts.can("radiologist", accounts.UPLOAD)
    assert not accounts.can("radiologist", accounts.MANAGE_USERS)
    assert all(accounts.can("admin", p) for perms in accounts.PERMISSIONS.values() for p in perms)
    assert accounts.can("admin", accounts.MANAGE_USERS)
    assert not accounts.can("nobody", accounts.UPLOAD)
    with pytest.raises(AccountError, match="unknown role"):
        accounts.parse_role("superuser")


def test_passwords_are_scrypt_hashed_and_checked(db: Session) -> None:
    user = accounts.create_user(db, "alice", Role.RADIOLOGIST, PASSWORD)
    db.commit()
    assert user.password_hash is not None and user.password_hash.startswith("scrypt:")
    assert PASSWORD not in user.password_hash
    assert accounts.authenticate(db, "alice", PASSWORD) is user
    assert accounts.authenticate(db, "alice", PASSWORD + "x") is None
    assert accounts.authenticate(db, "bob", PASSWORD) is None
    session_id = accounts.start_session(db, user)
    assert accounts.session_user(db, user.id, session_id) is user
    accounts.set_password(db, user, "another long password")
    assert accounts.session_user(db, user.id, session_id) is None  # old sessions end
    user.active = False
    assert accounts.authenticate(db, "alice", "another long password") is None


def test_user_validation(db: Session) -> None:
    with pytest.raises(AccountError, match="at least 12"):
        accounts.create_user(db, "carol", "admin", "short")
    with pytest.raises(AccountError, match="username"):
        accounts.create_user(db, "bad name!", "admin", PASSWORD)
    accounts.create_user(db, "carol", "admin", PASSWORD)
    with pytest.raises(AccountError, match="already exists"):
        accounts.create_user(db, "carol", "uploader", PASSWORD)
    token_only = accounts.create_user(db, "pacs-bridge", "uploader", None)
    assert token_only.password_hash is None
    assert accounts.authenticate(db, "pacs-bridge", "") is None


def test_tokens_are_stored_as_sha256_and_can_be_revoked(db: Session) -> None:
    user = accounts.create_user(db, "uploader1", Role.UPLOADER, PASSWORD)
    token = accounts.issue_token(db, user, "cli")
    db.commit()
    assert token.startswith(accounts.TOKEN_PREFIX) and len(token) > 40
    rows = db.scalars(select(ApiToken)).all()
    assert [r.token_sha256 for r in rows] == [accounts.token_digest(token)]
    assert token not in {r.token_sha256 for r in rows}
    assert accounts.user_for_token(db, token) is user
    assert rows[0].last_used_at is not None
    assert accounts.user_for_token(db, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert accounts.user_for_token(db, "not-a-token") is None
    second = accounts.issue_token(db, user)
    assert second != token
    assert accounts.revoke_tokens(db, user) == 2
    db.commit()
    assert accounts.user_for_token(db, token) is None and accounts.user_for_token(db, second) is None


def _limiter_round(factory_a, factory_b) -> None:  # type: ignore[no-untyped-def]
    limits = LoginLimits(per_username=5, per_ip=8, window_s=300)
    now = accounts.utcnow()
    # Failures recorded through one "process" are seen by the other.
    for i in range(4):
        with factory_a() as s:
            assert accounts.login_blocked_for(s, "alice", "10.0.0.1", limits, now) == 0
            accounts.record_login_failure(s, "alice", "10.0.0.1", limits, now + timedelta(seconds=i))
            s.commit()
    with factory_b() as s:
        assert accounts.login_blocked_for(s, "ALICE", "10.0.0.9", limits, now) == 0
        accounts.record_login_failure(s, "Alice", "10.0.0.9", limits, now + timedelta(seconds=5))
        s.commit()
    with factory_a() as s:
        wait = accounts.login_blocked_for(s, "alice", "10.0.0.2", limits, now + timedelta(seconds=10))
        assert 280 < wait <= 301  # until the first failure leaves the window
        assert accounts.login_blocked_for(s, "bob", "10.0.0.2", limits, now + timedelta(seconds=10)) == 0
        # The window passes: allowed again.
        assert accounts.login_blocked_for(s, "alice", "10.0.0.2", limits, now + timedelta(seconds=306)) == 0
    # Per address: many usernames from one address.
    with factory_b() as s:
        for i in range(8):
            accounts.record_login_failure(s, f"user{i}", "10.0.0.3", limits, now + timedelta(seconds=20))
        s.commit()
        assert accounts.login_blocked_for(s, "someone", "10.0.0.3", limits, now + timedelta(seconds=21)) > 0
        assert accounts.login_blocked_for(s, "someone", "10.0.0.4", limits, now + timedelta(seconds=21)) == 0
        accounts.clear_login_failures(s, "alice")
        s.commit()
        assert accounts.login_blocked_for(s, "alice", "10.0.0.2", limits, now + timedelta(seconds=22)) == 0
        # Old failures are pruned as new ones come in.
        accounts.record_login_failure(s, "zed", "10.0.0.5", limits, now + timedelta(seconds=1000))
        s.commit()
        assert s.scalars(select(LoginFailure.username)).all() == ["zed"]


def test_login_rate_limit_is_shared_between_processes_sqlite(settings: Settings) -> None:
    _limiter_round(_factory(settings.database_url), _factory(settings.database_url))


@pytest.mark.postgres
def test_login_rate_limit_is_shared_between_processes_postgres(postgres_url: str) -> None:
    factories = (_factory(postgres_url), _factory(postgres_url))
    _limiter_round(*factories)
    for factory in factories:
        factory.kw["bind"].dispose()  # the database is dropped next


def test_batch_uploaders(db: Session) -> None:
    from shared.models import Batch

    user = accounts.create_user(db, "up", Role.UPLOADER, PASSWORD)
    batch = Batch()
    db.add(batch)
    db.flush()
    assert not accounts.uploaded_batch(db, batch.id, user.id)
    accounts.record_batch_uploader(db, batch.id, user.id)
    accounts.record_batch_uploader(db, batch.id, user.id)  # idempotent
    db.commit()
    assert accounts.uploaded_batch(db, batch.id, user.id)
    assert db.get(User, user.id) is user


def test_xray_user_cli(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """`xray user add/token/list/disable/revoke` on the embedded default's database (migrated first)."""
    import io as io_module

    from cli.main import main
    from shared.config import load_settings

    monkeypatch.setenv("XRAY_VAR_DIR", str(tmp_path / "var"))
    for name in ("DATABASE_URL", "SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.stdin", io_module.StringIO(PASSWORD + "\n"))
    assert main(["user", "add", "boss", "--role", "admin", "--password-stdin"]) == 0
    assert "added with role admin" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io_module.StringIO("short\n"))
    assert main(["user", "add", "weak", "--role", "uploader", "--password-stdin"]) == 1
    assert "at least 12" in capsys.readouterr().err
    assert main(["user", "add", "x", "--role", "wizard", "--no-password"]) == 1
    assert main(["user", "token", "boss", "--label", "laptop"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith(accounts.TOKEN_PREFIX)
    assert main(["user", "token", "ghost"]) == 1
    factory = make_session_factory(make_engine(load_settings().database_url))
    with factory() as session:
        user = accounts.user_for_token(session, token, touch=False)
        assert user is not None and user.username == "boss" and user.role == "admin"
        assert accounts.authenticate(session, "boss", PASSWORD) is not None
    assert main(["user", "list"]) == 0
    listing = capsys.readouterr().out
    assert "boss" in listing and "admin" in listing and token not in listing
    assert main(["user", "revoke", "boss"]) == 0 and main(["user", "disable", "boss"]) == 0
    with factory() as session:
        assert accounts.user_for_token(session, token, touch=False) is None
        assert accounts.authenticate(session, "boss", PASSWORD) is None
