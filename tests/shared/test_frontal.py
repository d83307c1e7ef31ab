"""The frontal chest X-ray check: the DICOM header's say, the distance from the training X-rays on real
images and real negatives (pydicom's CT and MR files, generated pictures), the shipped bundle's
reference reproducing from its card's split, and what a flag does to the summary and the urgency."""

from __future__ import annotations

import glob
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pydicom.data
import pydicom.errors
import pytest

from shared.classifier import preprocess, read_card
from shared.config import ImageLimits
from shared.frontal import FrontalReference, check, header_reason, thumbnail
from shared.images import DicomMetadata, InvalidImage, read_image
from shared.report_text import AID_NOT_DIAGNOSIS, plain_summary
from shared.triage import triage
from training.frontal import fit_frontal, fit_reference, model_input, thumbnails
from training.negatives import generated_negatives

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
SIZE = 64


@pytest.mark.parametrize(("modality", "view", "part", "expected"), [
    ("CR", "PA", "CHEST", None),
    ("DX", "AP", None, None),
    (None, None, None, None),
    ("OT", "", "", None),  # other / secondary capture: the image decides
    (" dx ", "pa", "chest", None),
    ("DX", "AP", "PORT CHEST", None),
    ("CT", "", "CHEST", "the DICOM modality is CT (computed tomography), not a radiograph"),
    ("MR", None, None, "the DICOM modality is MR (magnetic resonance), not a radiograph"),
    ("XC", None, None, "the DICOM modality is XC, not a radiograph"),
    ("DX", "LL", "CHEST", "the DICOM view position is LL, not a frontal (PA or AP) view"),
    ("CR", "rl", None, "the DICOM view position is RL, not a frontal (PA or AP) view"),
    ("DX", "PA", "SKULL", "the DICOM body part is SKULL, not the chest"),
])
def test_the_header_says_what_it_is(modality: str | None, view: str | None, part: str | None,
                                    expected: str | None) -> None:
    assert header_reason(modality, view, part) == expected
    header = DicomMetadata(modality=modality, view_position=view, body_part_examined=part)
    verdict = check(np.zeros((SIZE, SIZE, 3), np.float32), None, header)
    assert verdict.flagged is (expected is not None) and verdict.reason == expected and verdict.distance is None


def test_thumbnail_ignores_exposure_and_the_preprocessing_offsets() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.random((300, 280))
    base = thumbnail(preprocess(pixels, SIZE))
    brighter = thumbnail(preprocess(0.2 + 0.5 * pixels, SIZE))
    assert base.shape == (1024,) and abs(base.mean()) < 1e-9 and abs(base.std() - 1) < 1e-6
    assert np.allclose(base, brighter, atol=1e-4)


@pytest.fixture(scope="module")
def reference(nih64_dir: Path) -> FrontalReference:
    """Fitted like a trained bundle's: the demo card's train split, the limit from its validation split."""
    split = read_card(DEMO).training["split"]
    images = nih64_dir / "images"
    return fit_reference(thumbnails((images / n for n in split["train"]), SIZE),
                         thumbnails((images / n for n in split["validation"]), SIZE))


def _verdicts(datas: list[bytes], reference: FrontalReference, header: bool = False) -> list[bool]:
    out = []
    for data in datas:
        try:
            image = read_image(data, ImageLimits())
        except InvalidImage:
            continue
        out.append(check(model_input(image, SIZE, None), reference, image.info.metadata if header else None).flagged)
    return out


def test_frontal_x_rays_pass_at_any_size(reference: FrontalReference, nih_full_images: list[Path],
                                         nih64_dir: Path) -> None:
    split = read_card(DEMO).training["split"]
    test = [(nih64_dir / "images" / n).read_bytes() for n in split["test"]]
    assert not any(_verdicts([p.read_bytes() for p in nih_full_images], reference))  # 1024 px originals
    assert sum(_verdicts(test, reference)) <= 0.02 * len(test)  # unseen patients


def test_paediatric_frontal_x_rays_mostly_pass(reference: FrontalReference, kermany_dir: Path) -> None:
    paths = sorted((kermany_dir / "test").rglob("*.jpeg"))[::4]
    assert len(paths) > 100
    assert sum(_verdicts([p.read_bytes() for p in paths], reference)) <= 0.03 * len(paths)


def _modality(path: str) -> str:
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).get("Modality", ""))
    except pydicom.errors.InvalidDicomError:
        return ""


def test_ct_and_mr_slices_are_flagged_from_the_image_alone(reference: FrontalReference) -> None:
    folder = Path(pydicom.data.__file__).parent / "test_files"
    slices = [Path(p).read_bytes() for p in sorted(glob.glob(str(folder / "**" / "*.dcm"), recursive=True))
              if _modality(p) in ("CT", "MR")]
    verdicts = _verdicts(slices, reference)
    assert len(verdicts) >= 8 and all(verdicts)
    assert all(_verdicts(slices, reference, header=True))


def test_generated_pictures_are_flagged(reference: FrontalReference, nih_full_images: list[Path]) -> None:
    kinds = generated_negatives(20, [p.read_bytes() for p in nih_full_images[:5]])
    for name, datas in kinds.items():
        share = np.mean(_verdicts(datas, reference))
        assert share >= (0.6 if "gradient" in name else 0.9), (name, share)  # smooth gradients: see MODEL_CARD


def test_the_demo_bundles_reference_reproduces_from_its_card(nih64_dir: Path, tmp_path: Path) -> None:
    card = read_card(DEMO)
    split = card.training["split"]
    entry = fit_frontal(tmp_path, nih64_dir / "images", split["train"], split["validation"], card.input_size)
    assert entry == card.frontal
    shipped = FrontalReference.load(DEMO, card.frontal)
    refitted = FrontalReference.load(tmp_path, entry)
    assert shipped is not None and refitted is not None
    assert np.allclose(shipped.components, refitted.components, atol=1e-5)
    assert shipped.limit == pytest.approx(refitted.limit, rel=1e-3)


def test_a_bundle_without_a_reference_gets_the_header_check_only(tmp_path: Path, nih64_dir: Path) -> None:
    names = read_card(DEMO).training["split"]["train"]
    assert fit_frontal(tmp_path, nih64_dir / "images", names[:20], names[20:30], SIZE) == {}  # too few
    assert not (tmp_path / "frontal.npz").exists()
    assert FrontalReference.load(tmp_path, {}) is None
    assert FrontalReference.load(tmp_path, {"limit": 1.0}) is None  # the card names a file that is absent


def test_a_flag_makes_the_study_not_urgent_and_the_summary_says_why() -> None:
    finding = SimpleNamespace(label="Pneumothorax", probability=0.97, threshold=0.3, positive=True)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert triage([finding], now, 60).urgency > 0.9
    assert triage([finding], now, 60, not_frontal=True).urgency == 0.0
    reason = "the DICOM modality is CT (computed tomography), not a radiograph"
    text = plain_summary([finding], True, reason)
    assert text.startswith("The image does not look like a frontal chest X-ray (" + reason + ")")
    assert "unreliable" in text and text.endswith(AID_NOT_DIAGNOSIS)
    assert "frontal" not in plain_summary([finding], True)
