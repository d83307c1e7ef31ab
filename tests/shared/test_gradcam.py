"""shared.gradcam: CAM == Grad-CAM for this head, zero maps, boxes, heatmap layers, overlays."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shared.gradcam
from shared.classifier import build_model, preprocess
from shared.findings import FINDINGS
from shared.gradcam import (
    CAM_SHEET_KEY,
    Box,
    box_from_cam,
    boxes_from_cams,
    cam_from_png,
    cam_sheet_png,
    class_activation_maps,
    heatmap_layer_png,
    jet,
    largest_regions,
    overlay_png,
    upsample,
)

SIZE = 128  # 4 x 4 feature maps: small, yet maps with structure


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


# ----------------------------------------------------------------------------- CAM == Grad-CAM


@pytest.fixture(scope="module")
def model_and_image(nih_full_images: list[Path]) -> tuple[object, np.ndarray]:
    import keras

    keras.utils.set_random_seed(11)
    model = build_model(SIZE)
    pixels = np.asarray(Image.open(nih_full_images[0]).convert("L"), dtype=np.float32) / 255.0
    return model, preprocess(pixels, SIZE)[None]


def _grad_cam_with_tape(model: object, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Textbook Grad-CAM: gradient of each class score w.r.t. conv5_block3_out, channel weight = mean
    gradient, relu of the weighted sum of channels, divided by its max. Returns maps, features, scores."""
    import tensorflow as tf

    images = tf.constant(batch)
    maps = []
    with tf.GradientTape(persistent=True) as tape:
        probabilities, features = model(images, training=False)
        scores = [probabilities[0, k] for k in range(probabilities.shape[1])]  # recorded on the tape
    for score in scores:
        gradient = tape.gradient(score, features)[0].numpy()  # (h, w, C)
        weights = gradient.mean(axis=(0, 1))
        grad_cam = np.maximum(np.tensordot(features[0].numpy(), weights, axes=([2], [0])), 0.0)
        peak = grad_cam.max()
        maps.append(grad_cam / peak if peak > 0 else grad_cam)
    del tape
    return np.stack(maps), features[0].numpy(), probabilities[0].numpy()


@pytest.mark.slow
def test_cam_from_forward_pass_equals_gradient_grad_cam(model_and_image: tuple[object, np.ndarray]) -> None:
    model, batch = model_and_image
    grad_cam, features, probabilities = _grad_cam_with_tape(model, batch)
    # The class score is the sigmoid output. Its derivative p(1 - p) is one positive factor per class,
    # removed by the normalisation, as long as no probability rounds to exactly 0 or 1 in float32.
    assert np.all((probabilities > 0) & (probabilities < 1))
    kernel = model.get_layer("probabilities").get_weights()[0]
    cams = class_activation_maps(features, kernel)
    assert cams.shape == grad_cam.shape == (14, SIZE // 32, SIZE // 32)
    non_trivial = [k for k in range(14) if cams[k].max() == pytest.approx(1.0) and cams[k].std() > 0.05]
    assert len(non_trivial) >= 8, "random weights should give maps with structure"  # 10 with seed 11
    assert np.max(np.abs(cams - grad_cam)) < 1e-4


# ----------------------------------------------------------------------------- class_activation_maps


def test_all_zero_feature_map_gives_zero_maps_without_nan() -> None:
    kernel = np.random.default_rng(0).normal(size=(2048, 14)).astype(np.float32)
    cams = class_activation_maps(np.zeros((7, 7, 2048), np.float32), kernel)
    assert cams.shape == (14, 7, 7) and np.all(np.isfinite(cams)) and not cams.any()


def test_maps_are_relu_and_normalised_per_finding() -> None:
    rng = np.random.default_rng(1)
    features = np.abs(rng.normal(size=(5, 6, 32))).astype(np.float32)
    kernel = rng.normal(size=(32, 3)).astype(np.float32)
    kernel[:, 2] = -np.abs(kernel[:, 2])  # every activation negative: relu leaves nothing
    cams = class_activation_maps(features, kernel)
    raw = np.einsum("hwc,ck->khw", features, kernel)
    for k in (0, 1):
        assert cams[k].max() == pytest.approx(1.0)
        positive = np.maximum(raw[k], 0)
        assert np.allclose(cams[k], positive / positive.max(), atol=1e-6)
    assert not cams[2].any()


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="features"):
        class_activation_maps(np.zeros((7, 7, 16)), np.zeros((8, 14)))


# ----------------------------------------------------------------------------- boxes


def test_box_maps_cells_onto_non_square_original() -> None:
    cam = np.zeros((8, 8), np.float32)
    cam[2:4, 4:7] = 1.0  # rows 2-3, columns 4-6: 6 cells
    cam[6, 0] = 1.0  # a smaller hot spot: not the largest region
    # Cell (i, j) of an 8 x 8 map covers x in [j*W/8, (j+1)*W/8), y in [i*H/8, (i+1)*H/8).
    assert box_from_cam(cam, width=800, height=400) == Box(x=400, y=100, width=300, height=100)
    assert box_from_cam(cam, width=400, height=800) == Box(x=200, y=200, width=150, height=200)


def test_box_from_small_original_stays_inside() -> None:
    cam = np.zeros((7, 7), np.float32)
    cam[6, 6] = 1.0
    box = box_from_cam(cam, width=70, height=70)
    assert box is not None
    assert box.x + box.width <= 70 and box.y + box.height <= 70
    assert box.x >= 55 and box.y >= 55


def test_coarse_box_grid_matches_a_fine_one_within_its_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """8 samples per cell finds the same region as 32 did: each edge within one coarse step (1/8 of a
    cell) of the 32-sample box, on smooth random maps like the model's. The exceptions are near-ties
    (here 2 of 200: two regions whose areas differ by about 1%), which any grid may resolve either way."""
    rng = np.random.default_rng(5)
    cams = [np.clip(upsample(rng.random((3, 3)), 7, 7), 0, None) for _ in range(200)]
    width, height = 1024, 896
    coarse = [box_from_cam(cam, width, height) for cam in cams]
    monkeypatch.setattr(shared.gradcam, "BOX_SAMPLES_PER_CELL", 32)
    fine = [box_from_cam(cam, width, height) for cam in cams]
    step_x, step_y = width / (7 * 8), height / (7 * 8)

    def close(a: Box | None, b: Box | None) -> bool:
        assert a is not None and b is not None
        return (abs(a.x - b.x) <= step_x and abs(a.x + a.width - b.x - b.width) <= step_x
                and abs(a.y - b.y) <= step_y and abs(a.y + a.height - b.y - b.height) <= step_y)

    agree = sum(close(a, b) for a, b in zip(coarse, fine, strict=True))
    assert agree >= 195, f"{agree} of 200 boxes within one step"


def test_no_box_for_empty_map() -> None:
    assert box_from_cam(np.zeros((7, 7), np.float32), 1024, 1024) is None


def test_upsample_keeps_cell_centres() -> None:
    cam = np.arange(12, dtype=np.float32).reshape(3, 4)
    fine = upsample(cam, 30, 40)
    assert fine.shape == (30, 40)
    # half-pixel centres: the centre of cell (1, 2) lands between fine pixels 14/15 and 24/25
    assert fine[14:16, 24:26].mean() == pytest.approx(cam[1, 2], abs=1e-5)
    assert fine.min() == pytest.approx(0.0) and fine.max() == pytest.approx(11.0)


# ----------------------------------------------------------------------------- pictures


def test_jet_runs_blue_to_red() -> None:
    colours = jet(np.array([0.0, 0.5, 1.0]))
    assert tuple(colours[0]) == (0, 0, 128) and tuple(colours[2]) == (128, 0, 0)
    assert colours[1][1] == 255  # the middle is green-ish


def test_heatmap_layer_is_rgba_with_alpha_from_map() -> None:
    cam = np.zeros((7, 7), np.float32)
    cam[1, 5] = 1.0
    image = _decode(heatmap_layer_png(cam, size=256))
    assert image.mode == "RGBA" and image.size == (256, 256)
    rgba = np.asarray(image)
    y, x = int(1.5 * 256 / 7), int(5.5 * 256 / 7)
    assert rgba[y, x, 3] > 200 and rgba[y, x, 0] > rgba[y, x, 2]  # hot: opaque and red
    assert rgba[250, 5, 3] == 0  # cold: transparent


def _sheet_maps(seed: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = {label: rng.random((7, 7)).astype(np.float32) for label in FINDINGS}
    maps["Mass"][0, 0], maps["Mass"][6, 6] = 0.0, 1.0
    return maps


def test_cam_sheet_round_trip_is_16_bit_and_tiny() -> None:
    maps = _sheet_maps()
    data = cam_sheet_png(maps)
    image = _decode(data)
    assert image.mode in ("I;16", "I") and image.size == (7, 7 * 14)
    assert image.info[CAM_SHEET_KEY] == ",".join(FINDINGS)
    assert len(data) < 3000  # 14 maps of 49 16-bit values
    Image.open(io.BytesIO(data)).verify()  # chunk CRCs and structure as a PNG reader checks them
    for label, cam in maps.items():
        back = cam_from_png(data, label)
        assert back.dtype == np.float32 and back.shape == (7, 7)
        assert np.max(np.abs(back - cam)) <= 1 / 65535, label
    mass = cam_from_png(data, "Mass")
    assert mass[0, 0] == 0.0 and mass[6, 6] == 1.0


def test_layer_from_stored_cam_matches_layer_from_cam() -> None:
    """What the web renders from the stored sheet is the layer the worker used to write: the 16-bit
    quantisation moves at most a few of the 256 x 256 x 4 values by one level."""
    cam = np.random.default_rng(3).random((7, 7)).astype(np.float32)
    before = np.asarray(_decode(heatmap_layer_png(cam))).astype(int)
    stored = cam_sheet_png({"Edema": np.zeros((7, 7)), "Mass": cam})
    after = np.asarray(_decode(heatmap_layer_png(cam_from_png(stored, "Mass")))).astype(int)
    assert before.shape == after.shape == (256, 256, 4)
    assert np.max(np.abs(before - after)) <= 1
    assert np.mean(before != after) < 0.01


@pytest.mark.parametrize("bad", ["not a png", "empty", "layer", "large", "tall", "other label", "no label"])
def test_cam_from_png_refuses_other_files(bad: str) -> None:
    label: str | None = "Mass"
    if bad == "not a png":
        data = b"not a png"
    elif bad == "empty":
        data = b""
    elif bad == "layer":  # an RGBA heatmap layer (what was stored before CAMs were)
        data = heatmap_layer_png(np.ones((7, 7), np.float32))
    elif bad == "large":
        data = cam_sheet_png({"Mass": np.zeros((7, 65))})
    elif bad == "tall":
        data = cam_sheet_png({"Mass": np.zeros((65, 7))})
    elif bad == "other label":
        data = cam_sheet_png({"Edema": np.zeros((7, 7))})
    else:
        data, label = cam_sheet_png({"Mass": np.zeros((7, 7))}), None
    with pytest.raises(ValueError):
        cam_from_png(data, label)


@pytest.mark.parametrize("maps", [
    {},
    {"Mass": np.zeros((2, 2, 2))},
    {"Mass": np.full((2, 2), np.nan)},
    {"Mass": np.zeros((7, 7)), "Edema": np.zeros((6, 7))},
    {"Mass,Edema": np.zeros((7, 7))},
    {"": np.zeros((7, 7))},
])
def test_cam_sheet_refuses_what_it_cannot_store(maps: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError):
        cam_sheet_png(maps)



def test_heatmap_layer_is_cheap() -> None:
    cam = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    heatmap_layer_png(cam)
    start = time.perf_counter()
    for _ in range(14):
        heatmap_layer_png(cam)
    per_map_ms = (time.perf_counter() - start) * 1000 / 14
    assert per_map_ms < 50, f"{per_map_ms:.1f} ms per heatmap layer"  # a few ms on a quiet machine


def test_overlay_is_rgb_at_original_size_with_box(nih_full_images: list[Path]) -> None:
    path = next(p for p in nih_full_images if Image.open(p).size == (512, 512))
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    cam = np.zeros((7, 7), np.float32)
    cam[3, 3] = 1.0
    box = box_from_cam(cam, 512, 512)
    assert box is not None
    image = _decode(overlay_png(pixels, cam, box))
    assert image.mode == "RGB" and image.size == (512, 512)
    rgb = np.asarray(image).astype(int)
    assert tuple(rgb[box.y, box.x + box.width // 2]) == (0, 255, 0)  # the box's top edge
    far = rgb[10, 10]
    assert far[0] == far[1] == far[2] == round(pixels[10, 10] * 255)  # no activation: the X-ray itself
    centre = rgb[256, 256]
    assert centre[0] > centre[2]  # hot centre tinted red


def _one_box_the_plain_way(cam: np.ndarray, width: int, height: int) -> Box | None:
    """The per-map rule written out on its own: threshold half the peak, 2-D label, largest region."""
    from scipy import ndimage

    peak = float(cam.max())
    if peak <= 0.0:
        return None
    grid_h, grid_w = min(height, cam.shape[0] * 8), min(width, cam.shape[1] * 8)
    labels, count = ndimage.label(upsample(cam, grid_h, grid_w) >= 0.5 * peak)
    if count == 0:
        return None
    rows, cols = ndimage.find_objects(labels)[int(np.argmax(np.bincount(labels.ravel())[1:]))]
    x0, x1 = round(cols.start * width / grid_w), round(cols.stop * width / grid_w)
    y0, y1 = round(rows.start * height / grid_h), round(rows.stop * height / grid_h)
    return Box(x=x0, y=y0, width=max(1, x1 - x0), height=max(1, y1 - y0))


@pytest.mark.parametrize(("width", "height"), [(1024, 1024), (224, 224), (30, 50), (800, 400)])
def test_boxes_of_a_stack_equal_each_map_boxed_alone(width: int, height: int) -> None:
    rng = np.random.default_rng(width + height)
    stack = np.stack([np.clip(upsample(rng.random((3, 3)) - 0.3, 7, 7), 0, None) for _ in range(14)])
    stack[3] = 0.0  # a map with no positive value: no box, and it must not disturb its neighbours
    stack[5] = np.eye(7)  # diagonal cells touch only at corners: separate regions (4-connectivity)
    expected = [_one_box_the_plain_way(cam, width, height) for cam in stack]
    assert boxes_from_cams(stack, width, height) == expected
    assert expected[3] is None and expected[5] is not None
    assert [box_from_cam(cam, width, height) for cam in stack] == expected


def test_largest_regions_of_a_stack_equal_each_map_labelled_alone() -> None:
    """Random stacks with many small regions (so many ties of size, which the first region in
    row-major order must win) and thin shapes: the stacked labelling equals one map at a time."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    stacks = [rng.random((int(rng.integers(1, 6)), int(rng.integers(1, 14)), int(rng.integers(1, 14))))
              < rng.random() for _ in range(300)]
    stacks += [np.zeros((14, 56, 56), dtype=bool), np.ones((2, 56, 56), dtype=bool)]
    for stack in stacks:
        expected = []
        for above in stack:
            labels, count = ndimage.label(above)
            if count == 0:
                expected.append([-1] * 4)
                continue
            rows, cols = ndimage.find_objects(labels)[int(np.argmax(np.bincount(labels.ravel())[1:]))]
            expected.append([rows.start, rows.stop, cols.start, cols.stop])
        assert largest_regions(stack).tolist() == expected, stack.astype(int)
