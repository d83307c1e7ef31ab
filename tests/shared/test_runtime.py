"""shared/runtime.py: TensorFlow and OpenVINO serve the same model to stated tolerances on real X-rays.

An untrained bundle at the served size (224) on the 16 nih-full images and 16 kermany-224 images.

Tolerances (measured on this data: OpenVINO f32 differs from TensorFlow by ~1e-6 in probability and
~3e-5 in a normalised CAM; bf16 by ~0.006 in probability, ~1.4% of the scale in a raw class map):
- f32: probabilities within 1e-4, features within 1e-4 of their scale, normalised CAMs within 1e-3.
- bf16: probabilities within 0.02; raw class maps A.w_k within 4% of the image's largest |A.w|;
  normalised CAMs within 0.1 for maps whose peak is at least a tenth of that scale (measured <= 0.063
  on two seeds; a map that is almost all negative is renormalised by a tiny peak, so its shape is
  noise in any precision).
Thresholds: the card's thresholds are chosen on TensorFlow f32 probabilities (training). With each
threshold at the median probability of its finding (the hardest place for agreement), every
positive/negative call agrees between runtimes except where the TensorFlow probability lies within
the precision's probability tolerance of the threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.config import ImageLimits, Settings
from shared.gradcam import class_activation_maps
from shared.images import read_image_file
from shared.runtime import (
    RuntimeUnavailable,
    choose_runtime,
    cpu_supports_bf16,
    ir_directory,
    load_predictor,
    read_dense_weights,
    threads_per_process,
)

TOLERANCE = {
    "f32": {"probability": 1e-4, "features": 1e-4, "raw_map": 1e-4, "cam": 1e-3, "cam_min_peak": 0.0},
    "bf16": {"probability": 0.02, "features": 0.03, "raw_map": 0.04, "cam": 0.1, "cam_min_peak": 0.1},
}


# ----------------------------------------------------------------------------- choice (no model)


def test_threads_split_the_cpus_among_processes() -> None:
    assert threads_per_process(1, cpus=2) == 2
    assert threads_per_process(2, cpus=2) == 1
    assert threads_per_process(4, cpus=2) == 1
    assert threads_per_process(2, cpus=16) == 8


def test_choice_pins_only_a_single_process() -> None:
    assert choose_runtime("openvino", "f32", processes=1).pin_cpus
    two = choose_runtime("openvino", "f32", processes=2, threads=None)
    assert not two.pin_cpus
    assert two.threads == threads_per_process(2)
    assert choose_runtime(" OpenVINO ", "F32").name == "openvino-f32"


@pytest.mark.parametrize(("runtime", "precision", "named"), [
    ("onnx", "f32", "XRAY_RUNTIME"),
    ("tensorflow", "fp16", "XRAY_PRECISION"),
    ("tensorflow", "bf16", "XRAY_RUNTIME=openvino"),
])
def test_unservable_choices_say_what_to_set(runtime: str, precision: str, named: str) -> None:
    with pytest.raises(RuntimeUnavailable, match=named):
        choose_runtime(runtime, precision)


def test_auto_picks_openvino_where_installed_and_bf16_where_native(monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.runtime as runtime

    for installed, native, expected in [(True, True, ("openvino", "bf16")), (True, False, ("openvino", "f32")),
                                        (False, True, ("tensorflow", "f32")), (False, False, ("tensorflow", "f32"))]:
        monkeypatch.setattr(runtime, "openvino_installed", lambda installed=installed: installed)
        monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda native=native: native)
        assert runtime.resolve_auto("auto", "auto") == expected
        assert runtime.resolve_auto("", "") == expected  # unset means auto
        assert runtime.resolve_auto("tensorflow", "auto") == ("tensorflow", "f32")
        assert runtime.choose_runtime("auto", "f32").name == f"{expected[0]}-f32"
    assert Settings().inference_runtime == "auto" and Settings().inference_precision == "auto"


def test_zero_threads_refused() -> None:
    with pytest.raises(RuntimeUnavailable, match="at least 1"):
        choose_runtime("tensorflow", "f32", threads=0)


# ----------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shared.classifier import init_bundle

    directory = tmp_path_factory.mktemp("runtime") / "untrained-224"
    init_bundle(directory, input_size=224, seed=5)
    return directory


@pytest.fixture(scope="module")
def real_batch(nih_full_images: list[Path], kermany_dir: Path) -> np.ndarray:
    from shared.classifier import preprocess

    paths = nih_full_images + sorted(kermany_dir.glob("test/*/*.jpeg"))[:16]
    assert len(paths) == 32
    return np.stack([preprocess(read_image_file(p, ImageLimits()).pixels, 224) for p in paths])


@pytest.fixture(scope="module")
def reference(bundle: Path, real_batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tensorflow = load_predictor(bundle, "tensorflow", "f32")
    probabilities, features = tensorflow.predict(real_batch)
    return probabilities, features, tensorflow.dense_kernel


def _precisions() -> list[str]:
    return ["f32", "bf16"] if cpu_supports_bf16() else ["f32"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", _precisions())
def test_openvino_matches_tensorflow_on_real_images(bundle: Path, real_batch: np.ndarray, reference,  # type: ignore[no-untyped-def]
                                                    precision: str) -> None:
    tol = TOLERANCE[precision]
    probabilities_tf, features_tf, kernel = reference
    openvino = load_predictor(bundle, "openvino", precision)
    assert openvino.runtime_name == f"openvino-{precision}"
    np.testing.assert_array_equal(openvino.dense_kernel, kernel)
    probabilities, features = openvino.predict(real_batch)
    assert probabilities.shape == probabilities_tf.shape == (32, 14)
    assert features.shape == features_tf.shape == (32, 7, 7, 2048)

    assert np.abs(probabilities - probabilities_tf).max() <= tol["probability"]
    feature_scale = np.abs(features_tf).max(axis=(1, 2, 3))
    assert (np.abs(features - features_tf).max(axis=(1, 2, 3)) / feature_scale).max() <= tol["features"]

    raw_tf = np.einsum("nhwc,ck->nkhw", features_tf, kernel)
    raw = np.einsum("nhwc,ck->nkhw", features, kernel)
    scale = np.abs(raw_tf).max(axis=(1, 2, 3))
    assert (np.abs(raw - raw_tf).max(axis=(1, 2, 3)) / scale).max() <= tol["raw_map"]

    cams_tf = np.stack([class_activation_maps(f, kernel) for f in features_tf])
    cams = np.stack([class_activation_maps(f, kernel) for f in features])
    peak = np.maximum(raw_tf, 0.0).max(axis=(2, 3)) / scale[:, None]  # (32, 14)
    meaningful = peak >= tol["cam_min_peak"]
    assert meaningful.sum() >= 0.25 * meaningful.size  # the check covers many maps, not a handful
    cam_error = np.abs(cams - cams_tf).max(axis=(2, 3))
    assert cam_error[meaningful].max() <= tol["cam"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", _precisions())
def test_positive_calls_agree_except_within_tolerance_of_the_threshold(bundle: Path, real_batch: np.ndarray,
                                                                       reference, precision: str) -> None:  # type: ignore[no-untyped-def]
    probabilities_tf = reference[0]
    thresholds = np.median(probabilities_tf, axis=0)  # half the images on each side of every threshold
    probabilities, _ = load_predictor(bundle, "openvino", precision).predict(real_batch)
    disagree = (probabilities >= thresholds) != (probabilities_tf >= thresholds)
    near = np.abs(probabilities_tf - thresholds) <= TOLERANCE[precision]["probability"]
    assert not (disagree & ~near).any()
    assert disagree.sum() <= near.sum()


@pytest.mark.slow
def test_openvino_ir_is_cached_next_to_the_bundle_and_reused(bundle: Path, real_batch: np.ndarray) -> None:
    from shared.classifier import read_card

    first = load_predictor(bundle, "openvino", "f32")
    xml = ir_directory(bundle, read_card(bundle).version, "f32") / "model.xml"
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    stamp = xml.stat().st_mtime_ns
    second = load_predictor(bundle, "openvino", "f32")
    assert xml.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first.predict(real_batch[:2])[0], second.predict(real_batch[:2])[0])
    kernel, bias = read_dense_weights(bundle / "weights.npz")
    assert kernel.shape == (2048, 14) and bias.shape == (14,)


@pytest.mark.slow
def test_several_processes_turn_pinning_off_and_split_threads(bundle: Path) -> None:
    from shared.runtime import OpenVINOPredictor

    predictor = load_predictor(bundle, "openvino", "f32", processes=2, threads=1)
    assert isinstance(predictor, OpenVINOPredictor)
    assert predictor.compiled_property("ENABLE_CPU_PINNING") is False
    assert predictor.compiled_property("INFERENCE_NUM_THREADS") == 1
    single = load_predictor(bundle, "openvino", "f32", processes=1, threads=2)
    assert single.compiled_property("INFERENCE_NUM_THREADS") == 2  # type: ignore[attr-defined]


@pytest.mark.slow
def test_diagnoser_serves_either_runtime(bundle: Path, nih_full_images: list[Path]) -> None:
    from shared.diagnosis import Diagnoser

    image = read_image_file(nih_full_images[0], ImageLimits())
    results = [Diagnoser(load_predictor(bundle, runtime, "f32")).diagnose(image)
               for runtime in ("tensorflow", "openvino")]
    tf_result, ov_result = results
    assert [f.label for f in tf_result.findings] == [f.label for f in ov_result.findings]
    for a, b in zip(tf_result.findings, ov_result.findings, strict=True):
        assert abs(a.probability - b.probability) <= TOLERANCE["f32"]["probability"]
        assert a.box == b.box or np.abs(a.cam - b.cam).max() <= TOLERANCE["f32"]["cam"]
    assert ov_result.model_version == tf_result.model_version
