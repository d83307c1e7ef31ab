"""Optional CLAHE preprocessing: recorded in the card, applied by the predictor, refused clearly
without OpenCV. (Tried on nih-64 and not kept for the demo: see docs/MODEL_CARD.md.)"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from shared.classifier import BundleError, CardBacked, ModelCard, clahe_settings, preprocess

PIXELS = np.tile(np.linspace(0.3, 0.5, 128, dtype=np.float32), (128, 1))  # a low-contrast ramp


def test_clahe_spreads_a_low_contrast_image_and_the_card_carries_it() -> None:
    pytest.importorskip("cv2", reason="CLAHE needs OpenCV: pip install opencv-python-headless")
    plain = preprocess(PIXELS, 64)
    equalised = preprocess(PIXELS, 64, clahe_settings())
    assert equalised.shape == plain.shape and equalised[..., 0].std() > 1.1 * plain[..., 0].std()

    class Holder(CardBacked):
        def __init__(self, card: ModelCard) -> None:
            self.card = card

    card = ModelCard(name="t", input_size=64, version="0" * 16, trained=False)
    assert Holder(card).clahe is None
    np.testing.assert_array_equal(Holder(card).preprocess(PIXELS), plain)
    with_clahe = dataclasses.replace(card, preprocessing={**card.preprocessing, "clahe": clahe_settings()})
    np.testing.assert_array_equal(Holder(with_clahe).preprocess(PIXELS), equalised)


def test_clahe_without_opencv_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    with pytest.raises(BundleError, match="opencv-python-headless"):
        preprocess(PIXELS, 64, clahe_settings())
