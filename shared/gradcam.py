"""Class activation maps for all findings from the forward pass, boxes, heatmap layers and overlays.

The head is global average pooling then a dense layer, so Grad-CAM equals CAM: for finding k the
gradient of the logit with respect to the feature map A (h, w, C) is kernel[:, k] / (h * w) at every
position, and Grad-CAM's relu(sum_c mean_grad_c * A_c) is relu(A . kernel[:, k]) up to a positive
factor that the per-map normalisation removes. No gradient pass is needed (tests/shared/test_gradcam.py
holds this equal to a GradientTape Grad-CAM).

Geometry: the model sees the whole image resized (aspect not kept) to S x S, so map cell (i, j) of an
h x w map covers rows [i*H/h, (i+1)*H/h) and columns [j*W/w, (j+1)*W/w) of the W x H original.
Upsampling uses bilinear interpolation with half-pixel centres (cell centres at (j + 0.5) * W / w).
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin
from scipy import ndimage

# Boxes are found on the map upsampled to at most this many samples per map cell along each axis
# (at 224 input and 7 x 7 maps: a 56 x 56 grid, one sample per 4 model pixels), then scaled to the
# original. Box edges therefore fall on multiples of 1/8 of a cell (32 samples per cell gave the same
# boxes to within that step, at 8x the cost: 12 ms instead of 1.5 ms for 14 maps).
BOX_SAMPLES_PER_CELL = 8
# A stored CAM is a 16-bit greyscale PNG: [0, 1] quantised to 0..65535 (error at most 1/131070).
CAM_LEVELS = 65535
MAX_CAM_SIDE = 64  # a stored map larger than this is refused (a 7 x 7 map is what the model gives)
CAM_SHEET_KEY = "xray-cams"  # the PNG text chunk naming a CAM sheet's maps, top to bottom
_SHEET_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Box:
    """A rectangle in original pixel coordinates: x, y of the top-left corner, width, height."""

    x: int
    y: int
    width: int
    height: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def class_activation_maps(features: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """relu(A . w_k) for every class k, each map divided by its maximum: (h, w, C), (C, K) -> (K, h, w).

    A map with no positive value stays all zero (no division by zero).
    """
    features = np.asarray(features, dtype=np.float32)
    kernel = np.asarray(kernel, dtype=np.float32)
    if features.ndim != 3 or kernel.ndim != 2 or features.shape[2] != kernel.shape[0]:
        raise ValueError(f"expected features (h, w, C) and kernel (C, K), got {features.shape} and {kernel.shape}")
    h, w, channels = features.shape
    maps = np.maximum(features.reshape(h * w, channels) @ kernel, 0.0)  # (h*w, K)
    peaks = maps.max(axis=0)
    scale = np.divide(1.0, peaks, out=np.zeros_like(peaks), where=peaks > 0)
    return (maps * scale).T.reshape(kernel.shape[1], h, w).astype(np.float32)


@functools.lru_cache(maxsize=256)
def _interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) bilinear weights with half-pixel centres, edges clamped (cached, read-only)."""
    source = (np.arange(size_out, dtype=np.float64) + 0.5) * size_in / size_out - 0.5
    source = np.clip(source, 0.0, size_in - 1)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    frac = source - low
    matrix = np.zeros((size_out, size_in), dtype=np.float64)
    rows = np.arange(size_out)
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    result = matrix.astype(np.float32)
    result.flags.writeable = False
    return result


def upsample(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of an (h, w) map to (height, width), half-pixel centres."""
    cam = np.asarray(cam, dtype=np.float32)
    rows = _interpolation_matrix(cam.shape[0], height)
    cols = _interpolation_matrix(cam.shape[1], width)
    return rows @ cam @ cols.T


def box_from_cam(cam: np.ndarray, width: int, height: int, fraction: float = 0.5) -> Box | None:
    """The largest connected region of the map above `fraction` of its max, as a box on the W x H original.

    None for a map with no positive value.
    """
    return boxes_from_cams(np.asarray(cam, dtype=np.float32)[None], width, height, fraction)[0]


def boxes_from_cams(cams: np.ndarray, width: int, height: int, fraction: float = 0.5) -> list[Box | None]:
    """`box_from_cam` for a stack of (K, h, w) maps at once: one upsampling product for all K, then
    the largest region of each map (`largest_regions`)."""
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3:
        raise ValueError(f"expected a (K, h, w) stack of maps, got shape {cams.shape}")
    if not cams.size:
        return [None] * len(cams)
    grid_h = min(height, cams.shape[1] * BOX_SAMPLES_PER_CELL)
    grid_w = min(width, cams.shape[2] * BOX_SAMPLES_PER_CELL)
    peaks = cams.max(axis=(1, 2))
    fine = _interpolation_matrix(cams.shape[1], grid_h) @ cams @ _interpolation_matrix(cams.shape[2], grid_w).T
    above = (fine >= (fraction * peaks)[:, None, None]) & (peaks > 0.0)[:, None, None]
    boxes: list[Box | None] = []
    for row_start, row_stop, col_start, col_stop in largest_regions(above).tolist():
        if row_start < 0:
            boxes.append(None)
            continue
        x0 = int(round(col_start * width / grid_w))
        x1 = int(round(col_stop * width / grid_w))
        y0 = int(round(row_start * height / grid_h))
        y1 = int(round(row_stop * height / grid_h))
        boxes.append(Box(x=x0, y=y0, width=max(1, x1 - x0), height=max(1, y1 - y0)))
    return boxes


def largest_regions(above: np.ndarray) -> np.ndarray:
    """For a (K, H, W) boolean stack: each map's largest region (4-connected, within the map) as
    (K, 4) int rows of row_start, row_stop, col_start, col_stop (stops exclusive), -1s for a map
    with none. Of equally large regions the first in row-major order of its first pixel wins
    (scipy's labelling numbers regions in that order)."""
    above = np.ascontiguousarray(above, dtype=bool)
    if above.ndim != 3:
        raise ValueError(f"expected a (K, H, W) stack, got shape {above.shape}")
    found = np.full((len(above), 4), -1, dtype=np.int32)
    if not above.size:
        return found
    labels, count = ndimage.label(above, structure=_ONE_MAP_AT_A_TIME)
    if count == 0:
        return found
    sizes = np.bincount(labels.ravel())[1:]
    objects = ndimage.find_objects(labels)
    map_of = np.array([region[0].start for region in objects])  # each region lies in one map
    for k in np.unique(map_of):
        regions = np.flatnonzero(map_of == k)
        _, rows, cols = objects[int(regions[np.argmax(sizes[regions])])]  # the first largest
        found[k] = (rows.start, rows.stop, cols.start, cols.stop)
    return found


# Regions connect along rows and columns within one map, never across the stack of maps.
_ONE_MAP_AT_A_TIME = np.zeros((3, 3, 3), dtype=bool)
_ONE_MAP_AT_A_TIME[1] = ndimage.generate_binary_structure(2, 1)


def jet(values: np.ndarray) -> np.ndarray:
    """A jet-like colour map: values in [0, 1] -> uint8 RGB (dark blue, cyan, yellow, red)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.asarray([3.0, 2.0, 1.0], dtype=np.float32)  # R, G, B
    rgb = np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def _png(image: Image.Image, compress_level: int = 1) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def cam_sheet_png(cams: Mapping[str, np.ndarray]) -> bytes:
    """All of a study's low-resolution maps in ONE 16-bit greyscale PNG (what the worker stores):
    {label: (h, w) map in [0, 1]}, every map the same shape, stacked top to bottom in the given
    order; the labels, in that order, are in the PNG's `xray-cams` text chunk. One file per study
    instead of one per finding: one durable write instead of 14."""
    if not cams:
        raise ValueError("a CAM sheet needs at least one map")
    maps = [np.asarray(cam, dtype=np.float64) for cam in cams.values()]
    shape = maps[0].shape
    for label, cam in zip(cams, maps, strict=True):
        if not _SHEET_LABEL.match(label):
            raise ValueError(f"refused the label {label!r}")
        if cam.ndim != 2 or not cam.size or cam.shape != shape or not np.all(np.isfinite(cam)):
            raise ValueError(f"expected finite (h, w) maps of one shape, got {cam.shape} for {label}")
    levels = np.rint(np.clip(np.concatenate(maps), 0.0, 1.0) * CAM_LEVELS).astype(np.uint16)
    text = PngImagePlugin.PngInfo()
    text.add_text(CAM_SHEET_KEY, ",".join(cams))
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, format="PNG", pnginfo=text, compress_level=6)
    return buffer.getvalue()


def cam_from_png(data: bytes, label: str) -> np.ndarray:
    """The (h, w) float32 map in [0, 1] of `label` from a CAM sheet (`cam_sheet_png`). ValueError for
    anything else (not a sheet, a label the sheet lacks, a map larger than MAX_CAM_SIDE)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG" or image.mode not in ("I;16", "I"):
                raise ValueError(f"not a 16-bit greyscale CAM PNG ({image.format} {image.mode})")
            width, height = image.size
            sheet = image.info.get(CAM_SHEET_KEY)
            if sheet is None:
                raise ValueError("not a CAM sheet (no xray-cams text chunk)")
            labels = str(sheet).split(",")
            side = height // len(labels)
            if height % len(labels) or max(width, side) > MAX_CAM_SIDE:
                raise ValueError(f"a CAM sheet of {width} x {height} for {len(labels)} maps is refused")
            if label not in labels:
                raise ValueError(f"the CAM sheet has no map for {label!r}")
            index = labels.index(label)
            levels = np.asarray(image, dtype=np.float64)[index * side:(index + 1) * side]
    except (OSError, SyntaxError) as exc:  # Pillow's errors for bytes it cannot read
        raise ValueError(f"not a readable PNG: {exc}") from exc
    return (np.clip(levels, 0, CAM_LEVELS) / CAM_LEVELS).astype(np.float32)


def heatmap_layer_png(cam: np.ndarray, size: int = 256) -> bytes:
    """The colour-mapped map as an RGBA PNG of size x size; alpha grows with the activation."""
    fine = np.clip(upsample(cam, size, size), 0.0, 1.0)
    rgba = np.empty((size, size, 4), dtype=np.uint8)
    rgba[..., :3] = jet(fine)
    rgba[..., 3] = (fine * 255.0 + 0.5).astype(np.uint8)
    return _png(Image.fromarray(rgba))


def overlay_rgb(pixels: np.ndarray, cam: np.ndarray, box: Box | None = None, alpha: float = 0.4) -> Image.Image:
    """The X-ray with the colour map laid over it (opacity alpha x activation) and the box drawn."""
    grey = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
    height, width = grey.shape
    fine = np.clip(upsample(cam, height, width), 0.0, 1.0)
    weight = (alpha * fine)[..., None]
    base = np.repeat(grey[..., None] * 255.0, 3, axis=2)
    blended = base * (1.0 - weight) + jet(fine).astype(np.float32) * weight
    image = Image.fromarray((blended + 0.5).astype(np.uint8))
    if box is not None:
        line = max(2, round(max(width, height) / 256))
        corners = [box.x, box.y, box.x + box.width - 1, box.y + box.height - 1]
        ImageDraw.Draw(image).rectangle(corners, outline=(0, 255, 0), width=line)
    return image


def overlay_png(pixels: np.ndarray, cam: np.ndarray, box: Box | None = None, alpha: float = 0.4) -> bytes:
    """`overlay_rgb` as an RGB PNG at the image's own size."""
    return _png(overlay_rgb(pixels, cam, box, alpha))
