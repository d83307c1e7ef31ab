"""`xray evaluate MODEL_DIR`: per-finding AUROC with 95% CIs, F1 at the card's thresholds,
localisation against radiologist boxes, a ROC PNG and a Markdown report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a model bundle on a patient-disjoint split",
        description="Evaluate MODEL_DIR on the split recorded in its card (else the deterministic "
        "patient-hash split or NIH's lists). Thresholds are the card's (chosen on validation).",
    )
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    parser.add_argument("--images", type=Path, required=True,
                        help="folder of NIH PNG images, flat or in subfolders (images_001/images/ ...)")
    parser.add_argument("--labels", type=Path, required=True, help="NIH Data_Entry file (.csv or .csv.gz)")
    parser.add_argument("--bbox", type=Path, default=None, help="NIH BBox_List_2017 file for localisation")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"],
                        help="which split (default test)")
    parser.add_argument("--split-lists", type=Path, default=None,
                        help="NIH's split lists, used only when the card records no split")
    parser.add_argument("--out", type=Path, default=None,
                        help="write report.md, roc.png and metrics.json here (default: print only)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shared.classifier import BundleError, read_card
    from training.dataset import DatasetError
    from training.evaluate import compare_metrics, evaluate_bundle
    from training.labels import LabelFileError
    from training.report import markdown, write_report
    from training.splits import SplitError

    try:
        card = read_card(args.model_dir)
        evaluation = evaluate_bundle(
            args.model_dir, args.images, args.labels, args.split, args.bbox, args.split_lists,
            progress=not args.no_progress,
        )
    except (BundleError, DatasetError, LabelFileError, SplitError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(markdown(card, evaluation.metrics, roc_file=None))
    if args.out is not None:
        report, roc = write_report(card, evaluation, args.out)
        (args.out / "metrics.json").write_text(json.dumps(evaluation.metrics, indent=2) + "\n")
        print(f"\nwrote {report}, {roc} and {args.out / 'metrics.json'}")
    recorded = card.metrics.get(args.split) if card.metrics else None
    if recorded:
        differences = compare_metrics(recorded, evaluation.metrics)
        if differences:
            print(f"\nWARNING: {len(differences)} value(s) differ from card.json:", file=sys.stderr)
            for line in differences[:20]:
                print(f"  {line}", file=sys.stderr)
        else:
            print(f"\nreproduces the {args.split} metrics recorded in card.json")
    if not card.trained:
        print("WARNING: this bundle is UNTRAINED: random weights, results are meaningless", file=sys.stderr)
    return 0
