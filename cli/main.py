"""`xray`: one entry point, one module per subcommand (each keeps TensorFlow imports inside functions)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cli import db, diagnose, dicom, evaluate, model, pretrain, storage, submit, train, up, user, web, worker

# Each module has `register(subparsers) -> None` and sets `func` on its parser; listed in help order.
SUBCOMMANDS = (diagnose, model, db, up, worker, web, dicom, storage, pretrain, train, evaluate, submit, user)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xray", description="Diagnose My X-Ray: chest X-ray triage.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from shared.logs import configure_logging

    try:
        configure_logging(logging.WARNING)  # `xray worker` and `xray web` raise it to INFO
    except ValueError as exc:
        print(f"xray: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
