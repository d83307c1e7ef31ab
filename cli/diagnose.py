"""`xray diagnose FILE... [--model DIR] [--out DIR]`: diagnose files locally, one JSON object per line.

A file that cannot be read prints a JSON error for that file and the others still run; the exit
code is 1 when any file failed. With --out, an overlay PNG is written per positive finding (or for
the top finding when none is positive). Results of an UNTRAINED bundle say so, loudly.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.classifier import Classifier
    from shared.config import ImageLimits
    from shared.diagnosis import Diagnosis
    from shared.images import XRayImage

UNTRAINED_WARNING = "UNTRAINED model: random weights, results are meaningless; do not use them for patients"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("diagnose", help="diagnose X-ray files locally (JSON lines on stdout)")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="PNG, JPEG or DICOM files")
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: MODEL_DIR setting)")
    parser.add_argument("--out", type=Path, default=None, help="folder for overlay PNGs (none when omitted)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shared.config import load_settings

    settings = load_settings()
    model_dir: Path = args.model or settings.model_dir
    classifier = _load_classifier(model_dir)
    if classifier is None:
        return 2
    if not classifier.trained:
        print(f"WARNING: {model_dir}: {UNTRAINED_WARNING}", file=sys.stderr)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for result in _diagnose_files(classifier, model_dir, args.files, settings.limits, args.out,
                                  max(1, args.batch_size)):
        failed += "error" in result
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


def _load_classifier(model_dir: Path) -> Classifier | None:
    from shared.classifier import BundleError, Classifier

    if not model_dir.exists():
        print(
            f"error: no model bundle at {model_dir}. Run `xray model init {model_dir}` for an untrained "
            "bundle (results meaningless), train one, or pass --model DIR.",
            file=sys.stderr,
        )
        return None
    try:
        return Classifier.load(model_dir)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _diagnose_files(
    classifier: Classifier, model_dir: Path, files: Sequence[Path], limits: ImageLimits, out: Path | None,
    batch_size: int,
) -> Iterator[dict[str, Any]]:
    from shared.diagnosis import Diagnoser
    from shared.frontal import FrontalReference

    diagnoser = Diagnoser(classifier, FrontalReference.load(model_dir, classifier.card.frontal))
    used_names: set[str] = set()
    for chunk in _chunks(files, batch_size):
        loaded = [_read(path, limits) for path in chunk]
        images = [image for image in loaded if not isinstance(image, str)]
        diagnoses = iter(diagnoser.diagnose_many(images))
        for path, image in zip(chunk, loaded, strict=True):
            if isinstance(image, str):
                yield {"file": str(path), "error": image}
                continue
            diagnosis = next(diagnoses)
            heatmaps = _write_overlays(path, image, diagnosis, out, used_names) if out is not None else {}
            yield _result(path, image, diagnosis, heatmaps)


def _read(path: Path, limits: ImageLimits) -> XRayImage | str:
    """The decoded image, or a message for the person who gave the file."""
    from shared.images import InvalidImage, read_image_file

    try:
        return read_image_file(path, limits)
    except InvalidImage as exc:
        return str(exc)
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"could not read the file: {exc.strerror or exc}"


def _result(path: Path, image: XRayImage, diagnosis: Diagnosis, heatmaps: dict[str, str]) -> dict[str, Any]:
    metadata = image.info.metadata
    result: dict[str, Any] = {
        "file": str(path),
        "format": image.info.format,
        "width": image.width,
        "height": image.height,
        "dicom": None if metadata is None else metadata.as_dict(),
        **diagnosis.as_dict(),
        "heatmaps": heatmaps,
    }
    if not diagnosis.model_trained:
        result["warning"] = UNTRAINED_WARNING
    return result


def _write_overlays(
    path: Path, image: XRayImage, diagnosis: Diagnosis, out: Path, used_names: set[str]
) -> dict[str, str]:
    from shared.diagnosis import heatmap_labels
    from shared.gradcam import overlay_png

    stem = _unique_stem(path.stem, used_names)
    written: dict[str, str] = {}
    for label in heatmap_labels(diagnosis):
        finding = diagnosis.finding(label)
        target = out / f"{stem}.{label}.png"
        target.write_bytes(overlay_png(image.pixels, finding.cam, finding.box))
        written[label] = str(target)
    return written


def _unique_stem(stem: str, used: set[str]) -> str:
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate
