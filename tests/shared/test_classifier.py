"""shared.classifier: preprocessing, the bundle (card, compact weights, version), loading, forward pass."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.classifier import (
    CAFFE_MEAN_BGR,
    CAM_LAYER,
    UNTRAINED_NOTE,
    BundleError,
    Classifier,
    ModelCard,
    init_bundle,
    preprocess,
    read_card,
    save_bundle,
)
from shared.findings import FINDINGS

pytestmark = pytest.mark.slow
SIZE = 64  # smallest useful ResNet50 input: keeps the tests light; the weights do not depend on it


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bundle") / "untrained"
    init_bundle(directory, input_size=SIZE, seed=3)
    return directory


@pytest.fixture(scope="module")
def classifier(bundle: Path) -> Classifier:
    return Classifier.load(bundle)


@pytest.fixture(scope="module")
def real_batch(nih_full_images: list[Path]) -> np.ndarray:
    return np.stack([preprocess(_grey(p), SIZE) for p in nih_full_images[:3]])


# ----------------------------------------------------------------------------- preprocessing


def test_preprocess_shape_range_and_channels(nih_full_images: list[Path]) -> None:
    pixels = _grey(nih_full_images[0])
    out = preprocess(pixels, 96)
    assert out.shape == (96, 96, 3) and out.dtype == np.float32
    mean = np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
    restored = out + mean  # back to [0, 255], the same grey in all three channels
    assert np.allclose(restored[..., 0], restored[..., 1], atol=1e-4)
    assert np.allclose(restored[..., 0], restored[..., 2], atol=1e-4)
    assert restored.min() >= -1e-3 and restored.max() <= 255.0 + 1e-3
    assert restored.std() > 10  # a real X-ray keeps its contrast


def test_preprocess_is_deterministic_and_resizes_non_square() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.random((300, 200), dtype=np.float32)
    first, second = preprocess(pixels, 64), preprocess(pixels, 64)
    assert np.array_equal(first, second)
    white = preprocess(np.ones((300, 200), np.float32), 64)
    assert np.allclose(white[0, 0], 255.0 - np.asarray(CAFFE_MEAN_BGR), atol=1e-3)


def test_preprocess_downscale_averages_instead_of_sampling() -> None:
    stripes = np.zeros((128, 128), np.float32)
    stripes[:, ::2] = 1.0  # one-pixel stripes: point sampling would give all 0 or all 1
    restored = preprocess(stripes, 32)[..., 0] + CAFFE_MEAN_BGR[0]
    assert np.allclose(restored[:, 1:-1], 127.5, atol=1.0)  # edge columns see one side only


def test_preprocess_refuses_colour() -> None:
    with pytest.raises(ValueError, match="greyscale"):
        preprocess(np.zeros((10, 10, 3), np.float32), 32)


# ----------------------------------------------------------------------------- the bundle


def test_init_bundle_card_says_untrained(bundle: Path) -> None:
    card = read_card(bundle)
    data = json.loads((bundle / "card.json").read_text())
    assert data["architecture"] == "resnet50" and data["trained"] is False
    assert data["labels"] == list(FINDINGS)
    assert data["thresholds"] == dict.fromkeys(FINDINGS, 0.5)
    assert data["metrics"] == {} and data["cam_layer"] == CAM_LAYER
    assert data["input_size"] == SIZE
    assert data["preprocessing"]["normalisation"].startswith("caffe")
    assert UNTRAINED_NOTE in data["note"] and UNTRAINED_NOTE in card.intended_use


def test_weights_are_compact_and_versioned(bundle: Path) -> None:
    weights = bundle / "weights.npz"
    assert weights.stat().st_size < 50_000_000  # ResNet50's 23.5M weights do not depend on input size
    assert read_card(bundle).version == hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    with np.load(weights) as stored:
        kernels = [stored[k] for k in stored.files if k != "names" and stored[k].ndim >= 2]
        vectors = [stored[k] for k in stored.files if k != "names" and stored[k].ndim == 1]
    assert kernels and all(k.dtype == np.float16 for k in kernels)
    assert vectors and all(v.dtype == np.float32 for v in vectors)


def test_save_bundle_is_reproducible(bundle: Path, classifier: Classifier, tmp_path: Path) -> None:
    """The loaded (float16-rounded) weights saved again give the same file, so the same version."""
    card = save_bundle(classifier.model, tmp_path / "again", trained=False, name="again")
    assert card.version == classifier.version
    assert (tmp_path / "again" / "weights.npz").read_bytes() == (bundle / "weights.npz").read_bytes()


def test_save_bundle_records_card_fields(classifier: Classifier, tmp_path: Path) -> None:
    thresholds = {label: 0.1 + 0.05 * i for i, label in enumerate(FINDINGS)}
    card = save_bundle(
        classifier.model,
        tmp_path / "trained",
        name="t",
        trained=True,
        thresholds=thresholds,
        metrics={"auroc": {"Mass": 0.8}},
        training={"data": "nih-64"},
    )
    reread = read_card(tmp_path / "trained")
    assert reread == card and reread.trained is True and reread.thresholds == thresholds
    loaded = Classifier.load(tmp_path / "trained")
    assert np.allclose(loaded.thresholds, [thresholds[f] for f in FINDINGS])


def _copy_with_card(bundle: Path, tmp_path: Path, **changes: object) -> Path:
    target = tmp_path / "edited"
    shutil.copytree(bundle, target)
    data = json.loads((target / "card.json").read_text())
    data.update(changes)
    (target / "card.json").write_text(json.dumps(data))
    return target


def test_load_refuses_wrong_label_order(bundle: Path, tmp_path: Path) -> None:
    labels = list(FINDINGS)
    labels[0], labels[1] = labels[1], labels[0]
    with pytest.raises(BundleError, match="canonical order"):
        Classifier.load(_copy_with_card(bundle, tmp_path, labels=labels))


def test_load_refuses_other_architecture(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="architecture 'densenet121'"):
        Classifier.load(_copy_with_card(bundle, tmp_path, architecture="densenet121"))


def test_load_refuses_changed_weights(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not match the card's version"):
        Classifier.load(_copy_with_card(bundle, tmp_path, version="0123456789abcdef"))


def test_load_missing_bundle_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="xray model init"):
        Classifier.load(tmp_path / "nothing")


def test_card_missing_field_is_named() -> None:
    with pytest.raises(BundleError, match="version"):
        ModelCard.from_dict({"name": "x", "input_size": 64, "trained": False})


# ----------------------------------------------------------------------------- forward pass


def test_predict_returns_probabilities_and_features(classifier: Classifier, real_batch: np.ndarray) -> None:
    probabilities, features = classifier.predict(real_batch)
    assert probabilities.shape == (3, 14) and features.shape == (3, SIZE // 32, SIZE // 32, 2048)
    assert np.all((probabilities > 0) & (probabilities < 1))
    assert classifier.dense_kernel.shape == (2048, 14) and classifier.dense_bias.shape == (14,)
    # The probabilities are the head applied to the returned feature map: the map is the CAM layer.
    logits = features.mean(axis=(1, 2)) @ classifier.dense_kernel + classifier.dense_bias
    assert np.allclose(probabilities, 1 / (1 + np.exp(-logits)), atol=1e-5)
    assert not np.allclose(probabilities[0], probabilities[1])  # different images, different outputs


def test_predict_is_traced_once(classifier: Classifier, real_batch: np.ndarray) -> None:
    first, _ = classifier.predict(real_batch[:1])
    again, _ = classifier.predict(real_batch[:1])
    classifier.predict(real_batch[:1])
    assert classifier.tracing_count == 1
    classifier.predict(real_batch)  # another batch size: the signature's None dimension, no retrace
    assert classifier.tracing_count == 1
    assert np.array_equal(first, again)


def test_predict_rejects_wrong_shape(classifier: Classifier) -> None:
    with pytest.raises(ValueError, match=f"\\(N, {SIZE}, {SIZE}, 3\\)"):
        classifier.predict(np.zeros((1, SIZE + 32, SIZE + 32, 3), np.float32))


def test_loaded_bundle_matches_the_saved_model(tmp_path: Path, real_batch: np.ndarray) -> None:
    """Weights survive the float16 round trip: outputs of the saved model and the loaded one agree."""
    import keras

    from shared.classifier import build_model

    keras.utils.set_random_seed(5)
    model = build_model(SIZE)
    save_bundle(model, tmp_path / "b")
    loaded = Classifier.load(tmp_path / "b")
    expected, _ = model(real_batch, training=False)
    got, _ = loaded.predict(real_batch)
    assert np.allclose(got, np.asarray(expected), atol=2e-2)
    assert loaded.card.trained is False


def test_save_bundle_refuses_incomplete_thresholds(classifier: Classifier, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="each of the 14 findings"):
        save_bundle(classifier.model, tmp_path / "partial", thresholds={"Mass": 0.3})
