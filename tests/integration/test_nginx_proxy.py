"""Debian's nginx with the repository's own configuration (deploy/nginx/xray.conf.template, the file
docker-compose.yml uses) in front of a real gunicorn serving the app: slow clients, sending their
headers or an authenticated upload body byte by byte, do not stall `/healthz`; the app takes the
client's address from nginx's header, not from one the client wrote; the body limit is the app's."""

from __future__ import annotations

import grp
import http.client
import io
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import requests
from PIL import Image
from sqlalchemy import select

from cli.up import free_port
from migrations import upgrade
from shared.config import PROJECT_ROOT, MiB, Settings
from shared.models import AuditEvent
from tests.conftest import Account
from tests.service_harness import service_env, stop_process_group, wait_until
from tests.web.support import session_for

pytestmark = pytest.mark.slow

TEMPLATE = PROJECT_ROOT / "deploy" / "nginx" / "xray.conf.template"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
SLOW_CLIENTS = 6  # of each kind: 12 connections, more than gunicorn's 2 processes x 4 threads
SLOW_FOR_S = 8.0  # under client_header_timeout (10 s): nginx must not need to drop them to stay up
PROBE_BUDGET_S = 2.5  # a stalled gunicorn answers in 5 s or never; behind nginx every probe took < 0.7 s
CLIENT_ADDRESS = "127.0.0.3"  # a loopback address of its own, so the client differs from nginx


def render_template(values: dict[str, str]) -> str:
    """What the nginx image's envsubst does with the template (it fills only XRAY_* variables)."""
    text = TEMPLATE.read_text()
    missing = sorted(set(re.findall(r"\$\{(XRAY_[A-Z_]+)\}", text)) - set(values))
    assert not missing, f"no value for {missing}"
    return re.sub(r"\$\{(XRAY_[A-Z_]+)\}", lambda m: values[m.group(1)], text)


def main_conf(folder: Path, site: Path) -> str:
    """The `http` frame the nginx image provides, with every path of its own under `folder`."""
    user = f"{pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name}"
    temp = "\n".join(f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                              "uwsgi", "scgi"))
    return (f"user {user};\ndaemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\n"
            f"error_log {folder / 'error.log'} info;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n    access_log {folder / 'access.log'};\n{temp}\n    include {site};\n}}\n")


@contextmanager
def running(argv: list[str], env: dict[str, str] | None, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            stop_process_group(proc)


def answers(url: str) -> bool:
    with suppress(requests.RequestException):
        return requests.get(url, timeout=2).status_code in (200, 503)
    return False


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (128, 128), shade).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(content: bytes, name: str = "slow.png") -> tuple[str, bytes]:
    boundary = "xrayboundary7d1c"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


def slow_client(port: int, head: bytes, trickle: bytes, stop: threading.Event) -> None:
    """Send `head` at once, then `trickle` one byte every 0.2 s until told to stop."""
    with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for byte in trickle:
            if stop.wait(0.2):
                return
            sock.sendall(bytes([byte]))


def start_slow_clients(port: int, token: str, stop: threading.Event) -> list[threading.Thread]:
    header_head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
    content_type, body = multipart(png(40))
    upload_head = (f"POST /api/v1/batches HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
                   f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    jobs: list[tuple[bytes, bytes]] = [(header_head, b"a" * 1000)] * SLOW_CLIENTS + [(upload_head, body)] * SLOW_CLIENTS
    threads = [threading.Thread(target=slow_client, args=(port, head, trickle, stop), daemon=True)
               for head, trickle in jobs]
    for thread in threads:
        thread.start()
    return threads


def probe(url: str, seconds: float) -> list[tuple[float, int | str]]:
    """GET url twice a second for `seconds`: (time taken, status or error) of each."""
    results: list[tuple[float, int | str]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        began = time.monotonic()
        try:
            status: int | str = requests.get(url, timeout=5).status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        results.append((time.monotonic() - began, status))
        time.sleep(max(0.0, 0.5 - (time.monotonic() - began)))
    return results


def upload_from(address: str, port: int, token: str, forwarded_for: str) -> int:
    """An upload sent from `address` that claims, in its own X-Forwarded-For, to come from elsewhere."""
    content_type, body = multipart(png(60), "fast.png")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(address, 0))
    try:
        conn.request("POST", "/api/v1/batches", body=body, headers={
            "Authorization": f"Bearer {token}", "Content-Type": content_type, "X-Forwarded-For": forwarded_for})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_template_limit_is_the_apps() -> None:
    text = TEMPLATE.read_text()
    (megabytes,) = re.findall(r"client_max_body_size (\d+)m;", text)
    assert int(megabytes) * MiB == Settings().max_upload_bytes
    assert f"larger than the {Settings().max_upload_bytes // MiB} MiB limit per request" in text
    assert re.search(r"proxy_request_buffering on;", text) and re.search(r"proxy_buffering on;", text)


@pytest.mark.skipif(NGINX is None, reason="nginx not installed: Debian package nginx (or nginx-light)")
def test_slow_clients_do_not_stall_the_web_behind_nginx(settings: Settings, redis_url: str, tmp_path: Path,
                                                        account_factory: Callable[..., Account]) -> None:
    upgrade(settings.database_url)
    uploader = account_factory("uploader")
    web_port, nginx_port = free_port(), free_port()
    site = tmp_path / "xray.conf"
    site.write_text(render_template({"XRAY_LISTEN": f"127.0.0.1:{nginx_port}",
                                     "XRAY_UPSTREAM": f"127.0.0.1:{web_port}"}))
    conf = tmp_path / "nginx.conf"
    conf.write_text(main_conf(tmp_path, site))
    env = service_env(settings, redis_url, tmp_path, XRAY_TRUSTED_PROXIES="1",
                      SECRET_KEY="nginx-test-secret-key-0123456789abcdef")
    # gunicorn as docker-compose.yml runs it.
    gunicorn = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{web_port}", "--workers", "2",
                "--threads", "4", "--timeout", "120", "web.wsgi:app"]
    assert NGINX is not None
    with running(gunicorn, env, tmp_path / "gunicorn.log"), \
            running([NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)], None,
                    tmp_path / "nginx.out"):
        healthz = f"http://127.0.0.1:{nginx_port}/healthz"
        wait_until(lambda: answers(healthz), 60,
                   describe=lambda: (tmp_path / "error.log").read_text(errors="replace")[-2000:]
                   + (tmp_path / "gunicorn.log").read_text(errors="replace")[-2000:])

        stop = threading.Event()
        threads = start_slow_clients(nginx_port, uploader.token, stop)
        try:
            time.sleep(1.0)  # every slow client connected and sending
            results = probe(healthz, SLOW_FOR_S)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
        slow = [(round(took, 2), status) for took, status in results
                if took > PROBE_BUDGET_S or status not in (200, 503)]
        assert len(results) >= 10 and slow == [], f"{len(slow)} of {len(results)} probes failed: {slow}"

        # The client's address is the one nginx saw, not the one it claimed.
        assert upload_from(CLIENT_ADDRESS, nginx_port, uploader.token, "198.51.100.66") == 201
        with session_for(settings) as session:
            assert session.scalars(select(AuditEvent.ip).where(AuditEvent.action == "upload")).all() == [
                CLIENT_ADDRESS]

        # Over the app's limit: nginx refuses from the headers alone, with the app's own message.
        too_big = requests.post(f"http://127.0.0.1:{nginx_port}/api/v1/batches", data=b"",
                                headers={"Content-Length": str(Settings().max_upload_bytes + 1),
                                         "Authorization": f"Bearer {uploader.token}"}, timeout=10)
        assert too_big.status_code == 413 and "send fewer files" in json.loads(too_big.text)["error"]
