"""`python -m bench.decode` runs on the real nih-full PNGs and reports what it claims to."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import decode


def test_it_times_the_service_stages_and_pillow_on_1024_px_pngs(
        nih_full_images: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    decode.main(["--images", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "2 nih-full PNGs of 1024 x 1024" in out
    assert "| read_image (decode to uint8 levels) |" in out
    assert "| preprocess of the levels (resize to 224, normalise) |" in out
    assert "| before: Pillow decode + float copy + Pillow float resize |" in out
    assert "| Pillow (the service's fallback) |" in out
    assert "| shared.png_fast (the service's) |" in out
    assert "DIFFERENT" not in out  # any optional decoder present must agree with Pillow


def test_only_full_size_images_are_used(nih_full_images: list[Path]) -> None:
    datas = decode.full_size_pngs(100)
    assert datas and all(Image.open(io.BytesIO(d)).size == (1024, 1024) for d in datas)
    smaller = [p for p in nih_full_images if Image.open(p).size != (1024, 1024)]
    assert len(datas) == len(nih_full_images) - len(smaller)


def test_the_optional_decoders_that_import_decode_a_png() -> None:
    decoders = decode.optional_decoders()
    if not decoders:  # the project installs none of them; see the module docstring
        pytest.skip("no optional PNG decoder importable (put pyspng/imagecodecs/opencv on PYTHONPATH)")
    pixels = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    data = io.BytesIO()
    Image.fromarray(pixels).save(data, "PNG")
    for name, decoder in decoders.items():
        assert np.array_equal(np.squeeze(decoder(data.getvalue())), pixels), name
