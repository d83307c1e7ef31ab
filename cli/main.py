"""`xray`: one entry point, one module per subcommand (each keeps TensorFlow imports inside functions)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Subcommand name -> module with `register(subparsers) -> None`; the module sets `func` on its parser.
SUBCOMMANDS: dict[str, str] = {
    "diagnose": "cli.diagnose",
    "model": "cli.model",
    "db": "cli.db",
    "up": "cli.up",
    "worker": "cli.worker",
    "web": "cli.web",
    "train": "cli.train",
    "evaluate": "cli.evaluate",
    "submit": "cli.submit",
    "user": "cli.user",
    "storage": "cli.storage",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xray", description="Diagnose My X-Ray: chest X-ray triage.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # subcommand not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
