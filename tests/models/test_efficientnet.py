"""The Keras EfficientNet against §6 of the spec and against keras.applications.

Fast tests use tiny configs (width 0.25, 32x32 small-image inputs) or only
build B0 symbolically; whole-size B3..B7 and L2 builds are marked slow.
"""

import gc

import keras
import numpy as np
import pytest
import tensorflow as tf

from nst.models import config as config_lib
from nst.models import convert
from nst.models import layers as nst_layers
from nst.models.efficientnet import EfficientNet, build_model

# Tiny configs: 7 blocks (TINY) or 10 blocks with several residual blocks (NOISY).
TINY = dict(small_image=True, width=0.25, depth=0.25)
NOISY = dict(small_image=True, width=0.25, depth=0.5)

# §6.1 trainable parameters at K = 1000, in millions.
SPEC_PARAMS_M = {
    "efficientnet-b0": 5.3, "efficientnet-b1": 7.8, "efficientnet-b2": 9.1,
    "efficientnet-b3": 12.2, "efficientnet-b4": 19.3, "efficientnet-b5": 30.4,
    "efficientnet-b6": 43.0, "efficientnet-b7": 66.3, "efficientnet-l2": 480.0,
}
# §6.6 sanity counts: (trainable tensors, BN moving statistics).
SPEC_TENSORS = {
    "efficientnet-b0": (213, 98),
    "efficientnet-b7": (711, 326),
    "efficientnet-l2": (1134, 520),
}
KERAS_APPS = {
    "efficientnet-b0": keras.applications.EfficientNetB0,
    "efficientnet-b1": keras.applications.EfficientNetB1,
    "efficientnet-b2": keras.applications.EfficientNetB2,
    "efficientnet-b3": keras.applications.EfficientNetB3,
    "efficientnet-b4": keras.applications.EfficientNetB4,
    "efficientnet-b5": keras.applications.EfficientNetB5,
    "efficientnet-b6": keras.applications.EfficientNetB6,
    "efficientnet-b7": keras.applications.EfficientNetB7,
}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _images(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _sublayers(layer):
    # Keras 3 has no public recursive layer walk; MBConv/Stem/Head hold their
    # convs and BNs as tracked attributes, which this private helper visits.
    return list(layer._flatten_layers(include_self=False, recursive=True))


def _num_params(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def _free_memory():
    gc.collect()
    keras.backend.clear_session()
    gc.collect()


def _seeded_build(*args, **kwargs):
    # Module-scoped fixtures run before the per-test seeding fixture.
    keras.utils.set_random_seed(4321)
    return build_model(*args, **kwargs)[0]


@pytest.fixture(scope="module")
def b0():
    """Full B0 at 224 with 1000 classes; read-only."""
    model = _seeded_build("efficientnet-b0", 1000)
    yield model
    del model
    _free_memory()


@pytest.fixture(scope="module")
def noisy():
    """A 10-block 32x32 model with dropout 0.2 and stochastic depth 0.2; read-only weights."""
    return _seeded_build("efficientnet-b0", 10, **NOISY)


# --- build_model and the table ---------------------------------------------------------

def test_build_model_returns_the_resolution():
    model, resolution = build_model("efficientnet-b0", 10, **TINY)
    assert resolution == 32 and model.image_size == 32
    assert isinstance(model, EfficientNet)
    assert model.output_shape == (None, 10)
    assert build_model("efficientnet-b0", 10, width=0.25, depth=0.25)[1] == 224
    assert build_model("efficientnet-l2-475", 10, width=0.1, depth=0.1,
                       image_size=None)[1] == 475
    model, resolution = build_model("efficientnet-b0", 10, width=0.25, depth=0.25,
                                    resolution=64)
    assert resolution == 64 and model.input_shape == (None, 64, 64, 3)


def test_block_variable_shapes_follow_spec_6_6(b0):
    """SE width comes from the block input channels, not the expanded ones."""
    shapes = {v.path: tuple(v.shape) for v in b0.weights}
    # Block 0: expand 1, 32 -> 16, SE 32 * 0.25 = 8.
    assert shapes["blocks_0/depthwise_conv/kernel"] == (3, 3, 32, 1)
    assert shapes["blocks_0/se_reduce/kernel"] == (1, 1, 32, 8)
    assert shapes["blocks_0/se_reduce/bias"] == (8,)
    assert shapes["blocks_0/se_expand/kernel"] == (1, 1, 8, 32)
    assert shapes["blocks_0/project_conv/kernel"] == (1, 1, 32, 16)
    assert "blocks_0/expand_conv/kernel" not in shapes
    # Block 1: expand 6, 16 -> 24, mid 96, SE int(16 * 0.25) = 4 (not 24).
    assert shapes["blocks_1/expand_conv/kernel"] == (1, 1, 16, 96)
    assert shapes["blocks_1/depthwise_conv/kernel"] == (3, 3, 96, 1)
    assert shapes["blocks_1/se_reduce/kernel"] == (1, 1, 96, 4)
    assert shapes["blocks_1/se_expand/kernel"] == (1, 1, 4, 96)
    assert shapes["blocks_1/se_expand/bias"] == (96,)
    assert shapes["blocks_1/project_conv/kernel"] == (1, 1, 96, 24)
    # Block 3 (first of stage 3): 5x5 kernel on 24 * 6 = 144 channels.
    assert shapes["blocks_3/depthwise_conv/kernel"] == (5, 5, 144, 1)
    assert shapes["stem/conv/kernel"] == (3, 3, 3, 32)
    assert shapes["head/conv/kernel"] == (1, 1, 320, 1280)
    assert shapes["logits/kernel"] == (1280, 1000)
    assert shapes["logits/bias"] == (1000,)


def test_normalization_uses_imagenet_constants():
    model = build_model("efficientnet-b0", 10, image_size=None, **TINY)[0]
    normalize = model.get_layer("normalize")
    mean = (IMAGENET_MEAN * 255).astype("float32")
    std = (IMAGENET_STD * 255).astype("float32")
    x = np.stack([np.broadcast_to(mean, (2, 2, 3)), np.broadcast_to(mean + std, (2, 2, 3))])
    out = np.asarray(normalize(x))
    np.testing.assert_allclose(out[0], 0.0, atol=1e-5)
    np.testing.assert_allclose(out[1], 1.0, atol=1e-5)


# --- stochastic depth ---------------------------------------------------------------------

def test_b0_stochastic_depth_per_block(b0):
    blocks = b0.block_layers
    assert [b.name for b in blocks] == [f"blocks_{i}" for i in range(16)]
    # Stage boundaries of B0 (repeats 1,2,2,3,3,4,1) leave these blocks with a
    # residual: the non-first blocks of each stage.
    residual = {2, 4, 6, 7, 9, 10, 12, 13, 14}
    for i, block in enumerate(blocks):
        assert block.has_residual == (i in residual), block.name
        if i in residual:
            assert isinstance(block.stochastic_depth, nst_layers.StochasticDepth)
            assert block.stochastic_depth.rate == pytest.approx(0.2 * i / 16, abs=1e-12)
        else:
            # First block of a stage (stride 2 or in != out): no residual, so
            # no stochastic depth even though its schedule rate is non-zero.
            assert block.stochastic_depth is None
            assert block.drop_rate == pytest.approx(0.2 * i / 16, abs=1e-12)
    sublayer_types = {type(l) for b in blocks for l in _sublayers(b)}
    assert keras.layers.Dropout not in sublayer_types  # no Keras-style block dropout


def test_stochastic_depth_off_when_rate_zero():
    model = build_model("efficientnet-b0", 10, stochastic_depth_rate=0.0, **NOISY)[0]
    assert all(b.stochastic_depth is None for b in model.block_layers)
    assert any(b.has_residual for b in model.block_layers)


def test_stochastic_depth_identity_in_inference():
    layer = nst_layers.StochasticDepth(0.5, seed=3)
    x = np.random.default_rng(1).normal(size=(64, 3, 3, 4)).astype("float32")
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    np.testing.assert_array_equal(np.asarray(layer(x)), x)
    zero = nst_layers.StochasticDepth(0.0)
    np.testing.assert_array_equal(np.asarray(zero(x, training=True)), x)


def test_stochastic_depth_is_per_sample_and_rescaled():
    rate, batch = 0.3, 4000
    keep = 1.0 - rate
    layer = nst_layers.StochasticDepth(rate, seed=7)
    # Strictly positive so that a dropped element cannot be mistaken for a kept one.
    x = np.random.default_rng(2).uniform(0.5, 2.0, (batch, 2, 3, 4)).astype("float32")
    out = np.asarray(layer(x, training=True))
    flat_out, flat_x = out.reshape(batch, -1), x.reshape(batch, -1)
    dropped = np.all(flat_out == 0, axis=1)
    kept = np.all(np.isclose(flat_out, flat_x / keep, rtol=1e-6, atol=0), axis=1)
    # Every sample is entirely dropped or entirely kept: a per-element mask
    # would leave mixed rows.
    assert np.all(dropped ^ kept)
    # Binomial(4000, 0.7): sd of the fraction = sqrt(0.7 * 0.3 / 4000) ~ 0.0072.
    sigma = np.sqrt(keep * rate / batch)
    assert abs(kept.mean() - keep) < 5 * sigma
    # Rescaling by 1/keep makes the branch unbiased.
    assert abs(out.mean() / x.mean() - 1) < 6 * sigma / keep
    # A second call draws a new mask.
    again = np.asarray(layer(x, training=True))
    assert not np.array_equal(np.all(again.reshape(batch, -1) == 0, axis=1), dropped)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_stochastic_depth_rejects_bad_rates(rate):
    with pytest.raises(ValueError):
        nst_layers.StochasticDepth(rate)


# --- noise on / off --------------------------------------------------------------------------

def test_training_calls_are_noisy_inference_calls_are_not(noisy):
    assert any(b.stochastic_depth is not None for b in noisy.block_layers)
    assert noisy.get_layer("top_dropout").rate == 0.2
    x = _images(8, 32)
    train_a = np.asarray(noisy(x, training=True))
    train_b = np.asarray(noisy(x, training=True))
    assert np.abs(train_a - train_b).max() > 1e-3
    eval_a = np.asarray(noisy(x, training=False))
    eval_b = np.asarray(noisy(x, training=False))
    np.testing.assert_array_equal(eval_a, eval_b)
    assert np.all(np.isfinite(train_a)) and np.all(np.isfinite(eval_a))


def test_without_dropout_and_stochastic_depth_training_is_deterministic():
    model = build_model("efficientnet-b0", 10, dropout_rate=0.0,
                        stochastic_depth_rate=0.0, **NOISY)[0]
    assert "top_dropout" not in [l.name for l in model.layers]
    assert all(b.stochastic_depth is None for b in model.block_layers)
    x = _images(8, 32)
    train_a = np.asarray(model(x, training=True))
    train_b = np.asarray(model(x, training=True))
    np.testing.assert_allclose(train_a, train_b, rtol=0, atol=1e-6)
    # Training mode still differs from inference: batch-norm batch statistics.
    assert np.abs(train_a - np.asarray(model(x, training=False))).max() > 1e-3


def test_stochastic_depth_alone_makes_training_noisy():
    model = build_model("efficientnet-b0", 10, dropout_rate=0.0,
                        stochastic_depth_rate=0.5, **NOISY)[0]
    assert "top_dropout" not in [l.name for l in model.layers]
    x = _images(8, 32)
    assert np.abs(np.asarray(model(x, training=True))
                  - np.asarray(model(x, training=True))).max() > 1e-3


def test_head_dropout_alone_makes_training_noisy_and_only_in_training():
    model = build_model("efficientnet-b0", 10, dropout_rate=0.5,
                        stochastic_depth_rate=0.0, **NOISY)[0]
    features = keras.Model(model.input, model.get_layer("avg_pool").output)
    dense = model.get_layer("logits")
    x = _images(8, 32)
    # Everything before the head dropout is deterministic in training mode...
    feat_a = np.asarray(features(x, training=True))
    np.testing.assert_allclose(np.asarray(features(x, training=True)), feat_a, atol=1e-6)
    # ...but the logits are not: the noise is the dropout after avg_pool.
    train_a = np.asarray(model(x, training=True))
    train_b = np.asarray(model(x, training=True))
    assert np.abs(train_a - train_b).max() > 1e-3
    # In inference the logits are exactly dense(avg_pool), no dropout.
    feat = np.asarray(features(x, training=False))
    np.testing.assert_allclose(np.asarray(model(x, training=False)),
                               np.asarray(dense(feat)), rtol=1e-5, atol=1e-5)


def test_head_dropout_layer_masks_elements_with_rescaling(noisy):
    dropout = noisy.get_layer("top_dropout")
    f = np.random.default_rng(3).uniform(0.5, 1.5, (256, 64)).astype("float32")
    np.testing.assert_array_equal(np.asarray(dropout(f, training=False)), f)
    out = np.asarray(dropout(f, training=True))
    dropped = out == 0
    np.testing.assert_allclose(out[~dropped], f[~dropped] / 0.8, rtol=1e-6)
    assert abs(dropped.mean() - 0.2) < 5 * np.sqrt(0.2 * 0.8 / f.size)


# --- spatial sizes -----------------------------------------------------------------------------

def _stage_of_block(model):
    return {f"blocks_{b.index}": b.stage for b in model.config.blocks()}


def test_spatial_sizes_224(b0):
    assert b0.get_layer("stem").output.shape == (None, 112, 112, 32)
    expected = [112, 56, 28, 14, 14, 7, 7]  # §6.5, per stage
    channels = [16, 24, 40, 80, 112, 192, 320]  # §6.2, B0
    for name, stage in _stage_of_block(b0).items():
        assert b0.get_layer(name).output.shape == (
            None, expected[stage], expected[stage], channels[stage]), name
    assert b0.get_layer("head").output.shape == (None, 7, 7, 1280)
    assert b0.get_layer("avg_pool").output.shape == (None, 1280)


def test_spatial_sizes_small_image_forward():
    model = build_model("efficientnet-b0", 10, **TINY)[0]
    names = ["stem"] + [f"blocks_{b.index}" for b in model.config.blocks()] + ["head"]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    outputs = dict(zip(names, probe(_images(2, 32), training=False)))
    assert outputs["stem"].shape[1:3] == (16, 16)
    expected = [16, 16, 16, 8, 8, 4, 4]  # §6.5, 32x32 variant
    for name, stage in _stage_of_block(model).items():
        assert tuple(outputs[name].shape[1:3]) == (expected[stage],) * 2, name
    assert tuple(outputs["head"].shape[1:3]) == (4, 4)


def test_spatial_sizes_small_image_full_width():
    model = build_model("efficientnet-b0", 10, small_image=True)[0]
    expected = [16, 16, 16, 8, 8, 4, 4]
    for name, stage in _stage_of_block(model).items():
        assert model.get_layer(name).output.shape[1:3] == (expected[stage],) * 2
    assert model.get_layer("head").output.shape == (None, 4, 4, 1280)


# --- initialisers, batch norm, padding ---------------------------------------------------------

def test_conv_kernels_are_untruncated_he_normal_fan_out(b0):
    pooled = []
    for v in b0.weights:
        if not v.path.endswith("/kernel") or v.path.startswith("logits/"):
            continue
        w = np.asarray(v.numpy(), dtype=np.float64)
        kh, kw, _, out = w.shape
        # Depthwise kernels are [k, k, C, 1]: fan_out = k*k (not k*k*C).
        fan_out = kh * kw * out
        z = w.ravel() / np.sqrt(2.0 / fan_out)
        if z.size >= 2000:
            # Relative sd of a sample sd is ~ 1/sqrt(2n).
            assert abs(z.std() - 1) < 6 / np.sqrt(2 * z.size), v.path
        pooled.append(z)
    z = np.concatenate(pooled)
    assert z.size > 3_900_000  # every conv weight of B0
    assert abs(z.mean()) < 0.002
    assert abs(z.std() - 1) < 0.002
    # A truncated normal would stop at 2 sd; the original's normal does not.
    assert np.abs(z).max() > 4.0
    assert np.mean(np.abs(z) > 2) == pytest.approx(0.0455, abs=0.002)


def test_depthwise_fan_out_is_kernel_area(b0):
    for path, k, channels in [("blocks_15/depthwise_conv/kernel", 3, 1152),
                              ("blocks_11/depthwise_conv/kernel", 5, 672)]:
        w = b0.get_layer(path.split("/")[0]).depthwise_conv.kernel.numpy()
        assert w.shape == (k, k, channels, 1)
        assert w.std() == pytest.approx(np.sqrt(2 / (k * k)), rel=0.03), path


def test_dense_kernel_is_uniform_with_output_fan(b0):
    w = b0.get_layer("logits").kernel.numpy()
    bound = 1 / np.sqrt(1000)  # K = 1000; the input size would give 1/sqrt(1280)
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.999 * bound
    assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.01)
    np.testing.assert_array_equal(b0.get_layer("logits").bias.numpy(), 0)


def test_dense_bound_depends_on_the_number_of_classes():
    model = build_model("efficientnet-b0", 10, **TINY)[0]
    w = model.get_layer("logits").kernel.numpy()  # [320, 10]
    bound = 1 / np.sqrt(10)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound


def test_batch_norm_and_bias_initial_values(b0):
    bns = [l for l in _sublayers(b0) if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == 49  # 98 moving statistics / 2
    for bn in bns:
        assert bn.momentum == 0.99 and bn.epsilon == 1e-3, bn.path
        assert bn.center and bn.scale
        np.testing.assert_array_equal(bn.gamma.numpy(), 1)
        np.testing.assert_array_equal(bn.beta.numpy(), 0)
        np.testing.assert_array_equal(bn.moving_mean.numpy(), 0)
        np.testing.assert_array_equal(bn.moving_variance.numpy(), 1)
    for v in b0.weights:
        if v.path.endswith("/bias"):
            np.testing.assert_array_equal(v.numpy(), 0)


def test_all_convolutions_use_same_padding_and_no_bias_except_se(b0):
    convs = [l for l in _sublayers(b0)
             if isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    # stem + 5 per block (expand, depthwise, SE reduce/expand, project; block 0
    # has no expansion) + head.
    assert len(convs) == 1 + 16 * 5 - 1 + 1
    for layer in convs:
        assert layer.padding == "same", layer.path
        assert layer.use_bias == (layer.name in ("se_reduce", "se_expand")), layer.path


@pytest.mark.parametrize("size, pad", [(32, (0, 1)), (33, (1, 1))])
def test_stem_padding_is_tf_same(b0, size, pad):
    """Stride 2, even input: one extra pixel at the bottom/right only."""
    stem_conv = b0.get_layer("stem").conv
    x = np.random.default_rng(4).normal(size=(1, size, size, 3)).astype("float32")
    padded = np.pad(x, ((0, 0), pad, pad, (0, 0)))
    reference = tf.nn.conv2d(padded, stem_conv.kernel, strides=2, padding="VALID")
    out = stem_conv(x)
    assert out.shape[1] == -(-size // 2)
    np.testing.assert_allclose(np.asarray(out), reference.numpy(), atol=1e-5)


@pytest.mark.parametrize("size, pad", [(8, (1, 2)), (9, (2, 2))])
def test_depthwise_stride_two_padding_is_tf_same(b0, size, pad):
    depthwise = b0.get_layer("blocks_3").depthwise_conv  # 5x5, stride 2, 144 channels
    assert depthwise.strides == (2, 2) and depthwise.kernel_size == (5, 5)
    x = np.random.default_rng(5).normal(size=(1, size, size, 144)).astype("float32")
    padded = np.pad(x, ((0, 0), pad, pad, (0, 0)))
    reference = tf.nn.depthwise_conv2d(padded, depthwise.kernel, strides=[1, 2, 2, 1],
                                       padding="VALID")
    np.testing.assert_allclose(np.asarray(depthwise(x)), reference.numpy(), atol=1e-5)


# --- keras.applications equivalence ------------------------------------------------------------

def _calibrated_keras_model(constructor, size, images, rng):
    """A keras.applications EfficientNet with non-trivial BN statistics.

    Fresh BN statistics (mean 0, variance 1) shrink the head activations to
    ~1e-5, so any logits would agree within 1e-4. Instead: random gamma, beta
    and biases, then one training pass with momentum 0 (and dropout off) so
    that the moving statistics equal the batch statistics of `images`.
    """
    model = constructor(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    # weights=None leaves the Normalization layer at mean 0 / variance 1; give
    # it the ImageNet statistics that the nst model hard-codes.
    # By type: Keras numbers layer names per session ("normalization_1", ...).
    norm = next(l for l in model.layers if isinstance(l, keras.layers.Normalization))
    norm.set_weights([IMAGENET_MEAN.astype("float32"),
                      (IMAGENET_STD ** 2).astype("float32"), np.array(0, "int64")])
    norm.finalize_state()  # the layer caches mean/variance; set_weights alone is ignored
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    drops = [l for l in model.layers if isinstance(l, keras.layers.Dropout)]
    for bn in bns:
        bn.gamma.assign(rng.uniform(0.8, 1.2, bn.gamma.shape).astype("float32"))
        bn.beta.assign(rng.normal(0, 0.1, bn.beta.shape).astype("float32"))
    for v in model.weights:
        if v.path.endswith("/bias"):
            v.assign(rng.normal(0, 0.1, v.shape).astype("float32"))
    saved = [(bn, bn.momentum) for bn in bns] + [(d, d.rate) for d in drops]
    try:
        for bn in bns:
            bn.momentum = 0.0
        for d in drops:
            d.rate = 0.0
        model(images, training=True)
    finally:
        for bn, momentum in saved[:len(bns)]:
            bn.momentum = momentum
        for d, rate in saved[len(bns):]:
            d.rate = rate
    return model


@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnet-b2"])
def test_matches_keras_applications(name):
    size = 96  # every stride-2 input is even, where Keras' explicit padding equals SAME
    rng = np.random.default_rng(6)
    images = _images(8, size, seed=6)
    theirs = _calibrated_keras_model(KERAS_APPS[name], size, images, rng)
    ours = build_model(name, 1000, image_size=size)[0]
    report = convert.load_keras_applications(ours, theirs)
    assert report.num_loaded == len(ours.weights)

    their_probe = keras.Model(theirs.input, [theirs.get_layer("avg_pool").output,
                                             theirs.get_layer("predictions").output])
    our_probe = keras.Model(ours.input, [ours.get_layer("avg_pool").output,
                                         ours.get_layer("logits").output])
    # Compared on the calibration images: there the BN statistics are well
    # conditioned by construction, so float32 round-off is not amplified.
    their_feat, their_logits = (np.asarray(t) for t in their_probe(images, training=False))
    our_feat, our_logits = (np.asarray(t) for t in our_probe(images, training=False))
    assert our_logits.std() > 0.05 and our_feat.std() > 0.05, "comparison would be vacuous"
    assert np.abs(our_feat - their_feat).max() <= 1e-4
    assert np.abs(our_logits - their_logits).max() <= 1e-4
    # The model's output is exactly the probed logits.
    np.testing.assert_array_equal(np.asarray(ours(images, training=False)), our_logits)
    del theirs, ours
    _free_memory()


def test_keras_applications_mismatch_is_rejected():
    theirs = keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3))
    ours = build_model("efficientnet-b1", 1000, image_size=64)[0]
    before = [v.numpy().copy() for v in ours.weights[:5]]
    with pytest.raises(convert.CheckpointMismatchError):
        convert.load_keras_applications(ours, theirs)
    for v, b in zip(ours.weights[:5], before):
        np.testing.assert_array_equal(v.numpy(), b)


# --- parameter and tensor counts ---------------------------------------------------------------

def _param_case(name):
    slow = name not in ("efficientnet-b0", "efficientnet-b1", "efficientnet-b2")
    return pytest.param(name, marks=pytest.mark.slow) if slow else name


@pytest.mark.parametrize("name", [_param_case(n) for n in KERAS_APPS])
def test_parameter_counts(name):
    ours = build_model(name, 1000)[0]
    ours_trainable = _num_params(ours.trainable_weights)
    theirs = KERAS_APPS[name](weights=None)
    assert ours_trainable == _num_params(theirs.trainable_weights)
    assert ours_trainable == pytest.approx(SPEC_PARAMS_M[name] * 1e6, rel=0.01)
    n_bn_stats = sum(1 for v in ours.weights if "moving_" in v.path)
    assert len(ours.non_trainable_weights) == n_bn_stats
    if name in SPEC_TENSORS:
        assert (len(ours.trainable_weights), n_bn_stats) == SPEC_TENSORS[name]
        assert len(ours.weights) == sum(SPEC_TENSORS[name])
    del ours, theirs
    _free_memory()


def test_b0_tensor_counts(b0):
    assert len(b0.weights) == 311
    assert len(b0.trainable_weights) == 213
    assert len(b0.non_trainable_weights) == 98
    assert all("moving_" in v.path for v in b0.non_trainable_weights)


@pytest.mark.slow
def test_l2():
    model = build_model("efficientnet-l2", 1000, image_size=None)[0]
    try:
        assert model.config.resolution == 800
        assert _num_params(model.trainable_weights) == pytest.approx(480e6, rel=0.01)
        assert len(model.weights) == 1654
        assert len(model.trainable_weights) == 1134
        assert len(model.non_trainable_weights) == 520
        logits = np.asarray(model(_images(1, 64), training=False))
        assert logits.shape == (1, 1000)
        assert np.all(np.isfinite(logits))
    finally:
        del model
        _free_memory()


# --- freeze_layers -------------------------------------------------------------------------------

def _frozen_prefixes(num_blocks):
    return ("stem/",) + tuple(f"blocks_{i}/" for i in range(num_blocks))


def test_freeze_layers_trainability():
    model = build_model("efficientnet-b0", 10, **NOISY)[0]
    all_trainable = {v.path for v in model.trainable_weights}
    model.freeze_layers(2)
    trainable = {v.path for v in model.trainable_weights}
    frozen = _frozen_prefixes(2)
    assert trainable == {p for p in all_trainable if not p.startswith(frozen)}
    assert any(p.startswith("blocks_1/") for p in all_trainable)
    assert any(p.startswith("blocks_2/") for p in trainable)
    assert any(p.startswith("head/") for p in trainable)
    assert "logits/kernel" in trainable
    assert not model.get_layer("stem").trainable
    assert [b.trainable for b in model.block_layers] == [False, False] + [True] * 8


def test_freeze_layers_zero_negative_and_too_large():
    model = build_model("efficientnet-b0", 10, **NOISY)[0]
    n_trainable = len(model.trainable_weights)
    model.freeze_layers(-1)
    assert len(model.trainable_weights) == n_trainable
    with pytest.raises(ValueError, match="10 blocks"):
        model.freeze_layers(11)
    assert len(model.trainable_weights) == n_trainable  # nothing half-frozen
    model.freeze_layers(0)
    assert {v.path for v in model.trainable_weights} == {
        v.path for v in model.weights
        if not v.path.startswith("stem/") and "moving_" not in v.path}
    model.freeze_layers(10)
    assert all(not b.trainable for b in model.block_layers)
    assert model.get_layer("head").trainable


def test_frozen_blocks_run_in_inference_mode():
    model = build_model("efficientnet-b0", 10, stochastic_depth_rate=0.9, **NOISY)[0]
    blocks = model.block_layers
    frozen_sd = [b for b in blocks[:5] if b.stochastic_depth is not None]
    unfrozen_sd = [b for b in blocks[5:] if b.stochastic_depth is not None]
    assert frozen_sd and unfrozen_sd
    model.freeze_layers(5)

    rng = np.random.default_rng(8)
    for block in [model.get_layer("stem")] + blocks[:5]:
        shape = (8,) + tuple(block.input.shape[1:])
        x = rng.normal(size=shape).astype("float32")
        expected = np.asarray(block(x, training=False))
        for _ in range(3):
            np.testing.assert_array_equal(np.asarray(block(x, training=True)), expected)
    # Control: an unfrozen block does change with training=True (BN batch
    # statistics and stochastic depth).
    block = unfrozen_sd[0]
    x = rng.normal(size=(8,) + tuple(block.input.shape[1:])).astype("float32")
    assert np.abs(np.asarray(block(x, training=True))
                  - np.asarray(block(x, training=False))).max() > 1e-3

    # Whole-model training pass: frozen BN statistics stay, the others move.
    before = {v.path: v.numpy().copy() for v in model.non_trainable_weights}
    model(_images(8, 32), training=True)
    for v in model.non_trainable_weights:
        changed = not np.array_equal(v.numpy(), before[v.path])
        if v.path.startswith(_frozen_prefixes(5)):
            assert not changed, v.path
        elif "moving_" in v.path:
            assert changed, v.path


# --- XLA training step (TPU-compatibility proxy) -----------------------------------------------

def test_xla_training_step():
    model = build_model("efficientnet-b0", 10, **TINY)[0]
    optimizer = keras.optimizers.SGD(learning_rate=0.01)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=True)
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    images = tf.constant(_images(4, 32))
    labels = tf.constant([0, 3, 5, 9])
    before = {v.path: v.numpy().copy() for v in model.weights}
    loss = train_step(images, labels)
    assert np.isfinite(loss.numpy())
    assert all(np.all(np.isfinite(v.numpy())) for v in model.weights)
    changed = {v.path for v in model.weights if not np.array_equal(v.numpy(), before[v.path])}
    # Trainable weights moved, and so did the BN moving statistics (updated
    # inside the compiled function).
    for path in ("stem/conv/kernel", "blocks_3/expand_conv/kernel", "head/conv/kernel",
                 "logits/kernel", "logits/bias", "blocks_0/depthwise_bn/moving_mean"):
        assert path in changed
    assert len(changed) > 0.9 * len(model.weights)
    assert np.isfinite(train_step(images, labels).numpy())  # re-runs the compiled step


# --- bad input ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    return _seeded_build("efficientnet-b0", 10, **TINY)


@pytest.mark.parametrize("shape, expected", [
    ((2, 32, 32, 1), r"\[batch, height, width, 3\]"),
    # Keras' own input check answers first here, also naming the expected shape.
    ((2, 32, 32, 4), r"\(None, 32, 32, 3\)"),
    ((32, 32, 3), r"\(None, 32, 32, 3\)"),
    ((2, 48, 48, 3), r"\(None, 32, 32, 3\)"),
    ((2, 32, 32), r"\(None, 32, 32, 3\)"),
])
def test_bad_image_shapes(tiny, shape, expected):
    with pytest.raises(ValueError, match=expected):
        tiny(np.zeros(shape, "float32"))


@pytest.mark.parametrize("shape, expected", [
    ((2, 48, 48, 1), r"\[batch, height, width, 3\]"),
    ((2, 48, 48), r"\(None, None, None, 3\)"),
])
def test_any_size_model_still_checks_channels_and_rank(shape, expected):
    model = build_model("efficientnet-b0", 10, image_size=None, **TINY)[0]
    with pytest.raises(ValueError, match=expected):
        model(np.zeros(shape, "float32"))


def test_any_size_model_accepts_several_sizes():
    model = build_model("efficientnet-b0", 10, image_size=None, **TINY)[0]
    assert model.input_shape == (None, None, None, 3)
    for size in (32, 48, 33):
        logits = np.asarray(model(_images(2, size), training=False))
        assert logits.shape == (2, 10) and np.all(np.isfinite(logits))


def test_build_model_from_config():
    cfg = config_lib.get_config("efficientnet-b0", num_classes=7, **TINY)
    model, resolution = build_model(cfg)
    assert model.output_shape == (None, 7) and resolution == 32
    assert build_model(cfg, num_classes=7)[0].output_shape == (None, 7)
    with pytest.raises(ValueError, match="num_classes"):
        build_model(cfg, num_classes=10)
    with pytest.raises(ValueError):
        build_model(cfg, width=0.5)
    with pytest.raises(ValueError):
        build_model(cfg, small_image=True)


def test_build_model_bad_arguments():
    with pytest.raises(ValueError, match="efficientnet-b0"):
        build_model("efficientnet-b10", 10)
    for bad in (0, -3, 1.5):
        with pytest.raises(ValueError, match="num_classes"):
            build_model("efficientnet-b0", bad, **TINY)


# --- mixed precision -----------------------------------------------------------------------------

def test_mixed_bfloat16_policy():
    try:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        model = build_model("efficientnet-b0", 10, **TINY)[0]
        assert model.get_layer("stem").compute_dtype == "bfloat16"
        assert model.get_layer("blocks_3").compute_dtype == "bfloat16"
        assert all(v.dtype == "float32" for v in model.weights)
        x = _images(2, 32)
        for training in (False, True):
            logits = model(x, training=training)
            assert keras.backend.standardize_dtype(logits.dtype) == "float32"
            assert np.all(np.isfinite(np.asarray(logits)))
        probe = keras.Model(model.input, [model.get_layer("normalize").output,
                                          model.get_layer("head").output])
        normalized, head = probe(x)
        # Normalised in float32 before the bfloat16 body.
        assert keras.backend.standardize_dtype(normalized.dtype) == "float32"
        assert keras.backend.standardize_dtype(head.dtype) == "bfloat16"
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert build_model("efficientnet-b0", 10, **TINY)[0].get_layer("stem").compute_dtype == (
        "float32")
