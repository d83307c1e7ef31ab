"""`xray model init DIR`: write an UNTRAINED bundle (random weights); `xray model show DIR`: print its card."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="create or inspect a model bundle")
    actions = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    init = actions.add_parser("init", help="write an UNTRAINED bundle with random weights (for testing only)")
    init.add_argument("directory", type=Path, metavar="DIR")
    init.add_argument("--input-size", type=int, default=224, help="square input size in pixels (default 224)")
    init.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    init.add_argument("--force", action="store_true", help="replace a bundle already in DIR")
    init.set_defaults(func=init_command)

    show = actions.add_parser("show", help="print a bundle's card.json after checking it")
    show.add_argument("directory", type=Path, metavar="DIR")
    show.set_defaults(func=show_command)


def init_command(args: argparse.Namespace) -> int:
    from shared.classifier import CARD_FILE, UNTRAINED_NOTE, init_bundle

    directory: Path = args.directory
    if (directory / CARD_FILE).exists() and not args.force:
        print(f"error: {directory} already holds a model bundle; pass --force to replace it", file=sys.stderr)
        return 2
    if not 32 <= args.input_size <= 1024:
        print("error: --input-size must be from 32 to 1024", file=sys.stderr)
        return 2
    card = init_bundle(directory, input_size=args.input_size, seed=args.seed)
    print(f"wrote {directory} (version {card.version}, input {card.input_size}x{card.input_size})")
    print(f"WARNING: {UNTRAINED_NOTE}. Train a model before using it on patients.", file=sys.stderr)
    return 0


def show_command(args: argparse.Namespace) -> int:
    from shared.classifier import BundleError, read_card

    try:
        card = read_card(args.directory)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(card.to_json())
    if not card.trained:
        print(f"WARNING: {args.directory} is UNTRAINED: random weights, results are meaningless", file=sys.stderr)
    return 0
