"""The web process (Flask): upload, batch progress, study results, the worklist, /healthz; every
route but /healthz, /login and static files behind a login (web/auth.py), audited (web/audit_hooks.py).

It never imports TensorFlow or `worker`: studies are enqueued by task name through a Celery
producer app (shared.queue). The app does not create tables; `xray db upgrade` does.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from flask import Flask

from shared.config import Settings, load_settings
from shared.db import make_engine, make_session_factory

if TYPE_CHECKING:
    from celery import Celery

# Many files in one multipart request: Werkzeug's default of 1,000 parts is too few for a day's X-rays.
MAX_FORM_PARTS = 10_000


def create_app(settings: Settings | None = None, celery: Celery | None = None) -> Flask:
    """Build the app. `settings` default to the environment; `celery` (the producer) defaults to
    `shared.queue.make_celery(settings, settings.redis_url)`; tests inject one."""
    from shared.queue import make_celery
    from shared.storage import make_storage
    from web import api, dicomweb, health, media, model_page, ops, pages, results, users
    from web.audit_hooks import register_audit
    from web.auth import check_secret_key, register_auth
    from web.context import EXTENSION_KEY, Services, close_db_session
    from web.errors import register_error_handlers
    from web.metrics import register_metrics
    from web.params import register_converters
    from web.request import install as install_request_class
    from web.security import register_security

    settings = settings or load_settings()
    check_secret_key(settings)  # production mode and de-identification need SECRET_KEY: fail now, clearly
    if celery is None:
        if not settings.redis_url:
            raise RuntimeError("REDIS_URL is not set: the web process needs the Redis broker the workers use "
                               "(`xray up` starts one and sets it).")
        celery = make_celery(settings, settings.redis_url, name="xray-web")
        # A producer must not hang a request when the broker is down: retry briefly, then the
        # study stays queued in the database for the reconciler.
        celery.conf.task_publish_retry_policy = {
            "max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1,
        }

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key or secrets.token_hex(32),
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        MAX_FORM_PARTS=MAX_FORM_PARTS,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    install_request_class(app, settings.var_dir)  # uploads wait in a private folder; 413s say why
    register_converters(app)  # ids beyond the database's range are 404, not an overflow
    engine = make_engine(settings.database_url)
    app.extensions[EXTENSION_KEY] = Services(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        storage=make_storage(settings),
        celery=celery,
    )
    app.teardown_appcontext(close_db_session)
    register_security(app)  # the cross-site guard runs first, then the login gate (web/auth.py)
    register_auth(app, settings)
    register_error_handlers(app)
    for blueprint in (api.bp, pages.bp, media.bp, health.bp, dicomweb.bp, ops.bp, users.bp, results.bp, model_page.bp):
        app.register_blueprint(blueprint)
    register_audit(app)
    trust_proxies(app, settings.trusted_proxies)
    register_metrics(app)
    return app


def trust_proxies(app: Flask, hops: int) -> None:
    """Behind `hops` reverse proxies, take the client's address and scheme from their X-Forwarded-For
    and X-Forwarded-Proto (the entries the trusted proxies added, never one a client wrote); with 0,
    from the connection only. The login limit and the audit's addresses read `request.remote_addr`."""
    if hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
