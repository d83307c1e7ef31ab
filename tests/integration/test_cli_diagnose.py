"""`xray model init` and `xray diagnose` through cli.main.main, on real X-rays and a broken file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.main import main
from shared.findings import FINDINGS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models") / "untrained"
    assert main(["model", "init", str(directory), "--input-size", "64", "--seed", "1"]) == 0
    return directory


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_model_init_writes_an_untrained_bundle(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = json.loads((bundle / "card.json").read_text())
    assert card["trained"] is False and card["input_size"] == 64 and "UNTRAINED" in card["note"]
    assert main(["model", "show", str(bundle)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["version"] == card["version"]
    assert "UNTRAINED" in captured.err


def test_model_init_will_not_overwrite(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (bundle / "weights.npz").stat().st_mtime_ns
    assert main(["model", "init", str(bundle), "--input-size", "64"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (bundle / "weights.npz").stat().st_mtime_ns == before


def test_diagnose_two_images_and_a_broken_file(
    bundle: Path, nih_full_images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    files = [nih_full_images[0], broken, nih_full_images[-1]]
    out = tmp_path / "overlays"
    code = main(["diagnose", *map(str, files), "--model", str(bundle), "--out", str(out), "--batch-size", "2"])
    captured = capsys.readouterr()
    results = _json_lines(captured.out)

    assert code != 0
    assert [r["file"] for r in results] == [str(f) for f in files]
    error = results[1]
    assert set(error) == {"file", "error"} and error["error"]
    assert "UNTRAINED" in captured.err
    for result, path in ((results[0], files[0]), (results[2], files[2])):
        _check_result(result, path)


def _check_result(result: dict, path: Path) -> None:
    with Image.open(path) as original:
        size = original.size
    assert result["format"] == "png" and (result["width"], result["height"]) == size
    assert result["dicom"] is None
    assert [f["label"] for f in result["findings"]] == list(FINDINGS)
    positives = [f["label"] for f in result["findings"] if f["probability"] >= f["threshold"]]
    assert result["positives"] == positives and result["no_finding"] == (not positives)
    assert result["model_trained"] is False and "UNTRAINED" in result["warning"]
    assert len(result["model_version"]) == 16
    expected = positives or [max(result["findings"], key=lambda f: f["probability"])["label"]]
    assert sorted(result["heatmaps"]) == sorted(expected)
    for written in result["heatmaps"].values():
        with Image.open(written) as overlay:
            assert overlay.format == "PNG" and overlay.mode == "RGB" and overlay.size == size


def test_diagnose_dicom_reports_its_metadata(
    bundle: Path, nih_full_images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.dicom_factory import dicom_from_png

    dicom = tmp_path / "study.dcm"
    dicom.write_bytes(dicom_from_png(nih_full_images[-1], photometric="MONOCHROME1", window="full"))
    assert main(["diagnose", str(dicom), "--model", str(bundle)]) == 0
    (result,) = _json_lines(capsys.readouterr().out)
    assert result["format"] == "dicom" and result["dicom"]["patient_id"] == "TEST-0001"
    assert result["heatmaps"] == {}  # no --out, no files


def test_diagnose_without_a_model_says_what_to_do(
    nih_full_images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-model"
    assert main(["diagnose", str(nih_full_images[0]), "--model", str(missing)]) == 2
    assert "xray model init" in capsys.readouterr().err


def test_diagnose_default_model_dir_comes_from_settings(
    nih_full_images: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "configured"))
    assert main(["diagnose", str(nih_full_images[0])]) == 2
    assert str(tmp_path / "configured") in capsys.readouterr().err


def test_diagnose_with_the_demo_model_flags_what_is_not_a_chest_x_ray(
    nih_full_images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo bundle's frontal check, as the worker runs it: a real X-ray passes; a chart (pixels only)
    and pydicom's CT slice (header and pixels) are flagged, with the reason in the output."""
    import pydicom.data

    from training.negatives import chart

    figure = tmp_path / "figure.png"
    figure.write_bytes(chart(np.random.default_rng(1)))
    ct = pydicom.data.get_testdata_file("CT_small.dcm")
    demo = Path(__file__).resolve().parents[2] / "models" / "demo"
    assert main(["diagnose", str(nih_full_images[0]), str(figure), str(ct), "--model", str(demo)]) == 0
    xray, drawn, slice_ = _json_lines(capsys.readouterr().out)
    assert xray["frontal_check"]["flagged"] is False and xray["frontal_check"]["distance"] < 3.0
    assert drawn["frontal_check"]["flagged"] is True and "looks unlike" in drawn["frontal_check"]["reason"]
    assert slice_["frontal_check"]["flagged"] is True and "modality is CT" in slice_["frontal_check"]["reason"]
