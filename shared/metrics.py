"""Prometheus plumbing the web and the worker share (their metrics live in web/metrics.py and
worker/metrics.py).

Both run several processes (gunicorn workers, Celery's prefork pool), so both use prometheus-client's
multiprocess mode: with PROMETHEUS_MULTIPROC_DIR set *before prometheus_client is first imported*,
every process writes its counters and histograms to files in that folder and a scrape adds them up
(`MultiProcessCollector`). The folder must hold no metric files when the service starts (old files
would be counted again): `prepare_multiprocess_dir` makes or clears it. Without the variable (tests, the
development server) the metrics stay in the process's own default registry.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Latency buckets in seconds, from a cached page (milliseconds) to a slow diagnosis (a minute).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def prepare_multiprocess_dir(path: Path, env: dict[str, str] | None = None) -> Path:
    """Make `path` a folder without metric files (the client's `*.db`; nothing else is removed) and
    point PROMETHEUS_MULTIPROC_DIR at it (in `env`, default this process's environment, which the
    children it starts inherit). Refuses when this process already imported prometheus_client without
    the variable: its metrics would silently not be shared."""
    target = os.environ if env is None else env
    if target is os.environ and "prometheus_client" in sys.modules and MULTIPROC_ENV not in os.environ:
        raise RuntimeError(f"{MULTIPROC_ENV} must be set before prometheus_client is imported")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    target[MULTIPROC_ENV] = str(path)
    return path


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class _Delegate:
    """Yields another collector's metrics (the process's default registry, in single-process mode)."""

    def __init__(self, source: object) -> None:
        self._source = source

    def collect(self) -> Iterator[object]:
        yield from self._source.collect()  # type: ignore[attr-defined]


def scrape_registry(extra: Iterable[object] = ()) -> object:
    """A registry for one scrape: every process's metrics (multiprocess mode) or this process's,
    plus `extra` collectors computed now (gauges read from the database or Redis)."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_enabled():
        MultiProcessCollector(registry)
    else:
        registry.register(_Delegate(REGISTRY))  # type: ignore[arg-type]
    for collector in extra:
        registry.register(collector)  # type: ignore[arg-type]
    return registry


def exposition(registry: object) -> tuple[bytes, str]:
    """The registry in Prometheus's text format, and its content type."""
    from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4  # type: ignore[arg-type]
