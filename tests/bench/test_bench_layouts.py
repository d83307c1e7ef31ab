"""`bench.worker`'s probe layouts (PxT, PxT-ram), what each repeat asks the probes, and the bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import worker
from bench.worker import Layout, Results, bound_row, parse_layout, probe_commands, probe_layouts


def args(*argv: str) -> Any:
    return worker.parse_args(list(argv))


@pytest.mark.parametrize(("name", "expected"), [
    ("3x1", Layout(3, 1)), ("1x2", Layout(1, 2)), ("2x1-ram", Layout(2, 1, ram=True)), ("12x4", Layout(12, 4)),
])
def test_a_layout_is_processes_by_threads_optionally_in_ram(name: str, expected: Layout) -> None:
    assert parse_layout(name) == expected


@pytest.mark.parametrize("name", ["2x", "x1", "0x1", "2x0", "2x1-disk", "axb", "2x1x1", "2x-1", "", "2x1-"])
def test_a_malformed_layout_is_refused_with_the_expected_form(name: str) -> None:
    with pytest.raises(SystemExit, match="PROCESSESxTHREADS"):
        parse_layout(name)


def test_a_ram_layout_is_refused_where_there_is_no_ram_folder(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.setattr(worker, "RAM_FOLDER", tmp_path / "missing")
    with pytest.raises(SystemExit, match="RAM file system"):
        parse_layout("2x1-ram")
    assert parse_layout("2x1") == Layout(2, 1)


def test_the_probe_layouts_are_both_defaults_then_the_extra_ones() -> None:
    layouts = probe_layouts(args("--extra-layouts", "3x1,2x1-ram"))
    assert list(layouts) == ["1x2", "2x1", "3x1", "2x1-ram"]
    assert layouts["2x1"].processes == 2 and not layouts["2x1"].ram
    assert layouts["2x1-ram"] == Layout(2, 1, ram=True)


def test_only_one_thread_layouts_measure_the_cpu_outside_the_forward_pass() -> None:
    options = args("--batch", "8")
    one, two = probe_commands(options, Layout(2, 1)), probe_commands(options, Layout(1, 2))
    assert one == [("go", "layout"), ("go 8", "layout_b8"), ("path", "layout_path"), ("outside", None)]
    assert two == one[:3]


def test_the_bound_uses_the_2x1_bare_pass_and_both_outside_figures() -> None:
    results = Results()
    # 2 cores at 100 images/s in all: 20 ms of one core per image.
    for key, value in [("layout_2x1/ov", 100.0), ("layout_path_2x1/ov", 70.0), ("outside_forward_cpu_ms/ov", 4.0),
                       ("outside_cpu_ms_2x1/ov/warm", 5.0), ("outside_cpu_ms_2x1/ov/after_pass", 5.0),
                       ("outside_cpu_ms_2x1/ov/after_pass", 7.0), ("outside_cpu_ms_2x1/ov/after_pass", 6.0)]:
        results.add(key, value)
    row = bound_row(results, "ov")
    cpus = len(worker.os.sched_getaffinity(0))
    forward = cpus * 1000.0 / 100.0
    assert row[:4] == ["ov", pytest.approx(forward), 4.0, pytest.approx(forward / (forward + 4.0))]
    assert row[4:] == [5.0, 6.0, pytest.approx(forward / (forward + 6.0)), pytest.approx(0.7)]


def test_the_bound_without_probes_falls_back_to_the_in_process_pass() -> None:
    results = Results()
    results.add("forward_b1/ov", 50.0)
    results.add("outside_forward_cpu_ms/ov", 2.0)
    row = bound_row(results, "ov")
    assert row[3] == pytest.approx(row[1] / (row[1] + 2.0))
    assert row[7] == ""  # nothing measured in 2 x 1


def _probe(bundle: Path, images: list[Path], commands: str, env_extra: dict[str, str]) -> list[dict[str, Any]]:
    import os

    argv = [sys.executable, "-m", "bench.worker", "--probe", "openvino", "f32", "1", "2", str(bundle),
            *map(str, images)]
    done = subprocess.run(argv, input=commands, capture_output=True, text=True, timeout=600,
                          cwd=worker.common.PROJECT_ROOT, env={**os.environ, **env_extra})
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_a_probe_measures_the_cpu_outside_the_pass_warm_and_after_a_pass_in_its_own_folder(
        service_bundle: Path, nih_full_images: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    ready, answer = _probe(service_bundle, nih_full_images[:2], "outside\n", {"TMPDIR": str(tmp_path)})
    assert ready["event"] == "ready" and Path(ready["scratch"]).parent == tmp_path
    assert answer["event"] == "done"
    outside = answer["outside_cpu_ms"]
    assert set(outside) == {"warm", "after_pass"}
    assert all(0.0 < ms < 1000.0 for ms in outside.values())
    assert not any(tmp_path.iterdir())  # the probe removed its scratch folder


def test_after_a_pass_runs_one_real_forward_pass_before_each_study(service_bundle: Path,
                                                                   nih_full_images: list[Path],
                                                                   tmp_path: Path) -> None:
    from shared.runtime import load_predictor

    class Counting:
        def __init__(self, predictor: Any) -> None:
            self.predictor, self.calls = predictor, []

        def __getattr__(self, name: str) -> Any:
            return getattr(self.predictor, name)

        def predict(self, batch: Any) -> Any:
            self.calls.append(len(batch))
            return self.predictor.predict(batch)

    predictor = Counting(load_predictor(service_bundle, "tensorflow", "f32"))
    images = nih_full_images[:3]
    batch = worker.preprocessed(images, predictor.input_size)
    path = worker.WorkerPath(tmp_path, images)
    try:
        predictor.calls.clear()
        assert worker.outside_forward_cpu_ms(path, predictor, batch) > 0.0
        assert predictor.calls == [1]  # the replayed answer, recorded once
        predictor.calls.clear()
        assert worker.outside_forward_cpu_ms(path, predictor, batch, after_pass=True) > 0.0
        assert predictor.calls == [1, 1, 1, 1]  # the recording, then one real pass per study
    finally:
        path.engine.dispose()
