"""The login limit holds under concurrency: 40 wrong passwords for one user sent at once to a real
threaded HTTP server get at most `per_username` real password checks (401); the rest are refused
(429) before any check. On SQLite and on PostgreSQL, whose transactions interleave differently."""

from __future__ import annotations

import re
import threading
from collections import Counter

import pytest
import requests

from shared.accounts import LoginLimits
from shared.config import Settings
from tests.conftest import make_account
from tests.integration.test_submit import serve
from tests.web.support import make_app

ATTEMPTS = 40


@pytest.fixture(params=["sqlite", "postgresql"])
def database_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    if request.param == "sqlite":
        return settings
    return settings.with_overrides(database_url=request.getfixturevalue("postgres_url"))


def _ready_form(url: str, username: str) -> tuple[requests.Session, dict[str, str]]:
    client = requests.Session()
    page = client.get(f"{url}/login", timeout=30).text
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match
    return client, {"username": username, "password": "wrong password!!", "csrf_token": match.group(1)}


def test_concurrent_wrong_passwords_get_at_most_the_limit_of_checks(database_settings: Settings) -> None:
    app, _ = make_app(database_settings, auth=False)
    limits: LoginLimits = app.extensions["xray.login_limits"]
    account = make_account(database_settings.database_url, "target", "radiologist")
    statuses: list[int] = []
    with serve(app) as url:
        forms = [_ready_form(url, account.username) for _ in range(ATTEMPTS)]
        start = threading.Barrier(ATTEMPTS)
        lock = threading.Lock()

        def attempt(client: requests.Session, form: dict[str, str]) -> None:
            start.wait()
            status = client.post(f"{url}/login", data=form, allow_redirects=False, timeout=120).status_code
            with lock:
                statuses.append(status)

        threads = [threading.Thread(target=attempt, args=pair) for pair in forms]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
    counts = Counter(statuses)
    assert sum(counts.values()) == ATTEMPTS and set(counts) <= {401, 429}, counts
    assert 1 <= counts[401] <= limits.per_username, counts
