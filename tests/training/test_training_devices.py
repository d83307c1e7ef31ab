"""`xray train` beyond one float32 CPU run, for real on the CPU: mixed precision, MirroredStrategy
over two logical CPU devices (the multi-GPU code path), and resuming after the process was killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shared.classifier import WEIGHTS_FILE, Classifier
from shared.findings import FINDINGS
from tests.training.support import label_subset
from training.dataset import load_arrays
from training.labels import read_labels
from training.train import STATE_FILE, TrainConfig, train

pytestmark = pytest.mark.slow
SIZE = 32
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def labels(nih64_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """NIH's own rows (same header) of 6 train, 25 validation and 4 test patients of nih-64."""
    return label_subset(nih64_dir, tmp_path_factory.mktemp("labels") / "Data_Entry.csv", 6, 25, 4)


def _train_command(nih64_dir: Path, labels: Path, root: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "cli.main", "train", "--images", str(nih64_dir / "images"), "--labels", str(labels),
        "--out", str(root / "bundle"), "--checkpoint-dir", str(root / "checkpoints"), "--image-size", str(SIZE),
        "--weights", "none", "--gpus", "0", "--no-progress", *extra,
    ]


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _predicts(bundle: Path, nih64_dir: Path, labels: Path) -> np.ndarray:
    classifier = Classifier.load(bundle)
    images = load_arrays(nih64_dir / "images", read_labels(labels).images[:4], SIZE)
    probabilities, _ = classifier.predict(images)
    assert probabilities.dtype == np.float32 and probabilities.shape == (4, len(FINDINGS))
    assert np.all((probabilities > 0) & (probabilities < 1))
    return probabilities


def test_mixed_precision_trains_and_saves_the_float32_served_model(
    nih64_dir: Path, labels: Path, tmp_path: Path
) -> None:
    import keras

    config = TrainConfig(
        images_dir=nih64_dir / "images", labels_path=labels, out_dir=tmp_path / "mixed", image_size=SIZE,
        epochs=1, batch_size=8, checkpoint_dir=tmp_path / "checkpoints", progress=False, precision="mixed",
    )
    card = train(config)
    assert keras.mixed_precision.global_policy().name == "float32"  # the policy does not leak out
    training = card["training"]
    assert training["precision"] == "mixed_float16" and training["replicas"] == 1
    assert training["history"][0]["val_mean_auroc"] is not None and np.isfinite(training["history"][0]["loss"])
    classifier = Classifier.load(config.out_dir)
    assert all(w.dtype == "float32" for w in classifier.model.weights)
    assert classifier.model.dtype_policy.name == "float32"
    _predicts(config.out_dir, nih64_dir, labels)
    state = json.loads((config.checkpoints / STATE_FILE).read_text())
    with np.load(config.checkpoints / state["last_optimizer"]) as stored:  # loss scale kept for --resume
        assert len(stored.files) > 2 * len(classifier.model.trainable_weights)


def test_mirrored_strategy_over_two_logical_cpus(nih64_dir: Path, labels: Path, tmp_path: Path) -> None:
    command = _train_command(nih64_dir, labels, tmp_path, "--cpu-replicas", "2", "--batch-size", "4",
                             "--epochs", "1", "--precision", "float32")
    done = subprocess.run(command, cwd=tmp_path, env=_environment(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "global batch 8 (4 per replica)" in done.stdout
    training = json.loads((tmp_path / "bundle" / "card.json").read_text())["training"]
    assert training["distribution"] == "MirroredStrategy" and training["replicas"] == 2
    assert training["global_batch_size"] == training["batch_size"] == 8
    assert training["per_replica_batch_size"] == 4
    assert [d.split(" of ")[0] for d in training["devices"]] == ["logical CPU 0", "logical CPU 1"]
    _predicts(tmp_path / "bundle", nih64_dir, labels)


def test_killed_run_resumes_from_its_last_checkpoint(nih64_dir: Path, labels: Path, tmp_path: Path) -> None:
    epochs = 4
    command = _train_command(nih64_dir, labels, tmp_path, "--epochs", str(epochs), "--batch-size", "8")
    state_path = tmp_path / "checkpoints" / STATE_FILE
    first = subprocess.Popen(command, cwd=tmp_path, env=_environment(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        while not state_path.exists():
            assert first.poll() is None, f"training ended before its first checkpoint: {first.stderr.read()[-3000:]}"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    killed = json.loads(state_path.read_text())
    done_before = killed["epochs_done"]
    assert 1 <= done_before < epochs
    assert not (tmp_path / "bundle").exists()
    for key in ("best_weights", "last_weights", "last_optimizer"):
        assert (tmp_path / "checkpoints" / killed[key]).is_file()

    resumed = subprocess.run([*command, "--resume"], cwd=tmp_path, env=_environment(), capture_output=True,
                             text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming after epoch {done_before} from" in resumed.stdout
    training = json.loads((tmp_path / "bundle" / "card.json").read_text())["training"]
    assert [h["epoch"] for h in training["history"]] == list(range(1, epochs + 1))
    assert training["history"][:done_before] == killed["history"]
    assert training["epochs_run"] == epochs
    assert training["history"][done_before]["elapsed_s"] >= killed["history"][-1]["elapsed_s"]
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    final = json.loads(state_path.read_text())
    assert set(left) == {STATE_FILE, final["best_weights"], final["last_weights"], final["last_optimizer"]}
    assert (tmp_path / "bundle" / WEIGHTS_FILE).is_file()
