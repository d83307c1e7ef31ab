"""`python -m bench.load`: end to end through `xray up` from source trees side by side."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench import common, load

pytestmark = pytest.mark.slow


def test_the_last_finish_time_is_read_from_a_database_the_service_migrated(tmp_path: Path) -> None:
    from shared.db import make_engine, make_session_factory, session_scope
    from shared.models import Batch, Study

    url = f"sqlite:///{tmp_path / 'xray.db'}"
    common.xray(common.PROJECT_ROOT, common.tree_env(common.PROJECT_ROOT, DATABASE_URL=url), "db", "upgrade")
    finished = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    engine = make_engine(url)
    with session_scope(make_session_factory(engine)) as session:
        batch = Batch(label="bench")
        session.add_all([Study(batch=batch, original_filename=f"{i}.png", sha256=f"{i}" * 64, stored_path="x",
                               format="png", size_bytes=1, status="done", finished_at=finished - timedelta(seconds=i))
                         for i in range(3)])
        session.flush()
        batch_id = batch.id
    engine.dispose()
    assert load.last_finished(tmp_path / "xray.db", batch_id) == finished
    assert load.last_finished(tmp_path / "xray.db", batch_id + 1) is None
    assert load.last_finished(tmp_path / "missing.db", batch_id) is None


def test_two_trees_are_measured_alternately_and_compared(service_bundle: Path, nih_full_images: list[Path],
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openvino")
    root = str(common.PROJECT_ROOT)
    out_json = tmp_path / "samples.json"
    assert load.main(["--tree", root, "--tree", os.path.relpath(root), "--runtimes", "openvino-f32",
                      "--workers", "1", "--studies", "4", "--chunk", "3", "--repeats", "2",
                      "--bundle", str(service_bundle), "--json", str(out_json)]) == 0
    samples = json.loads(out_json.read_text())
    assert set(samples) == {"openvino-f32/0", "openvino-f32/1"}
    assert all(len(rates) == 2 and all(r > 0 for r in rates) for rates in samples.values())
    captured = capsys.readouterr()
    assert [line.split(" tree ")[1].split(":")[0] for line in captured.err.splitlines() if " repeat " in line] \
        == ["0", "1", "0", "1"]  # A B A B
    assert f"| openvino-f32 | 0: {root} |" in captured.out and "| 1.000 |" in captured.out
