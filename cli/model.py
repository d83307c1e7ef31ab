"""`xray model init DIR`: write an UNTRAINED bundle (random weights); `xray model show DIR`: print its card;
`xray model calibrate DIR`: refit a trained bundle's calibration and thresholds on its validation split."""

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

    calibrate = actions.add_parser(
        "calibrate",
        help="refit a trained bundle's calibration and thresholds on the validation split in its card",
        description="Predict the validation and test splits recorded in DIR's card, fit per-finding "
        "Platt scaling and thresholds on validation only, and rewrite card.json (weights unchanged) with "
        "test metrics, ECE and Brier before/after, report.md, roc.png and reliability.png.",
    )
    calibrate.add_argument("directory", type=Path, metavar="DIR")
    calibrate.add_argument("--images", type=Path, required=True,
                           help="folder of NIH PNG images, flat or in subfolders (images_001/images/ ...)")
    calibrate.add_argument("--labels", type=Path, required=True, help="NIH Data_Entry file (.csv or .csv.gz)")
    calibrate.add_argument("--no-progress", action="store_true", help="no progress bars")
    calibrate.set_defaults(func=calibrate_command)


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


def calibrate_command(args: argparse.Namespace) -> int:
    from shared.classifier import BundleError, read_card
    from training.dataset import DatasetError
    from training.labels import LabelFileError, read_labels
    from training.splits import SPLIT_NAMES, Split, SplitError
    from training.train import TrainingError, calibrate_bundle

    try:
        card = read_card(args.directory)
        recorded = card.training.get("split") if card.training else None
        if not card.trained or not recorded:
            print(f"error: {args.directory} records no training split; only a trained bundle can be calibrated",
                  file=sys.stderr)
            return 2
        table = read_labels(args.labels)
        split = Split.from_dict(recorded)
        subsets = {name: table.subset(split.names(name)) for name in SPLIT_NAMES}
        result = calibrate_bundle(args.directory, args.images, subsets, progress=not args.no_progress)
    except (BundleError, DatasetError, LabelFileError, SplitError, TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    test = result["metrics"].get("calibration_test")
    if test:
        print(f"test ECE {test['before']['ece']} -> {test['after']['ece']}, "
              f"Brier {test['before']['brier']} -> {test['after']['brier']}")
    print(f"wrote {args.directory}/card.json (version {result['version']}, weights unchanged)")
    return 0
