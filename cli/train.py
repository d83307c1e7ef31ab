"""`xray train`: train the ResNet50 classifier on NIH ChestX-ray14 and write a model bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _input_size(text: str) -> int:
    value = int(text)
    if not 32 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"must be from 32 to 1024, got {value}")
    return value


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.6,0.2,0.2, got {text!r}") from None
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"expected three non-negative shares summing to 1, got {text!r}")
    return values  # type: ignore[return-value]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the classifier on NIH ChestX-ray14 and write a model bundle",
        description="Train ResNet50 on NIH ChestX-ray14 images with a patient-wise split, choose "
        "thresholds on validation, evaluate on test, and write models/NAME (weights + card.json).",
    )
    parser.add_argument("--images", type=Path, required=True,
                        help="folder of NIH PNG images, flat or in subfolders (NIH's images_001/images/ ... "
                        "images_012/images/): each name is looked up in the whole tree")
    parser.add_argument("--labels", type=Path, required=True, help="NIH Data_Entry file (.csv or .csv.gz)")
    parser.add_argument("--split-lists", type=Path, default=None,
                        help="folder with NIH's train_val_list.txt and test_list.txt "
                        "(default: a deterministic 70/10/20 split by hashed Patient ID)")
    parser.add_argument("--split-fractions", type=_fractions, default=(0.7, 0.1, 0.2), metavar="TRAIN,VAL,TEST",
                        help="patient shares of the hashed split without --split-lists (default 0.7,0.1,0.2); "
                        "the test share is the top of the hash range, so 0.6,0.2,0.2 keeps the same test set "
                        "and gives validation twice the patients")
    parser.add_argument("--out", type=Path, default=Path("models/demo"), help="bundle folder (default models/demo)")
    parser.add_argument("--image-size", type=_input_size, default=224, help="input size in pixels (default 224)")
    parser.add_argument("--epochs", type=_positive_int, default=10, help="epochs (default 10)")
    parser.add_argument("--batch-size", type=_positive_int, default=16,
                        help="images per step on each device (default 16; with several GPUs the global batch "
                        "is this times their number)")
    parser.add_argument("--weights", default="none",
                        help="initial weights: 'imagenet' (needs internet), 'none' (from scratch, the "
                        "default), a Keras ResNet50 notop .h5 file, or a bundle folder")
    parser.add_argument("--fine-tune-layers", type=_positive_int, default=None,
                        help="train only the last N layers with weights (default: all; ignored from scratch)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--max-pos-weight", type=float, default=None,
                        help="cap each finding's positive weight (negatives/positives in train; default no cap)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="where checkpoints go (default var/checkpoints/NAME)")
    parser.add_argument("--steps-per-epoch", type=_positive_int, default=None,
                        help="end each epoch after this many batches (default: one pass over the training "
                        "split); the stream keeps reshuffling, so short epochs still cover all images")
    parser.add_argument("--precision", choices=["auto", "float32", "mixed"], default="auto",
                        help="'mixed': float16 compute with float32 weights and loss (fast on GPUs); "
                        "default 'auto': mixed on GPUs, float32 on the CPU. The bundle is float32 either way")
    parser.add_argument("--gpus", default="auto",
                        help="how many GPUs to use (default 'auto': all visible; 0: CPU only). With more than "
                        "one, each gets --batch-size images per step (MirroredStrategy)")
    parser.add_argument("--cpu-replicas", type=_positive_int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --checkpoint-dir")
    parser.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                        help="stop after the epoch that would otherwise overrun this many minutes")
    parser.add_argument("--clahe", action="store_true",
                        help="contrast-limited histogram equalisation (OpenCV) after the resize; recorded in the "
                        "card, so the service applies it too (needs opencv-python-headless)")
    parser.add_argument("--no-augment", action="store_true", help="no augmentation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--force", action="store_true", help="replace a bundle already in --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shared.classifier import CARD_FILE, BundleError

    if (args.out / CARD_FILE).exists() and not args.force and not args.resume:
        print(f"error: {args.out} already holds a model bundle; pass --force to replace it", file=sys.stderr)
        return 2
    if args.weights == "none" and args.fine_tune_layers is not None:
        print("note: --fine-tune-layers is ignored when training from scratch (all layers train)", file=sys.stderr)

    from training.dataset import DatasetError
    from training.devices import DeviceError
    from training.labels import LabelFileError
    from training.model import WeightsError
    from training.splits import SplitError
    from training.train import TrainConfig, TrainingError, train

    project_root = Path(__file__).resolve().parent.parent
    config = TrainConfig(
        images_dir=args.images,
        labels_path=args.labels,
        out_dir=args.out,
        split_lists=args.split_lists,
        split_fractions=args.split_fractions,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        weights=args.weights,
        fine_tune_layers=args.fine_tune_layers,
        learning_rate=args.learning_rate,
        seed=args.seed,
        checkpoint_dir=args.checkpoint_dir or project_root / "var" / "checkpoints" / args.out.name,
        resume=args.resume,
        time_budget_min=args.time_budget,
        steps_per_epoch=args.steps_per_epoch,
        precision=args.precision,
        gpus=args.gpus,
        cpu_replicas=args.cpu_replicas,
        max_pos_weight=args.max_pos_weight,
        augment=not args.no_augment,
        clahe=args.clahe,
        progress=not args.no_progress,
    )
    try:
        card = train(config)
    except (WeightsError, TrainingError, DatasetError, DeviceError, LabelFileError, SplitError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from training.pretrain import record_pretraining

    if record_pretraining(args.out, args.weights):
        print(f"recorded the pretraining of {args.weights} in {args.out / CARD_FILE}")
    test = card["metrics"].get("test", {})
    print(f"wrote {args.out} (version {card['version']}); validation-chosen thresholds in card.json")
    if test:
        print(f"test mean AUROC {test['mean_auroc']} over {test['mean_auroc_findings']} findings "
              f"({test['n_images']} images); report: {args.out / 'report.md'}")
    return 0
