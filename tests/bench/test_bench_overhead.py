"""`python -m bench.overhead` runs on real nih-full PNGs and reports each pair it claims to."""

from __future__ import annotations

from pathlib import Path

import pytest

import shared.classifier
import shared.gradcam
import shared.storage
from bench import overhead


def test_it_compares_each_optimisation_with_its_fallback(nih_full_images: list[Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    overhead.main(["--images", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "2 nih-full 1024 px PNGs" in out
    assert "| decode + preprocess, 1024 px PNG | glibc default malloc |" in out
    if shared.gradcam._regions is not None:
        assert "| 14 boxes of a study | scipy labelling |" in out
    if shared.classifier._resample is not None:
        assert "| preprocess of a 224 px image | numpy clip, scale, 3 channels |" in out
    if shared.storage._durable is not None:
        assert "| durable sheet write (wall) | caller's thread |" in out
        assert "| write + 1 ms of the caller's work (wall) |" in out
    assert "| claim + record transactions, SQLite (14 findings) | SQLAlchemy Connection |" in out
