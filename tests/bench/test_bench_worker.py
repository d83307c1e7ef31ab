"""`python -m bench.worker`: the bare pass and the worker path side by side, in real probe processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import worker

pytestmark = pytest.mark.slow


def test_a_runtime_the_machine_cannot_run_is_skipped_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert worker.usable_runtimes("tensorflow-bf16, tensorflow-f32") == ["tensorflow-f32"]
    assert "skipping tensorflow-bf16: " in capsys.readouterr().err


def test_it_measures_the_bare_pass_and_the_worker_path_in_each_layout(
        service_bundle: Path, nih_full_images: list[Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openvino")
    out_json = tmp_path / "samples.json"
    assert worker.main(["--runtimes", "openvino-f32", "--processes", "1,2", "--images", "2", "--repeats", "1",
                        "--batch", "2", "--bundle", str(service_bundle), "--json", str(out_json)]) == 0
    samples = json.loads(out_json.read_text())
    for processes in (1, 2):
        key = f"openvino-f32/{processes}"
        assert [len(samples[f"{what}/{key}"]) for what in ("bare_b1", "bare_b2", "path")] == [1, 1, 1]
        assert all(samples[f"{what}/{key}"][0] > 0 for what in ("bare_b1", "bare_b2", "path"))
        assert len(samples[f"load_s/{key}"]) == processes
    out = capsys.readouterr().out
    assert "| openvino-f32 | 1 |" in out and "| openvino-f32 | 2 |" in out
    assert "path / bare b1" in out
