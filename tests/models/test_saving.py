"""The nst weight format, format sniffing, EMA groups and serving exports."""

import json
import os

import numpy as np
import pytest

import keras
import tensorflow as tf

from nst.models import config as config_lib
from nst.models import convert
from nst.models import saving
from nst.models.efficientnet import EfficientNet, build_model

IMAGE_SIZE = 32


def tiny_model(name="efficientnet-b0", num_classes=10, **kwargs):
    kwargs = {"small_image": True, "width": 0.25, "depth": 0.25, **kwargs}
    model, _ = build_model(name, num_classes, **kwargs)
    return model


def randomized_tiny_model(seed, **kwargs):
    """A tiny model whose BN parameters, BN statistics and biases are random too,
    so that a load that skipped them would show."""
    model = tiny_model(**kwargs)
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        leaf = variable.path.rsplit("/", 1)[-1]
        if leaf in ("gamma", "moving_variance"):
            variable.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif leaf in ("beta", "moving_mean", "bias"):
            variable.assign(rng.normal(0.0, 0.1, shape).astype(np.float32))
        else:
            # Kernels: perturb the (variance-preserving) init rather than
            # replace it, so logits stay O(1) and softmax is not one-hot.
            scale = rng.uniform(0.8, 1.2, shape).astype(np.float32)
            variable.assign(variable.numpy() * scale)
    return model


def make_images(count=3, size=IMAGE_SIZE, seed=0):
    """[count, size, size, 3] float32 pixels in 0..255."""
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


def logits_of(model, images):
    return model(images, training=False).numpy()


def assert_same_weights(model, reference):
    theirs = saving.variables_by_path(reference)
    for variable in model.weights:
        np.testing.assert_array_equal(variable.numpy(), theirs[variable.path].numpy(),
                                      err_msg=variable.path)


def snapshot(model):
    return [np.array(v.numpy()) for v in model.weights]


def assert_unchanged(model, before):
    for variable, old in zip(model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), old, err_msg=variable.path)


# --- nst format round trip ---------------------------------------------------

def test_save_weights_then_load_model(tmp_path):
    model = randomized_tiny_model(0)
    images = make_images()
    prefix = saving.save_weights(model, str(tmp_path), step=7)
    assert prefix == os.path.join(str(tmp_path), "ckpt-7")

    with open(tmp_path / saving.CONFIG_FILE) as f:
        stored = json.load(f)
    assert stored == {"config": json.loads(json.dumps(model.config.to_dict())),
                      "image_size": IMAGE_SIZE}
    assert config_lib.EfficientNetConfig.from_dict(stored["config"]) == model.config

    restored = saving.load_model(str(tmp_path))
    assert restored.config == model.config and restored.image_size == IMAGE_SIZE
    assert_same_weights(restored, model)
    np.testing.assert_array_equal(logits_of(restored, images), logits_of(model, images))


def test_checkpoint_groups_are_keyed_by_variable_path(tmp_path):
    model = tiny_model()
    prefix = saving.save_weights(model, str(tmp_path))
    stored = saving.checkpoint_group(prefix, "model")
    assert stored == {v.path: tuple(v.shape) for v in model.weights}
    assert "blocks_1/expand_bn/moving_variance" in stored
    assert saving.checkpoint_group(prefix, "ema") == {}


def test_load_model_any_image_size(tmp_path):
    model = randomized_tiny_model(1)
    saving.save_weights(model, str(tmp_path))
    flexible = saving.load_model(str(tmp_path), image_size=None)
    images = make_images(size=48)
    # Same weights; a size-agnostic model runs at 48 px.
    assert logits_of(flexible, images).shape == (3, 10)


def _write_training_checkpoint(directory, raw_model, ema_model, step=5):
    """A checkpoint like training writes: `model` and `ema` groups keyed by path."""
    checkpoint = tf.train.Checkpoint(model=saving.variables_by_path(raw_model),
                                     ema=saving.variables_by_path(ema_model))
    saving.write_model_config(raw_model, directory)
    return checkpoint.write(os.path.join(directory, f"ckpt-{step}"))


@pytest.fixture
def raw_and_ema(tmp_path):
    raw, ema = randomized_tiny_model(2), randomized_tiny_model(3)
    prefix = _write_training_checkpoint(str(tmp_path), raw, ema)
    return prefix, raw, ema


def test_training_checkpoint_prefers_ema(raw_and_ema):
    prefix, _, ema = raw_and_ema
    model = tiny_model()
    report = saving.load_weights(model, prefix)
    assert report.root == "ema"
    assert report.num_loaded == report.num_from_ema == len(model.weights)
    assert_same_weights(model, ema)
    model = tiny_model()
    saving.load_weights(model, prefix, use_ema=True)
    assert_same_weights(model, ema)


def test_training_checkpoint_raw_on_request(raw_and_ema):
    prefix, raw, _ = raw_and_ema
    model = tiny_model()
    report = saving.load_weights(model, prefix, use_ema=False)
    assert report.root == "model" and report.num_from_ema == 0
    assert_same_weights(model, raw)


def test_use_ema_true_without_ema_raises(tmp_path):
    prefix = saving.save_weights(randomized_tiny_model(4), str(tmp_path))
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(convert.CheckpointMismatchError, match="no EMA"):
        saving.load_weights(model, prefix, use_ema=True)
    assert_unchanged(model, before)
    # "auto" falls back to the raw weights.
    assert saving.load_weights(model, prefix).num_from_ema == 0


# Shadows a training checkpoint lacks in the partial case.
DROPPED_SHADOWS = ("logits/kernel", "logits/bias", "stem/bn/moving_mean")


@pytest.fixture
def partial_ema(tmp_path):
    """A training checkpoint whose `ema` group lacks DROPPED_SHADOWS."""
    raw, ema = randomized_tiny_model(11), randomized_tiny_model(12)
    shadows = {p: v for p, v in saving.variables_by_path(ema).items()
               if p not in DROPPED_SHADOWS}
    assert len(shadows) == len(ema.weights) - len(DROPPED_SHADOWS)
    checkpoint = tf.train.Checkpoint(model=saving.variables_by_path(raw), ema=shadows)
    saving.write_model_config(raw, str(tmp_path))
    return checkpoint.write(os.path.join(str(tmp_path), "ckpt-5")), raw, ema


def test_partial_ema_with_use_ema_true_names_the_missing_shadows(partial_ema):
    prefix, _, _ = partial_ema
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(convert.EmaShadowError) as info:
        saving.load_weights(model, prefix, use_ema=True)
    assert info.value.missing_shadows == sorted(f"ema/{p}" for p in DROPPED_SHADOWS)
    assert str(info.value) == (
        f"use_ema=True needs an EMA shadow for every tensor, but 3 of {len(model.weights)} "
        f"in {prefix} have none (missing: ema/logits/bias, ema/logits/kernel, "
        f"ema/stem/bn/moving_mean).")
    assert_unchanged(model, before)


def test_partial_ema_under_auto_is_refused(partial_ema):
    prefix, _, _ = partial_ema
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(convert.EmaShadowError) as info:
        saving.load_weights(model, prefix)
    assert str(info.value) == (
        f"{prefix} has EMA shadows for only {len(model.weights) - 3} of {len(model.weights)} "
        f"tensors (missing: ema/logits/bias, ema/logits/kernel, ema/stem/bn/moving_mean); "
        f"pass use_ema=False to load raw values.")
    assert_unchanged(model, before)


def test_partial_ema_with_use_ema_false_loads_raw(partial_ema):
    prefix, raw, ema = partial_ema
    model = tiny_model()
    report = saving.load_weights(model, prefix, use_ema=False)
    assert report.root == "model" and report.num_from_ema == 0
    assert_same_weights(model, raw)
    # A tensor that has a shadow still gets its raw value.
    kernel = model.get_layer("stem").conv.kernel.numpy()
    np.testing.assert_array_equal(kernel, raw.get_layer("stem").conv.kernel.numpy())
    assert not np.array_equal(kernel, ema.get_layer("stem").conv.kernel.numpy())


def test_use_ema_values_are_checked(raw_and_ema):
    prefix, _, _ = raw_and_ema
    for value in ("true", "ema", 1, None):
        with pytest.raises(ValueError, match="use_ema must be 'auto', True or False"):
            saving.load_weights(tiny_model(), prefix, use_ema=value)


def test_keras_weights_h5_has_no_shadows(tmp_path):
    path = str(tmp_path / "tiny.weights.h5")
    randomized_tiny_model(13).save_weights(path)
    with pytest.raises(convert.EmaShadowError, match="holds no EMA shadows"):
        saving.load_weights(tiny_model(), path, use_ema=True)
    assert saving.load_weights(tiny_model(), path, use_ema=False).num_loaded > 0


def test_keras_weights_h5(tmp_path):
    model = randomized_tiny_model(5)
    path = str(tmp_path / "tiny.weights.h5")
    model.save_weights(path)
    restored = tiny_model()
    report = saving.load_weights(restored, path)
    assert report.num_loaded == len(model.weights)
    assert_same_weights(restored, model)
    with pytest.raises(FileNotFoundError):
        saving.load_weights(tiny_model(), str(tmp_path / "absent.weights.h5"))


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        saving.load_weights(tiny_model(), str(tmp_path))  # a directory without checkpoints
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        saving.load_model(str(tmp_path))


# --- nst-format mismatches ----------------------------------------------------

def test_nst_b0_checkpoint_into_b1_model(tmp_path):
    saving.save_weights(randomized_tiny_model(6), str(tmp_path))
    model = tiny_model("efficientnet-b1", depth=None)
    before = snapshot(model)
    with pytest.raises(convert.CheckpointMismatchError) as info:
        saving.load_weights(model, str(tmp_path))
    message = str(info.value)
    assert "Model efficientnet-b1" in message
    assert "The checkpoint belongs to efficientnet-b0 (width 0.25, depth 0.25, 10 classes)" \
        in message
    assert "blocks_7/depthwise_conv/kernel" in info.value.missing
    assert_unchanged(model, before)


def test_nst_checkpoint_into_model_with_other_class_count(tmp_path):
    saving.save_weights(randomized_tiny_model(7), str(tmp_path))
    model = tiny_model(num_classes=3)
    before = snapshot(model)
    with pytest.raises(convert.CheckpointMismatchError) as info:
        saving.load_weights(model, str(tmp_path))
    assert ("logits/kernel", (320, 3), (320, 10)) in info.value.shape_mismatches
    assert "logits/kernel: model (320, 3) vs source (320, 10)" in str(info.value)
    assert not info.value.missing and not info.value.unexpected
    assert_unchanged(model, before)


# Keras warns about the containers it gave up on before raising.
@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_keras_weights_h5_mismatch_leaves_model_unchanged(tmp_path):
    """Keras loads .weights.h5 layer by layer; a misfit late in the model
    must not leave the earlier layers overwritten."""
    path = str(tmp_path / "tiny.weights.h5")
    randomized_tiny_model(10).save_weights(path)
    model = tiny_model(num_classes=3)
    before = snapshot(model)
    with pytest.raises(convert.CheckpointMismatchError, match="logits"):
        saving.load_weights(model, path)
    assert_unchanged(model, before)


# --- Serving exports ----------------------------------------------------------

def test_export_saved_model(tmp_path):
    model = randomized_tiny_model(8)
    images = make_images(count=4)
    path = str(tmp_path / "serving")
    saving.export_serving(model, path)
    loaded = tf.saved_model.load(path)
    outputs = loaded.serve(tf.constant(images))
    expected = logits_of(model, images)
    assert 0.05 < expected.std() < 100
    np.testing.assert_allclose(outputs["logits"].numpy(), expected, atol=1e-5, rtol=0)
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (4, 10)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, tf.nn.softmax(expected).numpy(), atol=1e-6)
    # The batch dimension is free.
    assert loaded.serve(tf.constant(images[:1]))["logits"].shape == (1, 10)


def test_export_keras_archive(tmp_path):
    model = randomized_tiny_model(9)
    images = make_images()
    path = str(tmp_path / "tiny.keras")
    assert saving.export_serving(model, path, format="keras") == path
    restored = keras.models.load_model(path)
    assert isinstance(restored, EfficientNet)
    assert type(restored).__name__ == "EfficientNet"
    assert restored.config == model.config
    np.testing.assert_allclose(logits_of(restored, images), logits_of(model, images),
                               atol=1e-6, rtol=0)


def test_export_rejects_bad_arguments(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\.keras"):
        saving.export_serving(model, str(tmp_path / "tiny.h5"), format="keras")
    with pytest.raises(ValueError, match="format"):
        saving.export_serving(model, str(tmp_path / "x"), format="onnx")
