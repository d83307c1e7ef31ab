"""The authentication gate and the role table: every rule of the URL map, with every method it takes,
refuses an anonymous request (401 JSON on /api/, a redirect to the login page elsewhere) except
/healthz, /login and static files; each role reaches exactly what docs/SECURITY.md says."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from PIL import Image
from werkzeug.routing import IntegerConverter

from shared.config import Settings
from shared.models import Batch, Finding
from tests.conftest import Account
from tests.web.support import add_study, make_app, session_for, utc
from web.auth import ACCESS, PUBLIC_ENDPOINTS

# Endpoints deliberately left to admins only (not in web.auth.ACCESS).
ADMIN_ONLY: set[str] = set()


def _url(app: Flask, rule: Any, method: str) -> str:
    values = {arg: 1 if isinstance(rule._converters.get(arg), IntegerConverter) else "x" for arg in rule.arguments}
    if rule.endpoint == "static":
        values = {"filename": "app.css"}
    with app.test_request_context():
        return app.url_map.bind("localhost").build(rule.endpoint, values, method=method)


def test_every_rule_and_method_needs_a_login(settings: Settings) -> None:
    app, _ = make_app(settings, auth=False)
    client = app.test_client()
    checked = 0
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods or ()):
            url = _url(app, rule, method)
            response = client.open(url, method=method)
            where = f"{method} {url} ({rule.endpoint})"
            if rule.endpoint in PUBLIC_ENDPOINTS:
                own_check = rule.endpoint == "metrics.metrics"  # answers 401 itself (tests/web/test_metrics.py)
                assert response.status_code != 401 or own_check, where
                assert "/login?next" not in response.headers.get("Location", ""), where
                continue
            checked += 1
            if url.startswith(("/api/", "/dicomweb/")):
                assert response.status_code == 401, where
                if method != "HEAD":
                    assert "error" in response.get_json(), where
                assert response.headers["WWW-Authenticate"].startswith("Bearer"), where
            else:
                assert response.status_code in (302, 303), where
                assert response.headers["Location"].startswith("/login?next="), where
    assert checked >= 20  # the API, the pages, the media and logout, each with HEAD/OPTIONS too


def test_every_endpoint_has_an_access_rule(settings: Settings) -> None:
    app, _ = make_app(settings, auth=False)
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert endpoints - PUBLIC_ENDPOINTS - set(ACCESS) == ADMIN_ONLY
    assert set(ACCESS) <= endpoints, "ACCESS names an endpoint that does not exist"


def test_unknown_paths_and_bad_tokens(settings: Settings, account_factory: Callable[..., Account]) -> None:
    app, _ = make_app(settings, auth=False)
    client = app.test_client()
    assert client.get("/api/v1/nothing-here").status_code == 401  # no probing for routes anonymously
    assert client.get("/nothing-here").headers["Location"].startswith("/login")
    admin = account_factory("admin")
    assert client.get("/api/v1/nothing-here", headers=admin.headers).status_code == 404
    for header in ("Bearer xray_wrong", "Bearer ", "Basic YWRtaW46eA==", admin.token):
        response = client.get("/api/v1/worklist", headers={"Authorization": header})
        assert response.status_code == 401, header
    # A bad token is refused on a page too, instead of falling back to the login redirect.
    assert client.get("/worklist", headers={"Authorization": "Bearer xray_wrong"}).status_code == 401
    assert client.get("/healthz").status_code in (200, 503)
    assert client.get("/static/app.css").status_code == 200


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (128, 128), 90).save(buffer, format="PNG")
    return buffer.getvalue()


def _done_study(settings: Settings) -> tuple[int, int]:
    with session_for(settings) as session:
        batch = Batch()
        session.add(batch)
        study = add_study(session, batch, due_at=utc(9), urgency=0.5, model_version="v1", model_trained=True)
        session.add(Finding(study=study, label="Effusion", probability=0.7, threshold=0.4, positive=True))
        session.commit()
        return batch.id, study.id


def test_role_matrix(settings: Settings, account_factory: Callable[..., Account]) -> None:
    app, _ = make_app(settings, auth=False)
    client = app.test_client()
    uploader, radiologist, admin = (account_factory(r) for r in ("uploader", "radiologist", "admin"))
    other_batch, study_id = _done_study(settings)

    def status(account: Account, method: str, url: str, **kwargs: Any) -> int:
        return client.open(url, method=method, headers=account.headers, **kwargs).status_code

    def upload(account: Account) -> Any:
        return client.post("/api/v1/batches", headers=account.headers, content_type="multipart/form-data",
                           data={"files": [(io.BytesIO(_png()), "a.png")], "rerun": "1"})

    own = upload(uploader)
    assert own.status_code == 201
    own_batch = own.get_json()["batch_id"]
    assert upload(radiologist).status_code == 403
    assert upload(admin).status_code == 201

    # Uploader: upload and follow their own batches, nothing else.
    assert status(uploader, "GET", f"/api/v1/batches/{own_batch}") == 200
    assert status(uploader, "GET", f"/batches/{own_batch}") == 200
    assert status(uploader, "GET", "/") == 200
    more = client.post(f"/api/v1/batches/{own_batch}/files", headers=uploader.headers,
                       content_type="multipart/form-data",
                       data={"files": [(io.BytesIO(_png()), "b.png")], "rerun": "1"})
    assert more.status_code == 201
    for method, url in (("GET", f"/api/v1/batches/{other_batch}"), ("GET", f"/batches/{other_batch}"),
                        ("POST", f"/api/v1/batches/{other_batch}/files"), ("GET", "/api/v1/worklist"),
                        ("GET", "/worklist"), ("GET", f"/api/v1/studies/{study_id}"), ("GET", f"/studies/{study_id}"),
                        ("GET", f"/studies/{study_id}/image"), ("GET", f"/studies/{study_id}/heatmaps/Effusion.png"),
                        ("GET", "/api/v1/worklist.csv"), ("GET", f"/api/v1/studies/{study_id}/export.json"),
                        ("POST", f"/api/v1/studies/{study_id}/review")):
        assert status(uploader, method, url, json={}) == 403, (method, url)

    # Radiologist: reads, reviews, exports; no uploads.
    for url in ("/api/v1/worklist", "/worklist", f"/api/v1/studies/{study_id}", f"/studies/{study_id}",
                f"/api/v1/batches/{other_batch}", f"/api/v1/batches/{own_batch}", "/api/v1/worklist.csv",
                f"/api/v1/batches/{other_batch}.csv", f"/api/v1/studies/{study_id}/export.json"):
        assert status(radiologist, "GET", url) == 200, url
    assert status(radiologist, "GET", "/") == 302  # the upload page sends them to the worklist
    assert status(radiologist, "POST", f"/api/v1/studies/{study_id}/review", json={"note": "ok"}) == 201

    # Admin: everything.
    for url in ("/", "/worklist", f"/api/v1/batches/{own_batch}", f"/api/v1/studies/{study_id}",
                "/api/v1/worklist.csv"):
        assert status(admin, "GET", url) == 200, url
    assert status(admin, "POST", f"/api/v1/studies/{study_id}/review", json={}) == 201


def test_disabled_user_and_revoked_token(settings: Settings, account_factory: Callable[..., Account]) -> None:
    from shared.accounts import find_user, revoke_tokens

    app, _ = make_app(settings, auth=False)
    client = app.test_client()
    first, second = account_factory("radiologist"), account_factory("radiologist")
    assert client.get("/api/v1/worklist", headers=first.headers).status_code == 200
    with session_for(settings) as session:
        user = find_user(session, first.username)
        assert user is not None
        user.active = False
        other = find_user(session, second.username)
        assert other is not None
        revoke_tokens(session, other)
        session.commit()
    assert client.get("/api/v1/worklist", headers=first.headers).status_code == 401
    assert client.get("/api/v1/worklist", headers=second.headers).status_code == 401


@pytest.mark.parametrize("env", [{"XRAY_ENV": "production"}, {"XRAY_DEIDENTIFY": "1"}])
def test_refuses_to_start_without_secret_key(settings: Settings, env: dict[str, str]) -> None:
    from web import create_app

    changed = settings.with_overrides(production="XRAY_ENV" in env, deidentify="XRAY_DEIDENTIFY" in env)
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        create_app(changed, celery=object())  # type: ignore[arg-type]
