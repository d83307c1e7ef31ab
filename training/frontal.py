"""Fit the frontal-chest-X-ray check (`shared.frontal`) of a bundle, and measure what it flags.

The reference is fitted on the training split's thumbnails and the limit is the LIMIT_QUANTILE
quantile of the validation split's distances (about one validation X-ray in 200 lies beyond it);
each split at most MAX_REFERENCE_IMAGES, a fixed sample, so the fit's memory does not grow with the
data set.

`python -m training.frontal MODEL_DIR --data ../shared/data` reports, for the bundle's check, the
share flagged of each set of frontal X-rays at hand and of each kind of negative
(`training.negatives`): the table in docs/MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.classifier import preprocess, read_card
from shared.config import ImageLimits
from shared.frontal import FRONTAL_FILE, THUMBNAIL, FrontalReference, check, thumbnail
from shared.images import InvalidImage, XRayImage, read_image, read_image_file
from training.dataset import ImageIndex, image_paths

COMPONENTS = 16
LIMIT_QUANTILE = 0.995
MAX_REFERENCE_IMAGES = 5000
MIN_REFERENCE_IMAGES = 4 * COMPONENTS  # fewer: no image reference (the header check only)


def model_input(image: XRayImage, input_size: int, clahe: dict[str, Any] | None) -> np.ndarray:
    return preprocess(image.source, input_size, clahe)


def thumbnails(paths: Iterable[Path], input_size: int, clahe: dict[str, Any] | None = None) -> np.ndarray:
    """(N, 1024) thumbnails of image files, decoded and preprocessed by the service's own code."""
    limits = ImageLimits()
    files = list(paths)
    out = np.empty((len(files), THUMBNAIL * THUMBNAIL), dtype=np.float32)  # 4 KB per image
    for i, path in enumerate(files):
        out[i] = thumbnail(model_input(read_image_file(path, limits), input_size, clahe))
    return out


def fit_reference(train: np.ndarray, validation: np.ndarray, components: int = COMPONENTS,
                  quantile: float = LIMIT_QUANTILE) -> FrontalReference:
    """Eigen-chests of the training thumbnails; the limit from the validation thumbnails."""
    if len(train) <= components:
        raise ValueError(f"the frontal check needs more than {components} training images, got {len(train)}")
    if len(validation) == 0:
        raise ValueError("the frontal check needs validation images for its limit")
    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    basis = vt[:components]
    centred = train - mean
    residual = centred - (centred @ basis.T) @ basis
    scale = float(np.einsum("ij,ij->i", residual, residual).mean())
    unlimited = FrontalReference(mean=mean, components=basis, residual_scale=scale, limit=np.inf)
    limit = float(np.quantile(unlimited.distances(validation), quantile))
    return FrontalReference(mean=mean, components=basis, residual_scale=scale, limit=limit)


def fit_frontal(bundle_dir: Path, images: Path | ImageIndex, train_names: Sequence[str],
                validation_names: Sequence[str], input_size: int, clahe: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """Fit the bundle's reference, write `frontal.npz` beside its card; returns the card's `frontal`
    ({} with too few training images: the bundle then gets the DICOM header check only). `images`:
    the images folder (flat or NIH's 12 folders) or its index."""
    if len(train_names) < MIN_REFERENCE_IMAGES or not validation_names:
        print(f"frontal check: {len(train_names)} training images are too few for an image reference "
              f"(at least {MIN_REFERENCE_IMAGES}); the bundle gets the DICOM header check only", flush=True)
        (bundle_dir / FRONTAL_FILE).unlink(missing_ok=True)
        return {}
    sample, held_out = _sample(train_names), _sample(validation_names)
    reference = fit_reference(thumbnails(map(Path, image_paths(images, sample)), input_size, clahe),
                              thumbnails(map(Path, image_paths(images, held_out)), input_size, clahe))
    reference.save(bundle_dir)
    return {
        "method": "residual energy of the standardised 32x32 thumbnail of the model input outside the "
                  "main components of the training thumbnails, in units of its training mean",
        "file": FRONTAL_FILE,
        "thumbnail": THUMBNAIL,
        "components": int(reference.components.shape[0]),
        "fitted_on": {"split": "train", "images": len(sample)},
        "limit": round(reference.limit, 4),
        "limit_rule": f"the {LIMIT_QUANTILE:g} quantile of the validation split's distances "
                      f"({len(held_out)} images)",
        "header": "DICOM modality other than CR/DX/RG (OT, SC or none: the image decides), a lateral or "
                  "oblique view position, or a body part other than the chest",
    }


def _sample(names: Sequence[str]) -> list[str]:
    """All of `names`, or a fixed sample of MAX_REFERENCE_IMAGES of them: the memory the fit needs
    stays the same however large the data set."""
    chosen = sorted(names)
    if len(chosen) > MAX_REFERENCE_IMAGES:
        chosen = sorted(np.random.default_rng(0).choice(chosen, MAX_REFERENCE_IMAGES, replace=False).tolist())
    return chosen


# ------------------------------------------------------------------------------- measurement


def flagged_share(images: Iterable[XRayImage], reference: FrontalReference | None, input_size: int,
                  clahe: dict[str, Any] | None, header: bool) -> tuple[int, int]:
    """(flagged, total) of decoded images, by the whole check or (header False) the image alone."""
    flagged = total = 0
    for image in images:
        metadata = image.info.metadata if header else None
        flagged += check(model_input(image, input_size, clahe), reference, metadata).flagged
        total += 1
    return flagged, total


def _decoded(datas: Iterable[bytes]) -> tuple[list[XRayImage], int]:
    images, refused = [], 0
    for data in datas:
        try:
            images.append(read_image(data, ImageLimits()))
        except InvalidImage:
            refused += 1
    return images, refused


def measure(model_dir: Path, data_dir: Path, per_kind: int = 100) -> list[dict[str, Any]]:
    """The table of docs/MODEL_CARD.md: per set of frontal X-rays and per kind of negative, how many
    images decode and what share the check flags (with the DICOM header, and from the image alone)."""
    import pydicom.data

    from training.negatives import generated_negatives

    card = read_card(model_dir)
    reference = FrontalReference.load(model_dir, card.frontal)
    clahe = card.preprocessing.get("clahe") or None
    split = card.training.get("split", {})
    nih64 = data_dir / "nih-64" / "images"
    kermany = list(csv.DictReader((data_dir / "kermany-224" / "labels.csv").open()))
    frontal_sets: dict[str, list[Path]] = {
        f"NIH 64 px, {name} split": [nih64 / n for n in split.get(name, [])] for name in ("train", "validation", "test")
    }
    frontal_sets["NIH full size"] = sorted((data_dir / "nih-full").rglob("*.png"))
    for part in ("train", "test"):
        frontal_sets[f"Kermany paediatric, {part} split"] = [
            data_dir / "kermany-224" / row["path"] for row in kermany if row["split"] == part]
    rows = []
    for name, paths in frontal_sets.items():
        images, refused = _decoded(p.read_bytes() for p in paths)
        flagged, total = flagged_share(images, reference, card.input_size, clahe, header=True)
        rows.append({"set": name, "kind": "frontal X-ray", "images": total, "refused": refused,
                     "flagged": flagged, "flagged_image_only": flagged})
    dicom_dir = Path(pydicom.data.__file__).parent / "test_files"
    by_modality: dict[str, list[bytes]] = {}
    for path in sorted(glob.glob(str(dicom_dir / "**" / "*.dcm"), recursive=True)):
        data = Path(path).read_bytes()
        try:
            modality = str(pydicom.dcmread(path, stop_before_pixels=True).get("Modality") or "none")
        except Exception:  # noqa: BLE001 - an unreadable test file is counted as refused below
            modality = "unreadable"
        by_modality.setdefault(modality, []).append(data)
    negatives = {f"pydicom test files, modality {m}": datas for m, datas in sorted(by_modality.items())}
    example = frontal_sets["NIH 64 px, test split"] or frontal_sets["NIH full size"]
    negatives.update(generated_negatives(per_kind, [p.read_bytes() for p in example[:per_kind]]))
    for name, datas in negatives.items():
        images, refused = _decoded(datas)
        flagged, total = flagged_share(images, reference, card.input_size, clahe, header=True)
        image_only, _ = flagged_share(images, reference, card.input_size, clahe, header=False)
        rows.append({"set": name, "kind": "negative", "images": total, "refused": refused,
                     "flagged": flagged, "flagged_image_only": image_only})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| set | kind | decoded | refused at upload | flagged | flagged from the image alone |",
             "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        shares = [f"{row[k] / row['images']:.1%} ({row[k]})" if row["images"] else "-"
                  for k in ("flagged", "flagged_image_only")]
        lines.append(f"| {row['set']} | {row['kind']} | {row['images']} | {row['refused']} | "
                     f"{shares[0]} | {shares[1]} |")
    frontal = [r for r in rows if r["kind"] == "frontal X-ray"]
    kept = 1 - sum(r["flagged"] for r in frontal) / max(1, sum(r["images"] for r in frontal))
    lines.append(f"\nFrontal X-rays kept (not flagged), all sets together: {kept:.2%}.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the data folder")
    parser.add_argument("--per-kind", type=int, default=100, help="generated images of each kind")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = measure(args.model_dir, args.data, args.per_kind)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
