"""Importing original TF1 checkpoints and keras.applications weights, and the CLI.

The reference for the original format is not nst itself: a
`keras.applications.EfficientNetB0` with non-trivial weights is written out
as a TF1 name-based checkpoint through a Keras-name -> §6.6-name table kept
in this file, then read back into an nst model. Matching logits therefore
check `names.py`, the block structure and the padding all at once.
"""

import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

import keras
import tensorflow as tf

from absl import app
from absl import flags
from absl.testing import flagsaver

from nst import cli_errors
from nst.models import convert
from nst.models import convert_cli
from nst.models import names
from nst.models import saving
from nst.models.efficientnet import build_model

IMAGE_SIZE = 64
ROOT = "efficientnet-b0/"
B0_MODEL_TENSORS = 311  # §6.6: 213 trainable + 98 BN moving statistics
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# §6.6: TF1 numbered layers per scope in creation order, so the scope of a
# sub-layer depends on whether the block has an expansion conv.
_KERAS_TOP_TO_ORIGINAL = {
    "stem_conv": "stem/conv2d",
    "stem_bn": "stem/tpu_batch_normalization",
    "top_conv": "head/conv2d",
    "top_bn": "head/tpu_batch_normalization",
    "predictions": "head/dense",
}
_KERAS_BLOCK_TO_ORIGINAL = {
    True: {
        "expand_conv": "conv2d",
        "expand_bn": "tpu_batch_normalization",
        "dwconv": "depthwise_conv2d",
        "bn": "tpu_batch_normalization_1",
        "se_reduce": "se/conv2d",
        "se_expand": "se/conv2d_1",
        "project_conv": "conv2d_1",
        "project_bn": "tpu_batch_normalization_2",
    },
    False: {
        "dwconv": "depthwise_conv2d",
        "bn": "tpu_batch_normalization",
        "se_reduce": "se/conv2d",
        "se_expand": "se/conv2d_1",
        "project_conv": "conv2d",
        "project_bn": "tpu_batch_normalization_1",
    },
}


def keras_to_original_names(keras_model):
    """{keras variable path: original name without root scope} (§6.6).

    Blocks are numbered globally in the order Keras creates `block{s}{r}`
    layers, which is the original's `blocks_i` order.
    """
    layer_names = [layer.name for layer in keras_model.layers]
    prefixes = []
    for layer_name in layer_names:
        match = re.match(r"^(block\d+[a-z])_", layer_name)
        if match and match.group(1) not in prefixes:
            prefixes.append(match.group(1))
    mapping = {}
    for variable in keras_model.weights:
        layer, leaf = variable.path.rsplit("/", 1)
        if layer == "normalization":
            continue
        if layer in _KERAS_TOP_TO_ORIGINAL:
            scope = _KERAS_TOP_TO_ORIGINAL[layer]
        else:
            prefix, role = layer.split("_", 1)
            has_expand = f"{prefix}_expand_conv" in layer_names
            scope = f"blocks_{prefixes.index(prefix)}/{_KERAS_BLOCK_TO_ORIGINAL[has_expand][role]}"
            if role == "dwconv":
                leaf = "depthwise_kernel"
        mapping[variable.path] = f"{scope}/{leaf}"
    return mapping


def write_tf1_checkpoint(prefix, tensors):
    """Writes {checkpoint key: array} as a TF1 name-based checkpoint; returns the prefix.

    Variables are fed through placeholders so the graph does not embed the
    (possibly large) values as constants.
    """
    with tf.Graph().as_default():
        variables, assigns, feeds = {}, [], {}
        for key, value in tensors.items():
            value = np.asarray(value)
            variable = tf.compat.v1.Variable(tf.zeros(value.shape, value.dtype), name=key)
            placeholder = tf.compat.v1.placeholder(value.dtype, value.shape)
            assigns.append(variable.assign(placeholder))
            feeds[placeholder] = value
            variables[key] = variable
        saver = tf.compat.v1.train.Saver(var_list=variables)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            session.run(assigns, feed_dict=feeds)
            return saver.save(session, prefix, write_meta_graph=False)


def original_training_tensors(root, ema, raw, trainable, step=1000):
    """Every entry an original training checkpoint holds (§5.7, §6.6).

    Args:
      root: scope, e.g. 'efficientnet-b0/'.
      ema, raw: {name under root: array} for the shadows and raw variables.
      trainable: names that get RMSProp slots.
    """
    tensors = {"global_step": np.array(step, np.int64)}
    for name, value in raw.items():
        tensors[root + name] = value
    for name, value in ema.items():
        tensors[root + name + names.EMA_SUFFIX] = value
    for name in trainable:
        tensors[root + name + "/RMSProp"] = np.ones_like(raw[name])
        tensors[root + name + "/RMSProp_1"] = np.zeros_like(raw[name])
    return tensors


def make_images(count=4, size=IMAGE_SIZE, seed=0):
    """[count, size, size, 3] float32 pixels in 0..255."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (count, size, size, 3)).astype(np.float32)


def snapshot(model):
    return [np.array(v.numpy()) for v in model.weights]


def assert_unchanged(model, before):
    for variable, old in zip(model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), old, err_msg=variable.path)


def randomize_batch_norm_and_biases(model, rng):
    """Moves BN parameters, BN statistics and biases away from their init values."""
    for variable in model.weights:
        shape = tuple(variable.shape)
        leaf = variable.path.rsplit("/", 1)[-1]
        if leaf in ("gamma", "moving_variance"):
            variable.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif leaf in ("beta", "moving_mean", "bias"):
            variable.assign(rng.normal(0.0, 0.1, shape).astype(np.float32))


def tiny_model(name="efficientnet-b0", num_classes=10, **kwargs):
    kwargs = {"small_image": True, "width": 0.25, "depth": 0.25, **kwargs}
    model, _ = build_model(name, num_classes, **kwargs)
    return model


def nst_model_tensors(model):
    """{original name under the root: value} of an nst model."""
    by_path = saving.variables_by_path(model)
    return {original: by_path[path].numpy()
            for path, original in names.original_names(model).items()}


def trainable_original_names(model):
    mapping = names.original_names(model)
    return [mapping[v.path] for v in model.trainable_weights]


@pytest.fixture(scope="module")
def keras_reference(tmp_path_factory):
    """A calibrated keras.applications B0 and its TF1 checkpoint.

    Returns a namespace with: keras_model, images `[4, 64, 64, 3]`,
    logits `[4, 1000]` (keras, inference), mapping {keras path: original
    name}, ema/raw {original name: array}, checkpoint_dir, prefix.
    """
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    keras_model = keras.applications.EfficientNetB0(
        weights=None, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), classifier_activation=None)
    # By type: Keras numbers layer names per session ("normalization_1", ...).
    norm = next(l for l in keras_model.layers if isinstance(l, keras.layers.Normalization))
    norm.adapt_mean.assign(IMAGENET_MEAN)
    norm.adapt_variance.assign(IMAGENET_STD ** 2)
    norm.count.assign(0)
    norm.finalize_state()

    images = make_images()
    batch_norms = [l for l in keras_model.layers
                   if isinstance(l, keras.layers.BatchNormalization)]
    for layer in batch_norms:
        shape = tuple(layer.gamma.shape)
        layer.gamma.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        layer.beta.assign(rng.normal(0.0, 0.2, shape).astype(np.float32))
    keras_model.get_layer("predictions").bias.assign(
        rng.normal(0.0, 0.1, (1000,)).astype(np.float32))
    # Random convs with unit BN statistics shrink activations block after
    # block until the logits are ~constant; one pass with momentum 0 sets
    # every moving statistic to the batch statistic, so each BN really
    # normalises and the tolerance below means something.
    momenta = [layer.momentum for layer in batch_norms]
    for layer in batch_norms:
        layer.momentum = 0.0
    keras_model(images, training=True)
    for layer, momentum in zip(batch_norms, momenta):
        layer.momentum = momentum
    logits = keras_model(images, training=False).numpy()
    assert logits.std() > 0.05

    mapping = keras_to_original_names(keras_model)
    by_path = {v.path: v for v in keras_model.weights}
    ema = {mapping[p]: by_path[p].numpy() for p in mapping}
    # "Raw" weights: plausible but distinct from the shadows.
    raw = {n: (v * rng.uniform(0.5, 1.5, v.shape)).astype(np.float32) for n, v in ema.items()}
    trainable = [mapping[v.path] for v in keras_model.trainable_weights if v.path in mapping]
    checkpoint_dir = tmp_path_factory.mktemp("original_b0")
    prefix = write_tf1_checkpoint(
        str(checkpoint_dir / "model.ckpt-1000"),
        original_training_tensors(ROOT, ema, raw, trainable))
    return types.SimpleNamespace(
        keras_model=keras_model, images=images, logits=logits, mapping=mapping,
        ema=ema, raw=raw, trainable=trainable, checkpoint_dir=str(checkpoint_dir),
        prefix=prefix)


@pytest.fixture(scope="module")
def student_teacher_checkpoint(tmp_path_factory):
    """A student-run checkpoint with an online teacher of the same architecture.

    Returns (prefix, student_tensors, teacher_tensors), tensors keyed by
    original name under the root.
    """
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    student, teacher = tiny_model(), tiny_model()
    randomize_batch_norm_and_biases(student, rng)
    randomize_batch_norm_and_biases(teacher, rng)
    student_tensors, teacher_tensors = nst_model_tensors(student), nst_model_tensors(teacher)
    trainable = trainable_original_names(student)
    tensors = original_training_tensors(ROOT, student_tensors, student_tensors, trainable)
    # The teacher is frozen: EMA shadows only, no optimizer slots.
    tensors.update({convert.TEACHER_PREFIX + ROOT + n + names.EMA_SUFFIX: v
                    for n, v in teacher_tensors.items()})
    prefix = write_tf1_checkpoint(
        str(tmp_path_factory.mktemp("student_run") / "model.ckpt-5"), tensors)
    return prefix, student_tensors, teacher_tensors


def assert_model_holds(model, tensors):
    by_path = saving.variables_by_path(model)
    for path, original in names.original_names(model).items():
        np.testing.assert_array_equal(by_path[path].numpy(), tensors[original], err_msg=path)


# --- Original-format import against the keras.applications reference -------

def test_reference_mapping_covers_b0(keras_reference):
    assert len(keras_reference.mapping) == B0_MODEL_TENSORS
    assert len(keras_reference.trainable) == 213
    assert keras_reference.mapping["block2b_expand_bn/gamma"] == \
        "blocks_2/tpu_batch_normalization/gamma"
    assert keras_reference.mapping["block1a_project_conv/kernel"] == "blocks_0/conv2d/kernel"
    assert keras_reference.mapping["block2a_dwconv/kernel"] == \
        "blocks_1/depthwise_conv2d/depthwise_kernel"


def test_original_checkpoint_matches_keras_reference(keras_reference):
    model, _ = build_model("efficientnet-b0", 1000, image_size=IMAGE_SIZE)
    report = convert.load_original_checkpoint(model, keras_reference.checkpoint_dir)
    assert report.root == ROOT
    assert report.num_loaded == B0_MODEL_TENSORS
    assert report.num_from_ema == B0_MODEL_TENSORS
    logits = model(keras_reference.images, training=False).numpy()
    np.testing.assert_allclose(logits, keras_reference.logits, atol=1e-4, rtol=0)


def test_use_ema_false_reads_raw_values(keras_reference):
    model, _ = build_model("efficientnet-b0", 1000, image_size=IMAGE_SIZE)
    report = convert.load_original_checkpoint(model, keras_reference.prefix, use_ema=False)
    assert report.num_loaded == B0_MODEL_TENSORS
    assert report.num_from_ema == 0
    np.testing.assert_array_equal(model.get_layer("stem").conv.kernel.numpy(),
                                  keras_reference.raw["stem/conv2d/kernel"])
    logits = model(keras_reference.images, training=False).numpy()
    assert np.abs(logits - keras_reference.logits).max() > 1e-2


def test_swapped_same_shaped_scopes_are_detected(keras_reference, tmp_path):
    """The logit comparison is sharp enough to catch a names.py slip that
    swaps two same-shaped BN scopes (names and shapes still fit)."""
    swap = {"blocks_5/tpu_batch_normalization": "blocks_5/tpu_batch_normalization_1",
            "blocks_5/tpu_batch_normalization_1": "blocks_5/tpu_batch_normalization"}
    tensors = {}
    for name, value in keras_reference.ema.items():
        scope, leaf = name.rsplit("/", 1)
        tensors[ROOT + swap.get(scope, scope) + "/" + leaf + names.EMA_SUFFIX] = value
    prefix = write_tf1_checkpoint(str(tmp_path / "model.ckpt-1"), tensors)
    model, _ = build_model("efficientnet-b0", 1000, image_size=IMAGE_SIZE)
    convert.load_original_checkpoint(model, prefix)
    logits = model(keras_reference.images, training=False).numpy()
    assert np.abs(logits - keras_reference.logits).max() > 1e-3


def test_raw_only_checkpoint_falls_back_to_raw(tmp_path):
    model = tiny_model()
    randomize_batch_norm_and_biases(model, np.random.default_rng(2))
    tensors = {ROOT + n: v for n, v in nst_model_tensors(model).items()}
    prefix = write_tf1_checkpoint(str(tmp_path / "model.ckpt-1"), tensors)
    target = tiny_model()
    report = convert.load_original_checkpoint(target, prefix)
    assert report.num_from_ema == 0
    assert report.num_loaded == len(target.weights)
    assert_model_holds(target, nst_model_tensors(model))


# --- The EMA rule: all shadows, none, or an error ----------------------------

DROPPED_SHADOWS = ("head/dense/kernel", "head/dense/bias",
                   "stem/tpu_batch_normalization/moving_mean")


@pytest.fixture(scope="module")
def ema_tensors():
    """(raw, shadows): {original name under the root: array} of two different
    tiny models, so that a value shows which of the two it came from."""
    rng = np.random.default_rng(3)
    raw_model, shadow_model = tiny_model(), tiny_model()
    randomize_batch_norm_and_biases(raw_model, rng)
    randomize_batch_norm_and_biases(shadow_model, rng)
    return nst_model_tensors(raw_model), nst_model_tensors(shadow_model)


@pytest.fixture(scope="module")
def ema_checkpoints(ema_tensors, tmp_path_factory):
    """{"all", "none", "partial": prefix} of TF1 checkpoints with every raw
    value and all, none, or all but DROPPED_SHADOWS of the shadows."""
    raw, ema = ema_tensors
    prefixes = {}
    for shadows, kept in (("all", list(ema)), ("none", []),
                          ("partial", [n for n in ema if n not in DROPPED_SHADOWS])):
        tensors = {ROOT + n: v for n, v in raw.items()}
        tensors.update({ROOT + n + names.EMA_SUFFIX: ema[n] for n in kept})
        prefixes[shadows] = write_tf1_checkpoint(
            str(tmp_path_factory.mktemp(f"ema_{shadows}") / "model.ckpt-1"), tensors)
    return prefixes


@pytest.mark.parametrize("shadows, use_ema, expected", [
    ("all", "auto", "ema"), ("all", True, "ema"), ("all", False, "raw"),
    ("none", "auto", "raw"), ("none", False, "raw"), ("partial", False, "raw")])
def test_ema_rule_loads(ema_checkpoints, ema_tensors, shadows, use_ema, expected):
    prefix = ema_checkpoints[shadows]
    model = tiny_model()
    report = saving.load_weights(model, prefix, use_ema=use_ema)
    assert report.num_loaded == len(model.weights)
    assert report.num_from_ema == (len(model.weights) if expected == "ema" else 0)
    raw, ema = ema_tensors
    assert_model_holds(model, ema if expected == "ema" else raw)
    if shadows == "partial":
        # The raw value, although the checkpoint has a shadow for this tensor.
        kernel = model.get_layer("stem").conv.kernel.numpy()
        np.testing.assert_array_equal(kernel, raw["stem/conv2d/kernel"])
        assert not np.array_equal(kernel, ema["stem/conv2d/kernel"])


def test_partial_ema_with_use_ema_true_names_the_missing_shadows(ema_checkpoints):
    prefix = ema_checkpoints["partial"]
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(convert.EmaShadowError) as info:
        saving.load_weights(model, prefix, use_ema=True)
    wanted = sorted(ROOT + n + names.EMA_SUFFIX for n in DROPPED_SHADOWS)
    assert info.value.missing_shadows == wanted
    message = str(info.value)
    assert message.startswith(f"use_ema=True needs an EMA shadow for every tensor, but "
                              f"3 of {len(model.weights)} in {prefix} have none")
    assert all(name in message for name in wanted)
    assert_unchanged(model, before)


def test_partial_ema_under_auto_is_refused(ema_checkpoints):
    prefix = ema_checkpoints["partial"]
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(convert.EmaShadowError) as info:
        saving.load_weights(model, prefix)  # "auto" is the default
    message = str(info.value)
    assert (f"{prefix} has EMA shadows for only {len(model.weights) - 3} of "
            f"{len(model.weights)} tensors") in message
    assert ROOT + "head/dense/kernel" + names.EMA_SUFFIX in message
    assert message.endswith("pass use_ema=False to load raw values.")
    assert "\n" not in message
    assert_unchanged(model, before)
    # The original-format loader applies the same rule.
    with pytest.raises(convert.EmaShadowError, match="use_ema=False"):
        convert.load_original_checkpoint(model, prefix)


def test_missing_shadows_are_counted_beyond_the_first_few(tmp_path, ema_tensors):
    raw, ema = ema_tensors
    tensors = {ROOT + n: v for n, v in raw.items()}
    tensors[ROOT + "stem/conv2d/kernel" + names.EMA_SUFFIX] = ema["stem/conv2d/kernel"]
    prefix = write_tf1_checkpoint(str(tmp_path / "model.ckpt-1"), tensors)
    model = tiny_model()
    with pytest.raises(convert.EmaShadowError) as info:
        saving.load_weights(model, prefix, use_ema=True)
    unshadowed = len(model.weights) - 1
    assert len(info.value.missing_shadows) == unshadowed
    assert f"{unshadowed} of {len(model.weights)}" in str(info.value)
    assert f"and {unshadowed - 5} more" in str(info.value)


def test_use_ema_false_refuses_shadow_only_tensors(student_teacher_checkpoint):
    # The online teacher is stored as shadows only: there are no raw values.
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(convert.EmaShadowError, match="exist only as EMA shadows") as info:
        saving.load_weights(model, student_teacher_checkpoint[0], source="teacher",
                            use_ema=False)
    assert "pass use_ema='auto' to load the shadows" in str(info.value)
    assert_unchanged(model, before)


def test_unknown_use_ema_is_rejected(ema_checkpoints):
    model = tiny_model()
    for use_ema in ("true", "yes", 1, None):
        for load in (saving.load_weights, convert.load_original_checkpoint):
            with pytest.raises(ValueError, match="use_ema must be 'auto', True or False"):
                load(model, ema_checkpoints["all"], use_ema=use_ema)


# --- teacher_model/ scopes --------------------------------------------------

def test_find_roots_lists_student_and_teacher(student_teacher_checkpoint):
    prefix, _, _ = student_teacher_checkpoint
    keys = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    assert convert.find_roots(keys) == [ROOT, "teacher_model/" + ROOT]


@pytest.mark.parametrize("source, expected", [
    ("teacher", "teacher"), ("student", "student"), ("auto", "student")])
def test_source_selects_student_or_teacher(student_teacher_checkpoint, source, expected):
    prefix, student_tensors, teacher_tensors = student_teacher_checkpoint
    model = tiny_model()
    report = convert.load_original_checkpoint(model, prefix, source=source)
    wanted = teacher_tensors if expected == "teacher" else student_tensors
    assert report.root == (convert.TEACHER_PREFIX + ROOT if expected == "teacher" else ROOT)
    assert report.num_from_ema == len(model.weights)
    assert_model_holds(model, wanted)


def test_unknown_source_is_rejected(student_teacher_checkpoint):
    with pytest.raises(ValueError, match="source"):
        convert.load_original_checkpoint(tiny_model(), student_teacher_checkpoint[0],
                                         source="ema")


# --- Mismatches: one clear error, nothing assigned ---------------------------

def _tiny_checkpoint(tmp_path, model, extra=None):
    tensors = {ROOT + n + names.EMA_SUFFIX: v for n, v in nst_model_tensors(model).items()}
    tensors.update(extra or {})
    return write_tf1_checkpoint(str(tmp_path / "model.ckpt-1"), tensors)


def test_b0_checkpoint_into_b1_model(tmp_path):
    prefix = _tiny_checkpoint(tmp_path, tiny_model(depth=None))
    model = tiny_model("efficientnet-b1", depth=None)
    assert len(model.block_layers) == 23
    before = snapshot(model)
    with pytest.raises(convert.CheckpointMismatchError) as info:
        convert.load_original_checkpoint(model, prefix)
    message = str(info.value)
    # The model name leads, before the list of the 7 blocks b0 lacks.
    assert message.split("\n")[0] == (
        f"Checkpoint {prefix} holds efficientnet-b0, the model is efficientnet-b1.")
    assert "missing from the source" in message
    assert "efficientnet-b0/blocks_16/" in message
    assert any(k.startswith(ROOT + "blocks_22/") for k in info.value.missing)
    assert_unchanged(model, before)


def test_other_scope_name_that_fits_loads(tmp_path):
    # A b0 trained with overrides can have exactly another model's tensors.
    source = tiny_model()
    tensors = {"efficientnet-b1/" + n: v for n, v in nst_model_tensors(source).items()}
    prefix = write_tf1_checkpoint(str(tmp_path / "model.ckpt-1"), tensors)
    model = tiny_model()
    report = convert.load_original_checkpoint(model, prefix)
    assert report.root == "efficientnet-b1/"
    assert report.num_loaded == len(model.weights)


def test_same_model_name_mismatch_has_no_name_line(tmp_path):
    prefix = _tiny_checkpoint(tmp_path, tiny_model())
    with pytest.raises(convert.CheckpointMismatchError) as info:
        convert.load_original_checkpoint(tiny_model(depth=0.5), prefix)
    assert str(info.value).startswith(f"Weights in {prefix} do not match the model.")


def test_b0_checkpoint_into_model_with_other_class_count(keras_reference):
    model, _ = build_model("efficientnet-b0", 10, image_size=IMAGE_SIZE)
    before = snapshot(model)
    with pytest.raises(convert.CheckpointMismatchError) as info:
        convert.load_original_checkpoint(model, keras_reference.checkpoint_dir)
    message = str(info.value)
    assert "shape mismatch" in message
    assert "efficientnet-b0/head/dense/kernel: model (1280, 10) vs source (1280, 1000)" in message
    assert not info.value.missing and not info.value.unexpected
    assert_unchanged(model, before)


def test_unexpected_tensor_in_checkpoint(tmp_path):
    source = tiny_model()
    extra_name = ROOT + "blocks_0/extra_conv/kernel"
    extra = {extra_name: np.zeros((1, 1, 8, 8), np.float32),
             extra_name + names.EMA_SUFFIX: np.zeros((1, 1, 8, 8), np.float32)}
    prefix = _tiny_checkpoint(tmp_path, source, extra)
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(convert.CheckpointMismatchError) as info:
        convert.load_original_checkpoint(model, prefix)
    assert info.value.unexpected == [extra_name]
    assert "1 unexpected in the source: " + extra_name in str(info.value)
    assert_unchanged(model, before)


def test_non_efficientnet_checkpoint(tmp_path):
    prefix = write_tf1_checkpoint(str(tmp_path / "model.ckpt-1"), {
        "resnet50/conv1/kernel": np.zeros((7, 7, 3, 64), np.float32),
        "resnet50/fc/bias": np.zeros((1000,), np.float32),
        "global_step": np.array(1, np.int64)})
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(convert.CheckpointMismatchError, match="No EfficientNet found"):
        convert.load_original_checkpoint(model, prefix)
    with pytest.raises(convert.CheckpointMismatchError, match="No EfficientNet found"):
        saving.load_weights(model, prefix)
    assert_unchanged(model, before)


def test_nst_checkpoint_given_to_original_loader(tmp_path):
    source = tiny_model()
    prefix = saving.save_weights(source, str(tmp_path / "nst"))
    with pytest.raises(convert.CheckpointMismatchError, match="object-based"):
        convert.load_original_checkpoint(tiny_model(), prefix)


def test_teacher_only_missing_is_reported(tmp_path):
    prefix = _tiny_checkpoint(tmp_path, tiny_model())
    with pytest.raises(convert.CheckpointMismatchError, match="No teacher model"):
        convert.load_original_checkpoint(tiny_model(), prefix, source="teacher")


# --- keras.applications import ----------------------------------------------

def test_load_keras_applications_matches_reference(keras_reference):
    model, _ = build_model("efficientnet-b0", 1000, image_size=IMAGE_SIZE)
    report = convert.load_keras_applications(model, keras_reference.keras_model)
    assert report.num_loaded == B0_MODEL_TENSORS
    logits = model(keras_reference.images, training=False).numpy()
    np.testing.assert_allclose(logits, keras_reference.logits, atol=1e-4, rtol=0)


def test_load_keras_applications_wrong_efficientnet(keras_reference):
    model = tiny_model("efficientnet-b1", num_classes=1000, depth=None)
    before = snapshot(model)
    with pytest.raises(convert.CheckpointMismatchError) as info:
        convert.load_keras_applications(model, keras_reference.keras_model)
    assert "block1b_dwconv/kernel" in info.value.missing
    assert info.value.shape_mismatches  # width 0.25 vs 1.0
    assert "missing from the source" in str(info.value)
    assert_unchanged(model, before)


def test_load_keras_applications_wrong_architecture():
    other = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(8, 3, name="conv1"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, name="fc"),
    ], name="not_an_efficientnet")
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(convert.CheckpointMismatchError) as info:
        convert.load_keras_applications(model, other)
    assert "stem_conv/kernel" in info.value.missing
    assert "predictions/kernel" in info.value.missing
    # A Sequential model creates its weights under its own name scope.
    assert sorted(info.value.unexpected) == [
        f"not_an_efficientnet/{name}" for name in ("conv1/bias", "conv1/kernel", "fc/bias", "fc/kernel")]
    message = str(info.value)
    assert "not_an_efficientnet" in message and "unexpected in the source" in message
    assert_unchanged(model, before)


# --- The command line --------------------------------------------------------

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(*args, script=None):
    """Runs `python -m nst.models.convert_cli` (or `script`) and returns the
    CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    entry = [script] if script else ["-m", "nst.models.convert_cli"]
    return subprocess.run([sys.executable, *entry, *args],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_cli_converts_original_checkpoint(keras_reference, tmp_path):
    out_dir, serving_dir = tmp_path / "nst", tmp_path / "serving"
    result = run_cli("--model_name=efficientnet-b0", f"--input_image_size={IMAGE_SIZE}",
                     f"--source={keras_reference.checkpoint_dir}",
                     f"--output_dir={out_dir}", f"--export_saved_model={serving_dir}")
    assert result.returncode == 0, result.stderr
    assert f"Loaded {B0_MODEL_TENSORS} tensors" in result.stdout
    assert f"{B0_MODEL_TENSORS} from EMA" in result.stdout
    assert f"scope '{ROOT}'" in result.stdout

    model = saving.load_model(str(out_dir))
    assert model.image_size == IMAGE_SIZE
    np.testing.assert_allclose(model(keras_reference.images, training=False).numpy(),
                               keras_reference.logits, atol=1e-4, rtol=0)
    # Keep the loaded object alive: its variables die with it.
    loaded = tf.saved_model.load(str(serving_dir))
    served = loaded.serve(tf.constant(keras_reference.images))
    np.testing.assert_allclose(served["logits"].numpy(), keras_reference.logits,
                               atol=1e-4, rtol=0)


@pytest.mark.slow
def test_cli_converts_keras_source(keras_reference, tmp_path):
    weights = tmp_path / "b0.weights.h5"
    keras_reference.keras_model.save_weights(str(weights))
    archive = tmp_path / "b0.keras"
    result = run_cli("--model_name=efficientnet-b0", f"--input_image_size={IMAGE_SIZE}",
                     f"--source=keras:EfficientNetB0:{weights}", f"--export_keras={archive}")
    assert result.returncode == 0, result.stderr
    assert f"Loaded {B0_MODEL_TENSORS} tensors" in result.stdout
    restored = keras.models.load_model(str(archive))
    np.testing.assert_allclose(restored(keras_reference.images, training=False).numpy(),
                               keras_reference.logits, atol=1e-4, rtol=0)


def test_cli_mismatch_exits_non_zero(student_teacher_checkpoint, tmp_path):
    out_dir = tmp_path / "nst"
    result = run_cli("--model_name=efficientnet-b0", "--small_image_model",
                     "--width_coefficient=0.25", "--depth_coefficient=0.25",
                     "--num_label_classes=7", f"--source={student_teacher_checkpoint[0]}",
                     f"--output_dir={out_dir}",
                     script=os.path.join(REPO_ROOT, "tools", "convert_checkpoint.py"))
    assert result.returncode != 0
    assert "do not match the model" in result.stderr
    assert "head/dense/kernel: model (320, 7) vs source (320, 10)" in result.stderr
    assert not out_dir.exists()


def run_cli_in_process(capsys, *args):
    """Runs the CLI's `main` on `args` in this process (cheap: no new TensorFlow).

    Returns (exit status, stdout, stderr); errors go through `nst.cli_errors.guarded`, as
    in the binary (one 'error:' line, status 1).
    """
    convert_cli.define_flags()
    cli_errors.define_flags()
    capsys.readouterr()
    with flagsaver.flagsaver():
        flags.FLAGS(["nst-convert-checkpoint", *args])
        try:
            status = cli_errors.guarded(convert_cli.main)(["nst-convert-checkpoint"])
        except SystemExit as e:
            status = e.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_teacher_scope_and_list(student_teacher_checkpoint, tmp_path, capsys):
    prefix, _, teacher_tensors = student_teacher_checkpoint
    status, out, err = run_cli_in_process(capsys, f"--source={prefix}", "--list")
    assert status == 0, err
    assert out.split() == [ROOT, "teacher_model/" + ROOT]

    out_dir = tmp_path / "teacher"
    status, out, err = run_cli_in_process(
        capsys, "--model_name=efficientnet-b0", "--small_image_model",
        "--width_coefficient=0.25", "--depth_coefficient=0.25", "--num_label_classes=10",
        f"--source={prefix}", "--source_scope=teacher", f"--output_dir={out_dir}")
    assert status == 0, err
    assert "scope 'teacher_model/efficientnet-b0/'" in out
    assert_model_holds(saving.load_model(str(out_dir)), teacher_tensors)


TINY_FLAGS = ("--model_name=efficientnet-b0", "--small_image_model", "--width_coefficient=0.25",
              "--depth_coefficient=0.25", "--num_label_classes=10")


@pytest.mark.parametrize("value, status, message", [
    ("auto", 1, "pass use_ema=False to load raw values"),
    ("true", 1, "use_ema=True needs an EMA shadow for every tensor"),
    ("false", 0, "; 0 from EMA shadows")])
def test_cli_use_ema_values(ema_checkpoints, capsys, value, status, message):
    got, out, err = run_cli_in_process(capsys, *TINY_FLAGS,
                                       f"--source={ema_checkpoints['partial']}",
                                       f"--use_ema={value}")
    assert got == status, err
    assert message in (out if status == 0 else err)
    if value == "true":
        assert ROOT + "head/dense/bias" + names.EMA_SUFFIX in err


def test_cli_use_ema_defaults_to_auto(ema_checkpoints, ema_tensors, capsys):
    status, out, err = run_cli_in_process(capsys, *TINY_FLAGS,
                                          f"--source={ema_checkpoints['all']}")
    assert status == 0, err
    assert f"; {len(ema_tensors[1])} from EMA shadows" in out


@pytest.mark.parametrize("value", ["maybe", "True", "1", ""])
def test_cli_use_ema_rejects_other_values(value):
    convert_cli.define_flags()
    with flagsaver.flagsaver():
        with pytest.raises(flags.IllegalFlagValueError, match="use_ema"):
            flags.FLAGS(["nst-convert-checkpoint", f"--use_ema={value}"])


def test_cli_no_ema_contradicting_use_ema(capsys):
    status, _, err = run_cli_in_process(capsys, "--source=/tmp", "--no_ema", "--use_ema=true")
    assert status == 1
    assert "--use_ema=true and --no_ema contradict each other" in err


def test_cli_keras_source_has_no_shadows(capsys):
    status, _, err = run_cli_in_process(capsys, "--source=keras:EfficientNetB0",
                                        "--input_image_size=32", "--use_ema=true")
    assert status == 1
    assert "holds no EMA shadows" in err


def test_cli_no_ema_reads_raw(keras_reference, capsys):
    status, out, err = run_cli_in_process(
        capsys, f"--input_image_size={IMAGE_SIZE}", f"--source={keras_reference.prefix}",
        "--no_ema")
    assert status == 0, err
    assert "; 0 from EMA" in out and "nothing written" in out


@pytest.mark.parametrize("args, message", [
    (["--model_name=efficientnet-b0"], "--source is required"),
    (["--source=keras:EfficientNetB0", "--export_keras=/tmp/x.h5"], "must end in .keras"),
    (["--source=keras:ResNet50", "--input_image_size=32"], "not a keras.applications"),
    (["--source=keras:EfficientNetB0", "--list"], "--list reads original checkpoints"),
    (["--source=/nonexistent/model.ckpt-1"], "/nonexistent/model.ckpt-1"),
    (["--source=keras:EfficientNetB0:/nonexistent.weights.h5", "--input_image_size=32"],
     "No weights file"),
    (["--source=/tmp", "--model_name=efficientnet-b9"], "Unknown model name"),
])
def test_cli_errors(capsys, args, message):
    status, _, err = run_cli_in_process(capsys, *args)
    assert status == 1
    assert message in err
