"""What the benchmarks share: the real images, the bundle, medians, the machine, tables, and the
service's own command line (`python -m cli.main ...`), run from a given source tree, for what a
benchmark needs from the service: a migrated database, an API token, web and worker processes."""

from __future__ import annotations

import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("XRAY_TEST_DATA", PROJECT_ROOT.parent / "shared" / "data"))
BENCH_REDIS_URL = os.environ.get("XRAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
DEMO_BUNDLE = PROJECT_ROOT / "models" / "demo"


def nih_full_images() -> list[Path]:
    paths = sorted((DATA_DIR / "nih-full" / "images").glob("*.png"))
    if not paths:
        raise SystemExit(f"no nih-full images under {DATA_DIR} (set XRAY_TEST_DATA to the shared data folder)")
    return paths


def kermany_images(count: int) -> list[Path]:
    """`count` distinct kermany-224 JPEGs, in a fixed order (test split first, then train)."""
    root = DATA_DIR / "kermany-224"
    paths = sorted(root.glob("test/*/*.jpeg")) + sorted(root.glob("train/*/*.jpeg"))
    if len(paths) < count:
        raise SystemExit(f"need {count} kermany-224 images under {root}, found {len(paths)}")
    return paths[:count]


def mixed_images(count: int) -> list[Path]:
    """Half nih-full (1024 px PNG), half kermany-224 (224 px JPEG), interleaved."""
    nih = nih_full_images()
    pairs = zip(nih * (count // len(nih) + 1), kermany_images(count), strict=False)
    return [p for pair in pairs for p in pair][:count]


def ensure_bundle(bundle: Path | None, scratch: Path) -> Path:
    """The given bundle, else models/demo, else an untrained one at 224 px (a ResNet50's speed does
    not depend on its weights), made with the service's own command."""
    if bundle is not None:
        return bundle.resolve()
    if (DEMO_BUNDLE / "card.json").is_file():
        return DEMO_BUNDLE
    directory = scratch / "untrained-224"
    if not (directory / "card.json").is_file():
        xray(PROJECT_ROOT, tree_env(PROJECT_ROOT), "model", "init", str(directory))
    return directory


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def machine_description() -> str:
    text = ""
    with suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 "unknown CPU")
    flags = ",".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in text)
    return (f"{model}, {len(os.sched_getaffinity(0))} CPUs ({flags}), Python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.2f}")


def print_table(title: str, rows: Sequence[Sequence[object]], header: Sequence[str]) -> None:
    print(f"\n## {title}\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(_cell(c) for c in row) + " |")
    sys.stdout.flush()


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


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


# ----------------------------------------------------------------------------- the service, from a source tree


def tree_env(tree: Path, **extra: str) -> dict[str, str]:
    """The environment for the service's processes from source tree `tree` (its own C extensions,
    built in place there)."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "STORAGE_DIR")}
    env.update({"PYTHONPATH": str(tree), "OPENBLAS_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **extra})
    return env


def xray(tree: Path, env: dict[str, str], *args: str) -> str:
    """`xray ARGS...` from `tree`; its standard output. Fails with the command's own message."""
    done = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=tree, env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"`xray {' '.join(args)}` in {tree} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def api_token(tree: Path, env: dict[str, str]) -> str:
    """A new API token of a new token-only admin on the database `env` names (migrated first)."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    xray(tree, env, "user", "add", name, "--role", "admin", "--no-password")
    return xray(tree, env, "user", "token", name, "--label", "benchmark").split()[0]


@contextmanager
def process(argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = PROJECT_ROOT,
            stop: signal.Signals = signal.SIGTERM) -> Iterator[subprocess.Popen[bytes]]:
    """A real subprocess in its own process group; afterwards its group gets `stop`, then SIGKILL."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            for sig, grace_s in ((stop, 60.0), (signal.SIGKILL, 10.0)):
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace_s)
                    break


@dataclass
class WebClient:
    """The web API over HTTP (what a browser or `xray submit` uses), with an API token."""

    base_url: str
    token: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def up(self) -> bool:
        import requests

        try:
            return requests.get(f"{self.base_url}/healthz", timeout=2).status_code < 600
        except requests.RequestException:
            return False

    def upload(self, paths: Sequence[Path], batch_id: int | None = None) -> dict:
        """One request: a new batch, or files added to `batch_id`; always new studies (rerun=1)."""
        import requests

        files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
        url = f"{self.base_url}/api/v1/batches" + (f"/{batch_id}/files" if batch_id else "")
        response = requests.post(url, files=files, headers=self.headers, data={"rerun": "1"}, timeout=600)
        if response.status_code != 201 or response.json()["rejected"]:
            raise RuntimeError(f"upload refused ({response.status_code}): {response.text[:500]}")
        return response.json()

    def counts(self, batch_id: int) -> dict[str, int]:
        import requests

        return requests.get(f"{self.base_url}/api/v1/batches/{batch_id}", headers=self.headers,
                            timeout=30).json()["counts"]
