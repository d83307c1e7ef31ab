"""`xray submit PATH... [--url URL] [--token T] [--rerun]`: send files, folders (recursively) and zips
to a running service, then follow the batch to completion and print what became of every file.

Files go in requests of at most `--chunk-mb` MiB and `--chunk-files` files (a request the server
refuses as too large, 413, is split in two and retried). The first request creates the batch
(POST /api/v1/batches), the rest join it (POST /api/v1/batches/<id>/files). A file whose bytes the
service has seen before is answered with its existing study (no duplicate) unless `--rerun`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"
MiB = 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("submit", help="send X-rays (files, folders, zips) to a running service",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files, folders or zips")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
    parser.add_argument("--token", help="sent as 'Authorization: Bearer TOKEN'")
    parser.add_argument("--rerun", action="store_true", help="diagnose again files the service has seen before")
    parser.add_argument("--label", help="a label for the batch")
    parser.add_argument("--chunk-mb", type=float, default=64.0, help="at most this many MiB per request (64)")
    parser.add_argument("--chunk-files", type=int, default=50, help="at most this many files per request (50)")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between batch progress checks (2)")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="stop following the batch after this many seconds (0: until it completes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    parser.set_defaults(func=run)


@dataclass
class Summary:
    batch_id: int | None = None
    new: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    not_sent: list[tuple[str, str]] = field(default_factory=list)
    final: dict[int, dict[str, Any]] = field(default_factory=dict)  # study id -> study summary


class SubmitError(Exception):
    """The service could not be reached or answered unexpectedly: the message says what to do."""


def collect(paths: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to send (folders walked recursively, sorted; dotfiles, dot-folders and __MACOSX skipped)
    and the paths that could not be used."""
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for path in paths:
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            for child in sorted(path.rglob("*")):
                parts = child.relative_to(path).parts
                if child.is_file() and not any(p.startswith(".") or p == "__MACOSX" for p in parts):
                    files.append(child)
        else:
            problems.append((str(path), "no such file or folder"))
    return files, problems


def chunked(files: list[Path], max_bytes: int, max_files: int) -> Iterator[list[Path]]:
    current: list[Path] = []
    size = 0
    for path in files:
        length = path.stat().st_size
        if current and (len(current) >= max_files or size + length > max_bytes):
            yield current
            current, size = [], 0
        current.append(path)
        size += length
    if current:
        yield current


class _ProgressBody:
    """A request body that reports how much of it was read (sent): drives the upload progress bar.
    (`len` and `tell` let requests send a Content-Length instead of chunked encoding.)"""

    def __init__(self, data: bytes, on_read: Callable[[int], None]) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._on_read = on_read

    def __len__(self) -> int:
        return len(self._data)

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size is None or size < 0 else min(len(self._data), self._pos + size)
        chunk = bytes(self._data[self._pos:end])
        self._pos = end
        if chunk:
            self._on_read(len(chunk))
        return chunk


class Client:
    def __init__(self, url: str, token: str | None) -> None:
        import requests

        self.base = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import requests

        try:
            return self.session.request(method, self.base + path, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
                                        **kwargs)
        except requests.RequestException as exc:
            raise SubmitError(f"Could not reach the service at {self.base} ({exc.__class__.__name__}). "
                              "Is it running? Check --url.") from exc

    def upload(self, batch_id: int | None, files: list[Path], form: dict[str, str],
               on_sent: Callable[[int], None]) -> tuple[int, dict[str, Any]]:
        from urllib3.filepost import encode_multipart_formdata

        fields: list[tuple[str, Any]] = [(k, v) for k, v in form.items()]
        fields += [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in files]
        body, content_type = encode_multipart_formdata(fields)
        path = "/api/v1/batches" if batch_id is None else f"/api/v1/batches/{batch_id}/files"
        response = self._request("POST", path, data=_ProgressBody(body, on_sent),
                                 headers={"Content-Type": content_type})
        try:
            answer = response.json()
        except ValueError:
            answer = {"error": f"the service answered {response.status_code} without JSON"}
        return response.status_code, answer

    def batch(self, batch_id: int) -> dict[str, Any]:
        response = self._request("GET", f"/api/v1/batches/{batch_id}")
        if response.status_code != 200:
            raise SubmitError(f"Reading batch {batch_id} failed: HTTP {response.status_code} {response.text[:200]}")
        return response.json()


def _bar(total: int, unit: str, desc: str, disable: bool, **kwargs: Any) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=disable, file=sys.stderr, dynamic_ncols=True,
                **kwargs)


def send_all(client: Client, files: list[Path], summary: Summary, form: dict[str, str], max_bytes: int,
             max_files: int, quiet: bool) -> None:
    total = sum(p.stat().st_size for p in files)
    with _bar(total, "B", "upload", quiet, unit_scale=True, unit_divisor=1024) as bar:
        queue = list(chunked(files, max_bytes, max_files))
        while queue:
            chunk = queue.pop(0)
            size = sum(p.stat().st_size for p in chunk)
            sent = 0

            def on_sent(n: int, chunk_size: int = size) -> None:
                nonlocal sent
                step = min(n, chunk_size - sent)  # multipart framing is not counted
                if step > 0:
                    sent += step
                    bar.update(step)

            bar.set_postfix_str(chunk[0].name if len(chunk) == 1 else f"{len(chunk)} files", refresh=False)
            status, answer = client.upload(summary.batch_id, chunk, form, on_sent)
            bar.update(size - sent)
            if status == 413 and len(chunk) > 1:  # the server's request limit is lower than ours: halve
                bar.update(-size)
                half = len(chunk) // 2
                queue[:0] = [chunk[:half], chunk[half:]]
                continue
            if status in (200, 201, 422):
                if answer.get("batch_id") is not None and summary.batch_id is None and status != 200:
                    summary.batch_id = int(answer["batch_id"])
                for item in answer.get("accepted", []):
                    (summary.duplicates if item.get("duplicate") else summary.new).append(item)
                summary.rejected += answer.get("rejected", [])
            else:
                reason = answer.get("error") or f"HTTP {status}"
                summary.not_sent += [(str(p), reason) for p in chunk]
                if status in (401, 403, 404, 507):  # every further request would fail the same way
                    raise SubmitError(f"The service refused the upload: {reason}")


def follow(client: Client, summary: Summary, poll_s: float, timeout_s: float, quiet: bool) -> bool:
    """Poll the batch until no study is queued or processing; True when it completed."""
    if summary.batch_id is None:
        return True
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
    batch = client.batch(summary.batch_id)
    with _bar(batch["counts"]["total"], "study", "diagnose", quiet) as bar:
        while True:
            counts = batch["counts"]
            bar.total = counts["total"]
            bar.n = counts["done"] + counts["failed"]
            bar.set_postfix(done=counts["done"], failed=counts["failed"], refresh=False)
            bar.refresh()
            if batch["complete"]:
                break
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(poll_s)
            batch = client.batch(summary.batch_id)
    summary.final = {s["id"]: s for s in batch["studies"]}
    return bool(batch["complete"])


def report(summary: Summary, complete: bool, out: Any = None) -> int:
    out = out or sys.stdout
    final = summary.final
    done = [s for s in final.values() if s["status"] == "done"]
    failed = [s for s in final.values() if s["status"] == "failed"]
    waiting = [s for s in final.values() if s["status"] in ("queued", "processing")]
    head = f"Batch {summary.batch_id}" if summary.batch_id is not None else "No new batch"
    print(f"{head}: {len(done)} done, {len(failed)} failed, {len(summary.rejected)} rejected, "
          f"{len(summary.duplicates)} already submitted"
          + (f", {len(waiting)} still waiting" if waiting else "")
          + (f", {len(summary.not_sent)} not sent" if summary.not_sent else ""), file=out)
    if failed:
        print("Failed:", file=out)
        for s in sorted(failed, key=lambda s: s["filename"]):
            print(f"  {s['filename']} (study {s['id']}): {s.get('error') or 'no reason given'}", file=out)
    if summary.rejected:
        print("Rejected:", file=out)
        for r in summary.rejected:
            print(f"  {r['filename']}: {r['reason']}", file=out)
    if summary.not_sent:
        print("Not sent:", file=out)
        for name, reason in summary.not_sent:
            print(f"  {name}: {reason}", file=out)
    if summary.duplicates:
        print("Already submitted (answered with the existing study; --rerun diagnoses them again):", file=out)
        for d in summary.duplicates:
            print(f"  {d['filename']}: study {d['id']} ({d['status']})", file=out)
    if not complete:
        print("Stopped following before the batch completed; the service keeps working on it.", file=out)
    return 0 if complete and not failed and not summary.rejected and not summary.not_sent else 1


def run(args: argparse.Namespace) -> int:
    files, problems = collect(args.paths)
    summary = Summary(not_sent=problems)
    if not files:
        print("Nothing to send: no files found in the given paths.", file=sys.stderr)
        report(summary, True)
        return 1
    form: dict[str, str] = {}
    if args.rerun:
        form["rerun"] = "1"
    if args.label:
        form["label"] = args.label
    client = Client(args.url, args.token)
    try:
        send_all(client, files, summary, form, int(args.chunk_mb * MiB), max(1, args.chunk_files), args.no_progress)
        complete = follow(client, summary, args.poll, args.timeout, args.no_progress)
    except SubmitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        report(summary, False)
        return 2
    return report(summary, complete)
