"""`xray pretrain`: pretrain the ResNet50 backbone on paediatric chest X-rays (train split only)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.train import _input_size, _positive_int


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain the ResNet50 backbone on paediatric chest X-rays (Kermany, train split only)",
        description="Train the ResNet50 backbone on the train split of the Kermany paediatric chest "
        "X-rays (normal / bacterial / viral pneumonia), choose the epoch on held-out train patients, "
        "and write OUT/backbone.weights.h5 (for `xray train --weights`) and OUT/pretraining.json.",
    )
    parser.add_argument("--images", type=Path, required=True,
                        help="the data set folder, holding labels.csv (path, split, label, pneumonia_type)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--image-size", type=_input_size, default=64, help="input size in pixels (default 64)")
    parser.add_argument("--epochs", type=_positive_int, default=20, help="epochs at most (default 20)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="batch size (default 32)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--holdout", type=_fraction, default=0.1,
                        help="share of train patients held out to choose the epoch (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                        help="stop after the epoch that would otherwise overrun this many minutes")
    parser.add_argument("--no-augment", action="store_true", help="no augmentation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from training.dataset import DatasetError
    from training.pretrain import BACKBONE_FILE, PretrainConfig, PretrainError, pretrain

    config = PretrainConfig(
        data_dir=args.images,
        out_dir=args.out,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        holdout=args.holdout,
        seed=args.seed,
        time_budget_min=args.time_budget,
        augment=not args.no_augment,
        progress=not args.no_progress,
    )
    try:
        info = pretrain(config)
    except (PretrainError, DatasetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    best = info["best_held_out"]
    print(f"wrote {args.out / BACKBONE_FILE} (epoch {info['best_epoch']} of {info['epochs_run']}: held-out "
          f"accuracy {best['accuracy']}, mean AUROC {best['mean_auroc']}); use it with "
          f"`xray train --weights {args.out / BACKBONE_FILE}`")
    return 0
