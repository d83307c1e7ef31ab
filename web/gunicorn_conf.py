"""Gunicorn settings for production: `gunicorn -c python:web.gunicorn_conf web.wsgi:app`.

- Metrics: with PROMETHEUS_MULTIPROC_DIR set, the master clears the folder's metric files when it
  starts (files of an earlier run would be counted again) and tells the client when a worker process
  exits. Without the variable the hooks do nothing.
- Logs: the access log line never holds the query string; with XRAY_LOG_FORMAT=json gunicorn's own
  loggers (the master's, the access log) write JSON lines like the app's (shared.logs).
Other gunicorn settings stay on the command line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shared.logs import ACCESS_LOG_FORMAT, log_format
from shared.metrics import MULTIPROC_ENV

access_log_format = ACCESS_LOG_FORMAT  # never the query string (a search may name a patient)

if log_format() == "json":
    _console = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "shared.logs.JsonFormatter"}},
        "handlers": {"console": _console},
        "loggers": {name: {"handlers": ["console"], "level": "INFO", "propagate": False}
                    for name in ("gunicorn.error", "gunicorn.access")},
    }


def on_starting(_server: Any) -> None:
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        from shared.metrics import prepare_multiprocess_dir

        prepare_multiprocess_dir(Path(folder))


def child_exit(_server: Any, worker: Any) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
