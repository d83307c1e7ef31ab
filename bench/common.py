"""What the benchmarks share: the real images, the bundle, medians, the machine's load, process RSS,
and real web/worker processes on a real Redis (own queue name, only its own keys deleted)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from shared.config import PROJECT_ROOT, Settings, load_settings
from tests.service_harness import delete_queue_keys, service_env, stop_process_group  # noqa: F401 (bench API)

DATA_DIR = Path(os.environ.get("XRAY_TEST_DATA", PROJECT_ROOT.parent / "shared" / "data"))
BENCH_REDIS_URL = os.environ.get("XRAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
DEMO_BUNDLE = PROJECT_ROOT / "models" / "demo"


def nih_full_images(data_dir: Path = DATA_DIR) -> list[Path]:
    paths = sorted((data_dir / "nih-full" / "images").glob("*.png"))
    if not paths:
        raise SystemExit(f"no nih-full images under {data_dir} (set XRAY_TEST_DATA to the shared data folder)")
    return paths


def kermany_images(count: int, data_dir: Path = DATA_DIR) -> list[Path]:
    """`count` distinct kermany-224 JPEGs, in a fixed order (test split first, then train)."""
    root = data_dir / "kermany-224"
    paths = sorted(root.glob("test/*/*.jpeg")) + sorted(root.glob("train/*/*.jpeg"))
    if len(paths) < count:
        raise SystemExit(f"need {count} kermany-224 images under {root}, found {len(paths)}")
    return paths[:count]


def mixed_images(count: int) -> list[Path]:
    """Half nih-full (1024 px PNG), half kermany-224 (224 px JPEG), interleaved."""
    nih = nih_full_images()
    kermany = kermany_images(count)
    mixed = [p for pair in zip(nih * (count // len(nih) + 1), kermany, strict=False) for p in pair]
    return mixed[:count]


def ensure_bundle(bundle: Path | None, scratch: Path, input_size: int = 224) -> Path:
    """The served bundle (models/demo) when present, else an untrained one at the served size (the
    speed of a ResNet50 does not depend on its weights)."""
    if bundle is not None:
        return bundle
    if (DEMO_BUNDLE / "card.json").is_file():
        return DEMO_BUNDLE
    from shared.classifier import init_bundle

    directory = scratch / f"untrained-{input_size}"
    if not (directory / "card.json").is_file():
        init_bundle(directory, input_size=input_size, seed=0)
    return directory


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine_description() -> str:
    model = "unknown CPU"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    flags = ""
    with suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        wanted = ("avx512f", "avx512_bf16", "amx_bf16", "avx2")
        flags = ",".join(f for f in wanted if f" {f}" in text)
    cpus = len(os.sched_getaffinity(0))
    return f"{model}, {cpus} CPUs ({flags}), Python {platform.python_version()}"


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 1e6


def tree_rss_mb(pid: int) -> dict[int, float]:
    """RSS of a process and each of its descendants (a Celery main process and its pool children)."""
    import psutil

    parent = psutil.Process(pid)
    result = {}
    for proc in [parent, *parent.children(recursive=True)]:
        with suppress(psutil.Error):
            result[proc.pid] = proc.memory_info().rss / 1e6
    return result


def bench_settings(scratch: Path) -> Settings:
    """Settings on a scratch folder: SQLite database and storage there, a unique queue name."""
    return load_settings({
        "XRAY_VAR_DIR": str(scratch / "var"),
        "XRAY_QUEUE": f"xray.bench.{uuid.uuid4().hex[:8]}",
    })


@contextmanager
def process(argv: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real subprocess in its own process group, always stopped afterwards (its group only)."""
    log = log_path.open("wb")
    proc = subprocess.Popen(argv, env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield proc
    finally:
        stop_process_group(proc)
        log.close()




def worker_argv(concurrency: int, pool: str = "prefork") -> list[str]:
    return [sys.executable, "-m", "cli.main", "worker", "--pool", pool, "--concurrency", str(concurrency),
            "--loglevel", "WARNING"]


def web_argv(port: int) -> list[str]:
    """The production web server (gunicorn, 1 process x 4 threads: a 2-core machine's share)."""
    return [sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", "4", "--bind", f"127.0.0.1:{port}",
            "--log-level", "warning", "web.wsgi:app"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def bench_token(database_url: str) -> str:
    """An API token of a new token-only admin on this (migrated) database: every route but /healthz
    needs one (docs/SECURITY.md)."""
    from shared.accounts import create_user, issue_token
    from shared.db import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            user = create_user(session, f"bench-{uuid.uuid4().hex[:8]}", "admin", None)
            token = issue_token(session, user, "benchmark")
            session.commit()
    finally:
        engine.dispose()
    return token


@dataclass
class WebClient:
    """The web API over HTTP (what a browser or the CLI uses), with an API token."""

    base_url: str
    token: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def up(self) -> bool:
        import requests

        try:
            return requests.get(f"{self.base_url}/healthz", timeout=2).status_code < 500
        except requests.RequestException:
            return False

    def upload(self, paths: Sequence[Path], rerun: bool = True) -> dict:
        import requests

        files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
        response = requests.post(f"{self.base_url}/api/v1/batches", files=files, headers=self.headers,
                                 data={"rerun": "1"} if rerun else {}, timeout=600)
        if response.status_code != 201:
            raise RuntimeError(f"upload refused ({response.status_code}): {response.text[:500]}")
        return response.json()

    def counts(self, batch_id: int) -> dict[str, int]:
        import requests

        return requests.get(f"{self.base_url}/api/v1/batches/{batch_id}", headers=self.headers,
                            timeout=30).json()["counts"]


def print_table(title: str, rows: Sequence[Sequence[object]], header: Sequence[str]) -> None:
    print(f"\n## {title}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(_cell(c) for c in row) + " |")
    sys.stdout.flush()


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
