"""Logging for every process (web, worker, CLI), set up in one place: `configure_logging`.

`XRAY_LOG_FORMAT=json` writes one JSON object per line (time, level, logger, process, message, and
study_id / batch_id when the code runs inside `log_context`); anything else gives plain text lines.
Log messages never carry patient identifiers (the code logs ids and content hashes only), so the
JSON form adds nothing beyond the ids of this module's context.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

LOG_FORMAT_ENV = "XRAY_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"
CONTEXT_FIELDS = ("study_id", "batch_id")
# Loggers that servers configure with handlers of their own: in JSON mode their handlers are given
# the JSON formatter too, so that every line a process writes is one object.
SERVER_LOGGERS = ("gunicorn.error", "gunicorn.access", "celery", "celery.worker", "celery.app.trace")

# Gunicorn's access log line without the query string or the referrer: a worklist search (`?q=`) may
# carry a patient ID. (`xray up` passes it on gunicorn's command line; web/gunicorn_conf.py sets it.)
ACCESS_LOG_FORMAT = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'

_context: ContextVar[dict[str, int] | None] = ContextVar("xray_log_context", default=None)


def current_context() -> dict[str, int]:
    """The ids the code is working on now (empty outside `log_context`)."""
    return dict(_context.get() or {})


@contextmanager
def log_context(**ids: int | None) -> Iterator[None]:
    """Within the block, every record carries these ids (study_id, batch_id); None values are left out."""
    token = set_log_context(**ids)
    try:
        yield
    finally:
        reset_log_context(token)


def add_log_context(**ids: int | None) -> None:
    """Add ids to the current context, inside a `log_context` block whose end removes them."""
    set_log_context(**ids)


def set_log_context(replace: bool = False, **ids: int | None) -> object:
    """For hooks that cannot wrap a block (a web request): set the ids (`replace`: drop those set
    before); pass the result to `reset_log_context`."""
    base = {} if replace else current_context()
    return _context.set({**base, **{k: int(v) for k, v in ids.items() if v is not None}})


def reset_log_context(token: object) -> None:
    _context.reset(token)  # type: ignore[arg-type]


class ContextFilter(logging.Filter):
    """Copies the current ids onto each record (as attributes), for any formatter to use."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in current_context().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, process, message, ids, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is None:
                value = current_context().get(key)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_format(env: dict[str, str] | None = None) -> str:
    """'json' or 'text' from XRAY_LOG_FORMAT (an unknown value is an error an operator must see)."""
    raw = ((os.environ if env is None else env).get(LOG_FORMAT_ENV) or "text").strip().lower()
    if raw not in {"json", "text"}:
        raise ValueError(f"{LOG_FORMAT_ENV} must be 'json' or 'text', got {raw!r}")
    return raw


def make_formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: int | str = logging.INFO, fmt: str | None = None) -> None:
    """Send every logger's records to stderr in the configured format (idempotent: replaces the root
    handler this function installed before, keeps handlers others added, e.g. pytest's)."""
    fmt = fmt or log_format()
    formatter = make_formatter(fmt)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_xray", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._xray = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)  # Python warnings become records too, not stray stderr lines
    if fmt == "json":
        for name in SERVER_LOGGERS:
            for server_handler in logging.getLogger(name).handlers:
                server_handler.setFormatter(formatter)
