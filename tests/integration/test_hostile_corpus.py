"""Every hostile case is refused with its specific message, by the header check and by the full read."""

from __future__ import annotations

import pytest

from shared.config import ImageLimits
from shared.images import InvalidImage, inspect_image, read_image
from tests.hostile_corpus import HostileCase, hostile_cases

CASES = hostile_cases()
LIMITS = ImageLimits()


def test_corpus_names_are_unique_and_cover_the_issue() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
    for needed in ("empty", "truncated_png", "truncated_jpeg", "png_decompression_bomb", "png_1x1",
                   "dicom_no_pixel_data", "dicom_missing_dicm", "dicom_unsupported_transfer_syntax",
                   "dicom_deeply_nested", "html_renamed_png", "text_renamed_png"):
        assert needed in names


def test_the_bomb_is_small_but_declares_huge_dimensions() -> None:
    bomb = next(case for case in CASES if case.name == "png_decompression_bomb")
    assert len(bomb.data) < 1_000_000


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_inspect_image_refuses(case: HostileCase) -> None:
    with pytest.raises(InvalidImage) as excinfo:
        inspect_image(case.data, LIMITS)
    assert case.expected in str(excinfo.value)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_read_image_refuses(case: HostileCase) -> None:
    with pytest.raises(InvalidImage) as excinfo:
        read_image(case.data, LIMITS)
    assert case.expected in str(excinfo.value)
