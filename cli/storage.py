"""`xray storage check [--create-bucket]`: is the configured storage (STORAGE_URL, or STORAGE_DIR) reachable
and writable? Writes a probe file, reads it back and deletes it, saying which step failed and why.
Exit 0 when all three work, 1 otherwise, 2 when the setting itself is wrong."""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from collections.abc import Callable

from shared.storage import Storage, StorageError

PROBE_FOLDER = "probes"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("storage", help="the storage of originals and heatmaps (folder or S3)")
    commands = parser.add_subparsers(dest="storage_command", metavar="ACTION", required=True)
    check = commands.add_parser("check", help="write, read back and delete a probe file in the configured storage")
    check.add_argument("--create-bucket", action="store_true",
                       help="for s3:// storage, create the bucket first if it does not exist")
    check.set_defaults(func=_check)


def probe(storage: Storage, say: Callable[[str], None] = lambda _line: None) -> str | None:
    """Write, read back and delete a small file; None when all worked, else what failed and why."""
    relpath = f"{PROBE_FOLDER}/check-{secrets.token_hex(8)}.txt"
    data = f"xray storage check {time.time()}\n".encode()
    steps: list[tuple[str, Callable[[], object]]] = [
        ("write a probe file", lambda: storage.write(relpath, data)),
        ("read it back", lambda: _same(storage.read(relpath), data)),
        ("delete it", lambda: storage.delete(relpath)),
    ]
    for name, step in steps:
        started = time.perf_counter()
        try:
            step()
        except StorageError as exc:
            return f"could not {name}: {exc}"
        say(f"  {name}: ok ({(time.perf_counter() - started) * 1000:.0f} ms)")
    return None


def _same(read: bytes, written: bytes) -> None:
    if read != written:
        raise StorageError(f"read {len(read)} bytes that differ from the {len(written)} bytes written")


def _check(args: argparse.Namespace) -> int:
    from shared.config import load_settings
    from shared.storage import make_storage
    from shared.storage_s3 import S3Storage

    try:
        storage = make_storage(load_settings())
    except ValueError as exc:
        print(f"xray storage check: {exc}", file=sys.stderr)
        return 2
    print(f"storage: {storage.description}")
    if args.create_bucket and isinstance(storage, S3Storage):
        try:
            storage.check_bucket()
            print("  bucket: exists")
        except StorageError:
            try:
                storage.create_bucket()
            except StorageError as exc:
                print(f"xray storage check: FAILED: could not create the bucket: {exc}", file=sys.stderr)
                return 1
            print("  bucket: created")
    problem = probe(storage, print)
    if problem:
        print(f"xray storage check: FAILED: {problem}", file=sys.stderr)
        return 1
    print("xray storage check: the storage is reachable and writable")
    return 0
