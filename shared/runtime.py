"""Inference runtimes for a model bundle: TensorFlow (`Classifier`'s tf.function) or OpenVINO.

Both give the `Predictor` interface that `shared.diagnosis.Diagnoser` uses: `predict(batch) ->
(probabilities (N, 14), features (N, h, w, 2048))` plus the card, version, thresholds and the dense
kernel the CAMs need. `XRAY_RUNTIME` and `XRAY_PRECISION` default to `auto`: OpenVINO where it is
installed (bf16 where the CPU computes bfloat16 natively, else f32), TensorFlow f32 otherwise.

OpenVINO converts the same Keras model once and caches the IR beside the bundle in
`<bundle>/openvino/<version>-<precision>/` (gitignored); a process that finds the cache never imports
TensorFlow. Threads: each process gets `cpus // processes` inference threads; with more than one
process OpenVINO's CPU pinning is off, or every process would pin to the same first cores.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from shared.classifier import (
    PROBABILITIES_LAYER,
    BundleError,
    CardBacked,
    ModelCard,
    file_version,
    read_card,
)

if TYPE_CHECKING:
    from shared.classifier import Classifier

log = logging.getLogger(__name__)

RUNTIMES = ("tensorflow", "openvino")
PRECISIONS = ("f32", "bf16")
AUTO = "auto"
OPENVINO_DIR = "openvino"
IR_FILE = "model.xml"
IR_META = "meta.json"
INPUT_NAME = "images"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_FEATURES = "features"


class RuntimeUnavailable(ValueError):
    """The requested runtime/precision cannot run here; the message says what to do instead."""


class Predictor(Protocol):
    """What Diagnoser needs from a loaded model, whichever runtime serves it."""

    card: ModelCard
    dense_kernel: np.ndarray
    dense_bias: np.ndarray

    @property
    def version(self) -> str: ...
    @property
    def trained(self) -> bool: ...
    @property
    def input_size(self) -> int: ...
    @property
    def labels(self) -> tuple[str, ...]: ...
    @property
    def thresholds(self) -> np.ndarray: ...
    @property
    def runtime_name(self) -> str: ...
    def preprocess(self, pixels: np.ndarray) -> np.ndarray: ...
    def calibrate(self, raw: np.ndarray) -> np.ndarray: ...
    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class RuntimeChoice:
    """A validated runtime/precision with the threads and pinning one process should use."""

    runtime: str
    precision: str
    threads: int
    processes: int

    @property
    def name(self) -> str:
        return f"{self.runtime}-{self.precision}"

    @property
    def pin_cpus(self) -> bool:
        return self.processes == 1


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_process(processes: int, cpus: int | None = None) -> int:
    """Split the machine's CPUs evenly among `processes` inference processes (at least 1 each)."""
    cpus = available_cpus() if cpus is None else cpus
    return max(1, cpus // max(1, processes))


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bfloat16 arithmetic (AVX512_BF16 or AMX), as OpenVINO sees it."""
    try:
        import openvino as ov
    except ImportError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_auto(runtime: str, precision: str) -> tuple[str, str]:
    """Replace `auto` by what this machine runs best: OpenVINO when installed, bf16 where native."""
    runtime = runtime.strip().lower() or AUTO
    precision = precision.strip().lower() or AUTO
    if runtime == AUTO:
        runtime = "openvino" if openvino_installed() else "tensorflow"
    if precision == AUTO:
        precision = "bf16" if runtime == "openvino" and cpu_supports_bf16() else "f32"
    return runtime, precision


def choose_runtime(runtime: str, precision: str, processes: int = 1, threads: int | None = None) -> RuntimeChoice:
    """Validate a runtime/precision pair (`auto` allowed), saying what to set instead when it cannot
    run here."""
    runtime, precision = resolve_auto(runtime, precision)
    if runtime not in RUNTIMES:
        raise RuntimeUnavailable(f"XRAY_RUNTIME must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if precision not in PRECISIONS:
        raise RuntimeUnavailable(f"XRAY_PRECISION must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if runtime == "openvino" and not openvino_installed():
        raise RuntimeUnavailable("XRAY_RUNTIME=openvino but the openvino package is not installed: "
                                 "pip install 'diagnose-my-xray[ml]', or set XRAY_RUNTIME=tensorflow")
    if precision == "bf16":
        if runtime != "openvino":
            raise RuntimeUnavailable("XRAY_PRECISION=bf16 is served by XRAY_RUNTIME=openvino only; "
                                     "set XRAY_RUNTIME=openvino or XRAY_PRECISION=f32")
        if not cpu_supports_bf16():
            raise RuntimeUnavailable("XRAY_PRECISION=bf16 needs a CPU with AVX512_BF16 or AMX, which this "
                                     "machine lacks; set XRAY_PRECISION=f32")
    if threads is not None and threads < 1:
        raise RuntimeUnavailable(f"inference threads must be at least 1, got {threads}")
    processes = max(1, processes)
    return RuntimeChoice(runtime, precision, threads or threads_per_process(processes), processes)


def load_predictor(
    model_dir: str | Path,
    runtime: str = AUTO,
    precision: str = AUTO,
    processes: int = 1,
    threads: int | None = None,
) -> Predictor:
    """Load the bundle at model_dir with the chosen runtime (validated by `choose_runtime`)."""
    choice = choose_runtime(runtime, precision, processes, threads)
    if choice.runtime == "tensorflow":
        return TensorFlowPredictor.load(model_dir, choice)
    return OpenVINOPredictor.load(model_dir, choice)


# ----------------------------------------------------------------------------- TensorFlow


def configure_tensorflow_threads(threads: int) -> None:
    """Intra-op threads for this process (must run before TensorFlow executes anything)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already initialised in this process: keep what it has
        log.warning("TensorFlow is already initialised; keeping its thread settings")


class TensorFlowPredictor(CardBacked):
    """`Classifier` (one tf.function) with its thread count set for this process."""

    def __init__(self, classifier: Classifier, choice: RuntimeChoice) -> None:
        self.classifier = classifier
        self.choice = choice
        self.card = classifier.card
        self.dense_kernel = classifier.dense_kernel
        self.dense_bias = classifier.dense_bias

    @classmethod
    def load(cls, model_dir: str | Path, choice: RuntimeChoice) -> TensorFlowPredictor:
        from shared.classifier import Classifier

        configure_tensorflow_threads(choice.threads)
        return cls(Classifier.load(model_dir), choice)

    runtime_name = property(lambda self: self.choice.name)

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.classifier.predict(batch)


# ----------------------------------------------------------------------------- OpenVINO


def ir_directory(model_dir: str | Path, version: str, precision: str) -> Path:
    return Path(model_dir) / OPENVINO_DIR / f"{version}-{precision}"


def export_openvino(model_dir: str | Path, precision: str) -> Path:
    """Convert the bundle's Keras model to an OpenVINO IR (float32) in its cache folder; returns model.xml.

    Written to a temporary folder and renamed, so a concurrent reader never sees half an IR.
    """
    import openvino as ov
    import tensorflow as tf

    from shared.classifier import Classifier

    classifier = Classifier.load(model_dir)
    size = classifier.input_size
    model = classifier.model

    def forward(images: Any) -> dict[str, Any]:
        probabilities, features = model(images, training=False)
        return {OUTPUT_PROBABILITIES: probabilities, OUTPUT_FEATURES: features}

    signature = [tf.TensorSpec([None, size, size, 3], tf.float32, name=INPUT_NAME)]
    concrete = tf.function(forward, input_signature=signature).get_concrete_function()
    converted = ov.convert_model(concrete)
    target = ir_directory(model_dir, classifier.version, precision)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        ov.save_model(converted, staging / IR_FILE, compress_to_fp16=False)
        meta = {"version": classifier.version, "precision": precision, "input_size": size,
                "openvino": ov.__version__, "source": "openvino.convert_model(tf.function concrete function)"}
        (staging / IR_META).write_text(json.dumps(meta, indent=2) + "\n")
        try:
            staging.rename(target)
        except OSError:  # another process finished first: keep theirs
            if not (target / IR_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / IR_FILE


def read_dense_weights(weights_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The dense head's kernel (C, 14) and bias (14,) from weights.npz, without TensorFlow."""
    with np.load(weights_path, allow_pickle=False) as stored:
        names = [str(n) for n in stored["names"]]
        try:
            k = names.index(f"{PROBABILITIES_LAYER}/kernel")
            b = names.index(f"{PROBABILITIES_LAYER}/bias")
        except ValueError as exc:
            raise BundleError(f"{weights_path}: no {PROBABILITIES_LAYER} dense layer in the weights") from exc
        return stored[f"w{k:04d}"].astype(np.float32), stored[f"w{b:04d}"].astype(np.float32)


class OpenVINOPredictor(CardBacked):
    """The bundle's model compiled by OpenVINO for this CPU, same interface as Classifier."""

    def __init__(self, card: ModelCard, compiled: Any, kernel: np.ndarray, bias: np.ndarray,
                 choice: RuntimeChoice) -> None:
        self.card = card
        self.choice = choice
        self.dense_kernel = kernel
        self.dense_bias = bias
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._probabilities = compiled.output(OUTPUT_PROBABILITIES)
        self._features = compiled.output(OUTPUT_FEATURES)

    @classmethod
    def load(cls, model_dir: str | Path, choice: RuntimeChoice) -> OpenVINOPredictor:
        import openvino as ov

        model_dir = Path(model_dir)
        card = read_card(model_dir)
        weights_path = model_dir / card.weights_file
        if not weights_path.is_file():
            raise BundleError(f"{model_dir}: weights file {card.weights_file} is missing")
        if file_version(weights_path) != card.version:
            raise BundleError(f"{model_dir}: weights do not match the card's version {card.version}")
        xml = ir_directory(model_dir, card.version, choice.precision) / IR_FILE
        if not xml.is_file():
            start = time.perf_counter()
            xml = export_openvino(model_dir, choice.precision)
            log.info("converted %s to OpenVINO in %.1f s (cached at %s)", model_dir, time.perf_counter() - start,
                     xml.parent)
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if choice.precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": choice.threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",  # the explicit threads above take precedence
            "ENABLE_CPU_PINNING": choice.pin_cpus,
        }
        compiled = core.compile_model(core.read_model(xml), "CPU", config)
        kernel, bias = read_dense_weights(weights_path)
        return cls(card, compiled, kernel, bias, choice)

    @property
    def runtime_name(self) -> str:
        return self.choice.name

    def compiled_property(self, name: str) -> Any:
        """A property of the compiled model as OpenVINO applied it (e.g. INFERENCE_NUM_THREADS)."""
        return self._compiled.get_property(name)

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) preprocessed -> (probabilities (N, 14), features (N, h, w, 2048)), numpy."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        size = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ValueError(f"predict expects a batch of shape (N, {size}, {size}, 3), got {batch.shape}")
        results = self._request.infer({INPUT_NAME: batch})
        return np.array(results[self._probabilities]), np.array(results[self._features])
