"""`xray train` at the full NIH ChestX-ray14 scale, without the 42 GB download:
`python -m bench.training_scale [--root DIR] [--rows 112120 11212] [options]`.

For each row count it generates, under --root, a data set in NIH's own form: a
`Data_Entry_2017_v2020.csv` with NIH's exact header (bracketed columns included), patients numbered
from 1 with follow-ups `{patient:08d}_{followup:03d}.png` (NIH's ratio of 30,805 patients to
112,120 images), `Finding Labels` joined with `|` and `No Finding` at NIH's published rates,
`train_val_list.txt` / `test_list.txt` split by patient (NIH's test share of images), and one
greyscale PNG per row in NIH's 12-folder layout (`images_001/images/` ... `images_012/images/`,
filled in name order with NIH's folder sizes). The images are 64x64, the smallest the service
accepts (`shared.config.ImageLimits.min_side`), with structure (a body outline, two lung fields,
ribs, noise and, for rows with findings, an opacity), so decoding and preprocessing do real work.

It then runs `xray train` on it in a subprocess (32 px input, --split-lists, one epoch of --steps
batches of --batch, --weights none): the whole command, including the recursive file scan, the
validation predictions of the epoch and the calibration on validation and test at the end. It
reports the child's peak resident memory (`os.wait4`'s ru_maxrss, that process alone), the wall
time, the training throughput (`history[].train_images_per_s`, batches after the first) and the
seconds of each phase. Run it under `nice -n 10` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NIH_ROWS = 112_120
NIH_PATIENTS = 30_805
NIH_TEST_IMAGES = 25_596
NIH_FOLDER_SIZES = (4_999, *([10_000] * 10), 7_121)  # images_001 ... images_012
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
NO_FINDING_IMAGES = 60_361
FINDING_IMAGES = {  # NIH's per-finding image counts (Data_Entry_2017_v2020.csv)
    "Atelectasis": 11_559, "Cardiomegaly": 2_776, "Effusion": 13_317, "Infiltration": 19_894,
    "Mass": 5_782, "Nodule": 6_331, "Pneumonia": 1_431, "Pneumothorax": 5_302, "Consolidation": 4_667,
    "Edema": 2_303, "Emphysema": 2_516, "Fibrosis": 1_686, "Pleural_Thickening": 3_385, "Hernia": 227,
}
SIDE = 64
CHUNK = 2_000


def _followups(rows: int, rng: np.random.Generator) -> np.ndarray:
    """Images per patient: at least one, a long tail (geometric), summing to `rows` exactly."""
    patients = max(1, round(rows * NIH_PATIENTS / NIH_ROWS))
    counts = rng.geometric(patients / rows, size=patients)
    while (excess := int(counts.sum()) - rows) != 0:
        if excess > 0:
            many = np.flatnonzero(counts > 1)
            chosen = rng.choice(many, size=min(excess, len(many)), replace=False)
            counts[chosen] -= 1
        else:
            counts[rng.integers(0, patients, size=-excess)] += 1
    return counts


def _findings(rng: np.random.Generator) -> str:
    """One row's labels: `No Finding` at NIH's rate, else NIH's findings at their relative rates."""
    if rng.random() < NO_FINDING_IMAGES / NIH_ROWS:
        return "No Finding"
    abnormal = NIH_ROWS - NO_FINDING_IMAGES
    chosen = [label for label, n in FINDING_IMAGES.items() if rng.random() < n / abnormal]
    if not chosen:
        labels = list(FINDING_IMAGES)
        weights = np.asarray([FINDING_IMAGES[label] for label in labels], dtype=np.float64)
        chosen = [labels[int(rng.choice(len(labels), p=weights / weights.sum()))]]
    return "|".join(chosen)


def _images(count: int, abnormal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`count` 64x64 uint8 chest-like images: body outline, lungs, ribs, noise, opacities."""
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / (SIDE - 1)
    shift = rng.uniform(-0.05, 0.05, size=(count, 2, 1, 1)).astype(np.float32)
    scale = rng.uniform(0.9, 1.1, size=(count, 1, 1)).astype(np.float32)
    xs, ys = x[None] - shift[:, 0], y[None] - shift[:, 1]
    body = np.exp(-(((xs - 0.5) / (0.42 * scale)) ** 8))
    lungs = sum(np.exp(-(((xs - cx) / (0.15 * scale)) ** 2 + ((ys - 0.5) / (0.3 * scale)) ** 2) * 2.0)
                for cx in (0.3, 0.7))
    ribs = 0.08 * np.sin(ys * rng.uniform(25, 35, size=(count, 1, 1)).astype(np.float32)) * lungs
    image = 0.15 + 0.65 * body - 0.45 * lungs + ribs
    spot = rng.uniform(0.25, 0.75, size=(count, 2, 1, 1)).astype(np.float32)
    image += abnormal[:, None, None] * 0.3 * np.exp(-(((xs - spot[:, 0]) ** 2 + (ys - spot[:, 1]) ** 2) / 0.01))
    image += rng.normal(0, 0.03, size=image.shape).astype(np.float32)
    return np.clip(image * 255.0, 0, 255).astype(np.uint8)


def generate(root: Path, rows: int, seed: int = 0) -> dict[str, float]:
    """Write the label file, the split lists and the images under `root`; returns counts and seconds."""
    from PIL import Image

    started = time.monotonic()
    rng = np.random.default_rng(seed)
    counts = _followups(rows, rng)
    names, labels, patients = [], [], []
    lines = [HEADER]
    for patient, count in enumerate(counts, start=1):
        age = int(rng.integers(1, 95))
        sex = "M" if rng.random() < 0.565 else "F"
        for followup in range(int(count)):
            name = f"{patient:08d}_{followup:03d}.png"
            finding = _findings(rng)
            view = "PA" if rng.random() < 0.6 else "AP"
            width, height = (2048, 2500) if rng.random() < 0.5 else (2500, 2048)
            spacing = rng.choice((0.139, 0.143, 0.168, 0.171))
            lines.append(f"{name},{finding},{followup},{patient},{min(age + followup // 4, 95)},{sex},{view},"
                         f"{width},{height},{spacing},{spacing}")
            names.append(name)
            labels.append(finding)
            patients.append(patient)
    root.mkdir(parents=True, exist_ok=True)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    test_share = NIH_TEST_IMAGES / NIH_ROWS
    test_patients = {p for p in range(1, len(counts) + 1) if rng.random() < test_share}
    test = [n for n, p in zip(names, patients, strict=True) if p in test_patients]
    train_val = [n for n, p in zip(names, patients, strict=True) if p not in test_patients]
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    labelled = time.monotonic()

    sizes = np.asarray(NIH_FOLDER_SIZES, dtype=np.float64) * rows / NIH_ROWS
    bounds = np.round(np.cumsum(sizes)).astype(int)
    folder = np.searchsorted(bounds, np.arange(rows), side="right") + 1
    for k in range(1, len(NIH_FOLDER_SIZES) + 1):
        (root / "images" / f"images_{k:03d}" / "images").mkdir(parents=True, exist_ok=True)
    for start in range(0, rows, CHUNK):
        stop = min(start + CHUNK, rows)
        abnormal = np.asarray([labels[i] != "No Finding" for i in range(start, stop)], dtype=np.float32)
        for i, pixels in zip(range(start, stop), _images(stop - start, abnormal, rng), strict=True):
            path = root / "images" / f"images_{folder[i]:03d}" / "images" / names[i]
            Image.fromarray(pixels, mode="L").save(path, format="PNG", compress_level=1)
    return {
        "rows": rows, "patients": len(counts), "test_images": len(test), "train_val_images": len(train_val),
        "no_finding_share": round(labels.count("No Finding") / rows, 4),
        "labels_s": round(labelled - started, 1), "images_s": round(time.monotonic() - labelled, 1),
    }


def train_command(root: Path, steps: int, batch: int, size: int) -> list[str]:
    return [
        sys.executable, "-m", "cli.main", "train", "--images", str(root / "images"),
        "--labels", str(root / "Data_Entry_2017_v2020.csv"), "--split-lists", str(root),
        "--out", str(root / "bundle"), "--checkpoint-dir", str(root / "checkpoints"), "--force",
        "--image-size", str(size), "--epochs", "1", "--steps-per-epoch", str(steps), "--batch-size", str(batch),
        "--weights", "none", "--no-progress",
    ]


def run_training(root: Path, steps: int, batch: int, size: int) -> dict[str, object]:
    """`xray train` in a child process; its own peak RSS (wait4), wall time and the card's timings."""
    command = train_command(root, steps, batch, size)
    log = root / "train.log"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.monotonic()
    with open(log, "w") as out:
        child = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"xray train failed ({status}); see {log}:\n{log.read_text()[-3000:]}")
    card = json.loads((root / "bundle" / "card.json").read_text())
    training = card["training"]
    epoch = training["history"][0]
    peak_kib = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss // 1024
    return {
        "command": " ".join(command[1:]),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "wall_s": round(wall, 1),
        "train_s": epoch.get("train_s"),
        "train_images_per_s": epoch.get("train_images_per_s"),
        "validation_predict_s": epoch.get("validation_s"),
        "images": {name: sizes["images"] for name, sizes in training["split_sizes"].items()},
        "fit_s": training["fit_wall_time_s"],
        "test_mean_auroc": card["metrics"].get("test", {}).get("mean_auroc"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "xray-training-scale",
                        help="where the generated data sets go (default: a folder in the temp dir)")
    parser.add_argument("--rows", type=int, nargs="+", default=[NIH_ROWS // 10, NIH_ROWS],
                        help="data set sizes, one run each (default 11212 112120)")
    parser.add_argument("--steps", type=int, default=50, help="training batches (default 50)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--size", type=int, default=32, help="input size (default 32)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data sets")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}", flush=True)
    results = []
    for rows in args.rows:
        root = args.root / f"rows-{rows}"
        if root.exists():
            shutil.rmtree(root)
        data = generate(root, rows)
        print(f"generated {rows} rows: {json.dumps(data)}", flush=True)
        result = {"data": data, **run_training(root, args.steps, args.batch, args.size)}
        print(json.dumps(result, indent=2), flush=True)
        results.append(result)
        if not args.keep:
            shutil.rmtree(root)
    print("\n| rows | patients | train / val / test images | peak RSS | wall | train img/s | "
          "validation predict |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        sizes = r["images"]
        print(f"| {r['data']['rows']:,} | {r['data']['patients']:,} | {sizes['train']:,} / "
              f"{sizes['validation']:,} / {sizes['test']:,} | {r['peak_rss_mib']:,} MiB | "
              f"{r['wall_s']} s | {r['train_images_per_s']} | {r['validation_predict_s']} s |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
