"""Same answer at any resolution: the served probabilities of a full-size image against those of the
same image first shrunk to the training images' size (nih-64: 64 px, 8-bit), as the training data
was made. The service's preprocessing resizes any image to the model's input size with an
antialiased filter, so with an input size equal to the training images' size the two should agree
up to the 8-bit rounding and the thumbnail maker's filter (Pillow box, bilinear and Lanczos are tried).

`python -m training.resolution MODEL_DIR IMAGE...` prints the gaps.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shared.config import ImageLimits
from shared.images import read_image_file

TRAINING_IMAGE_SIZE = 64  # nih-64's images
# "box" (an area average) is how nih-64 was made, as far as its one image also in nih-full tells (a mean
# difference of 0.2 grey levels out of 255, against 0.4-1.2 for the others); the others bracket it.
FILTERS = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR, "lanczos": Image.Resampling.LANCZOS}


def thumbnail(pixels: np.ndarray, size: int = TRAINING_IMAGE_SIZE, method: str = "box") -> np.ndarray:
    """8-bit (size, size) levels of a greyscale image (uint8 levels or floats in [0, 1])."""
    pixels = np.asarray(pixels)
    levels = pixels if pixels.dtype == np.uint8 else np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(levels).resize((size, size), FILTERS[method]))


def probabilities(predictor: Any, pixels: Sequence[np.ndarray]) -> np.ndarray:
    """Served (calibrated) probabilities (N, 14) through the predictor's own preprocessing."""
    batch = np.stack([predictor.preprocess(p) for p in pixels])
    raw, _ = predictor.predict(batch)
    return predictor.calibrate(raw)


def resolution_gaps(predictor: Any, paths: Sequence[Path]) -> dict[str, Any]:
    """For each thumbnail filter: the largest and mean absolute difference of any finding's
    probability between full size and thumbnail, and how many images change a positive call."""
    images = [read_image_file(p, ImageLimits()).source for p in paths]
    full = probabilities(predictor, images)
    cut = predictor.thresholds
    result: dict[str, Any] = {"images": len(images), "input_size": predictor.input_size}
    for method in FILTERS:
        small = probabilities(predictor, [thumbnail(p, method=method) for p in images])
        gap = np.abs(full - small)
        result[method] = {
            "max_abs": round(float(gap.max()), 4),
            "mean_abs": round(float(gap.mean()), 4),
            "images_with_a_changed_call": int(np.any((full >= cut) != (small >= cut), axis=1).sum()),
        }
    return result


def main(argv: Sequence[str]) -> int:
    from shared.runtime import load_predictor

    if len(argv) < 2:
        print("usage: python -m training.resolution MODEL_DIR IMAGE...", file=sys.stderr)
        return 2
    predictor = load_predictor(argv[0], runtime="tensorflow", precision="f32")
    print(resolution_gaps(predictor, [Path(p) for p in argv[1:]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
