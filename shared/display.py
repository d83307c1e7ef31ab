"""The picture of an X-ray the web shows: an 8-bit greyscale PNG, at most DISPLAY_MAX_SIDE pixels on
its long side, made once by the worker from the decoded image (for DICOM, whose files browsers cannot
show), so a view never decodes a full DICOM in the web process."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shared.images import XRayImage

DISPLAY_MAX_SIDE = 2048


def display_png(image: XRayImage, max_side: int = DISPLAY_MAX_SIDE) -> bytes:
    """`image` (MONOCHROME1 already inverted, rescale and VOI applied) as an 8-bit PNG; the box
    coordinates stay in the original's pixels (the page scales them)."""
    levels = image.source if image.source.dtype == np.uint8 else np.clip(image.pixels * 255.0 + 0.5, 0, 255).astype(
        np.uint8)
    picture = Image.fromarray(levels, mode="L")
    if max(picture.size) > max_side:
        scale = max_side / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                 Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
