"""Weight EMA (spec §5.7): formula, decay ramp, BN statistics, swaps,
checkpoints and MirroredStrategy."""

import numpy as np
import pytest

import keras
import tensorflow as tf

from nst.models import saving
from nst.models.efficientnet import build_model
from nst.train.ema import ExponentialMovingAverage
from nst.train.optimizer import TF1RMSProp
from nst.testing import two_cpu_strategy

IMAGE_SIZE = 32


def tiny_model():
    model, _ = build_model("efficientnet-b0", 10, small_image=True, width=0.25, depth=0.25)
    return model


def images(count=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, IMAGE_SIZE, IMAGE_SIZE, 3)
                                               ).astype(np.float32)


def values(model):
    return {v.path: v.numpy().copy() for v in model.weights}


def perturb(model, rng):
    for v in model.weights:
        v.assign(v.numpy() + rng.normal(0, 0.1, tuple(v.shape)).astype(np.float32))


def np_decay(decay, t):
    return min(decay, (1.0 + t) / (10.0 + t))


def test_values_after_three_updates_follow_formula():
    model = tiny_model()
    ema = ExponentialMovingAverage(model, decay=0.9999)
    rng = np.random.default_rng(0)
    expected = values(model)  # shadows start at the creation-time values
    for t in (1, 2, 3):
        perturb(model, rng)
        now = values(model)
        ema.update(t)
        d = np_decay(0.9999, t)  # 2/11, 3/12, 4/13: the ramp, not 0.9999
        expected = {p: expected[p] - (1 - d) * (expected[p] - now[p]) for p in expected}
        shadows = ema.shadows_by_path()
        for path, want in expected.items():
            np.testing.assert_allclose(shadows[path].numpy(), want, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{path} at t={t}")


def test_decay_cap_and_ramp():
    v = keras.Variable(np.zeros(2, np.float32), name="v")
    ema = ExponentialMovingAverage([v], decay=0.5)
    for t, want in ((1, 2 / 11), (8, 0.5), (1000, 0.5)):
        assert float(ema.decay_at(t)) == pytest.approx(want, rel=1e-6)
    assert float(ExponentialMovingAverage([v], 0.9999).decay_at(1000)) == pytest.approx(
        1001 / 1010, rel=1e-6)
    v.assign([1.0, 2.0])
    ema.update(tf.constant(100, tf.int64))  # capped: decay 0.5
    np.testing.assert_allclose(ema.shadow(v).numpy(), [0.5, 1.0], rtol=1e-6)


def test_update_inside_xla_function():
    v = keras.Variable(np.zeros(2, np.float32), name="v")
    ema = ExponentialMovingAverage([v], decay=0.9999)
    step = tf.Variable(0, dtype=tf.int64)

    @tf.function(jit_compile=True)
    def train_step():
        v.assign_add(tf.ones(2))
        step.assign_add(1)
        ema.update(step)

    expected = np.zeros(2)
    for t in (1, 2, 3):
        train_step()
        expected = expected - (1 - np_decay(0.9999, t)) * (expected - t)
    np.testing.assert_allclose(ema.shadow("v").numpy(), expected, rtol=1e-6)


def test_covers_every_weight_including_bn_statistics():
    model = tiny_model()
    ema = ExponentialMovingAverage(model, decay=0.9999)
    shadows = ema.shadows_by_path()
    assert set(shadows) == {v.path for v in model.weights}
    assert "blocks_3/expand_bn/moving_mean" in shadows
    assert "head/bn/moving_variance" in shadows
    assert all(not s.trainable for s in shadows.values())
    # A training-mode call moves the BN statistics; the EMA follows them.
    before = shadows["stem/bn/moving_mean"].numpy().copy()
    model(images(), training=True)
    moved = model.get_layer("stem").bn.moving_mean.numpy()
    assert not np.allclose(moved, before)
    ema.update(1)
    np.testing.assert_allclose(shadows["stem/bn/moving_mean"].numpy(),
                               before - (9 / 11) * (before - moved), rtol=1e-5, atol=1e-7)


def test_swapped_and_copy_to():
    model = tiny_model()
    ema = ExponentialMovingAverage(model, decay=0.9999)
    perturb(model, np.random.default_rng(1))
    ema.update(1)
    raw = values(model)
    shadow_values = {p: s.numpy().copy() for p, s in ema.shadows_by_path().items()}
    x = images()
    with ema.swapped(model) as swapped_model:
        assert swapped_model is model
        for path, value in values(model).items():
            np.testing.assert_array_equal(value, shadow_values[path], err_msg=path)
        ema_logits = model(x, training=False).numpy()
    for path, value in values(model).items():
        np.testing.assert_array_equal(value, raw[path], err_msg=path)
    for path, shadow in ema.shadows_by_path().items():
        np.testing.assert_array_equal(shadow.numpy(), shadow_values[path], err_msg=path)
    # The originals come back after an exception, too.
    with pytest.raises(RuntimeError):
        with ema.swapped(model):
            raise RuntimeError("eval failed")
    np.testing.assert_array_equal(values(model)["logits/kernel"], raw["logits/kernel"])
    # copy_to into another model gives the same EMA predictions.
    other = tiny_model()
    ema.copy_to(other)
    np.testing.assert_allclose(other(x, training=False).numpy(), ema_logits, rtol=1e-5,
                               atol=1e-6)


def test_checkpoint_round_trip_and_load_weights(tmp_path):
    model = tiny_model()
    ema = ExponentialMovingAverage(model, decay=0.9999)
    perturb(model, np.random.default_rng(2))
    ema.update(1)
    model(images(), training=True)  # BN statistics differ from their shadows now
    ema.update(2)
    checkpoint = tf.train.Checkpoint(model=saving.variables_by_path(model),
                                     ema=ema.shadows_by_path())
    path = checkpoint.save(str(tmp_path / "ckpt"))
    shadow_values = {p: s.numpy() for p, s in ema.shadows_by_path().items()}
    assert set(saving.checkpoint_group(path, "ema")) == set(shadow_values)

    fresh = tiny_model()
    report = saving.load_weights(fresh, path, use_ema=True)
    assert report.num_from_ema == len(fresh.weights)
    for v in fresh.weights:
        np.testing.assert_array_equal(v.numpy(), shadow_values[v.path], err_msg=v.path)
    # The raw weights are still there for use_ema=False.
    raw = tiny_model()
    saving.load_weights(raw, path, use_ema=False)
    np.testing.assert_array_equal(raw.get_layer("logits").kernel.numpy(),
                                  model.get_layer("logits").kernel.numpy())
    # And a resumed run restores its shadows.
    other_model = tiny_model()
    resumed = ExponentialMovingAverage(other_model, decay=0.9999)
    tf.train.Checkpoint(ema=resumed.shadows_by_path()).read(path).expect_partial()
    for p, s in resumed.shadows_by_path().items():
        np.testing.assert_array_equal(s.numpy(), shadow_values[p], err_msg=p)


def test_reset_restarts_from_current_weights():
    model = tiny_model()
    ema = ExponentialMovingAverage(model, decay=0.9999)
    perturb(model, np.random.default_rng(3))  # e.g. weights loaded by init_model
    ema.reset()
    for path, value in values(model).items():
        np.testing.assert_array_equal(ema.shadow(path).numpy(), value, err_msg=path)
    ExponentialMovingAverage(model, decay=0.0).reset()  # disabled: no-op


def test_disabled():
    v = keras.Variable(np.ones(2, np.float32), name="v")
    for decay in (0.0, -1.0):
        ema = ExponentialMovingAverage([v], decay=decay)
        assert not ema.enabled
        ema.update(5)  # a no-op, so loops can call it unconditionally
        for request in (ema.shadows_by_path, lambda: ema.shadow("v"),
                        lambda: ema.copy_to([v])):
            with pytest.raises(ValueError, match="disabled"):
                request()
        with pytest.raises(ValueError, match="disabled"):
            with ema.swapped([v]):
                pass


def test_rejects_mismatched_models():
    v = keras.Variable(np.ones(2, np.float32), name="v")
    ema = ExponentialMovingAverage([v], decay=0.99)
    w = keras.Variable(np.ones(2, np.float32), name="w")
    with pytest.raises(ValueError, match="lacks"):
        ema.copy_to([w])
    with pytest.raises(KeyError):
        ema.shadow("w")


def test_mirrored_strategy_cross_replica_update():
    strategy = two_cpu_strategy()
    with strategy.scope():
        model = tiny_model()
        # Training only the classifier keeps the traced step small.
        head = model.get_layer("logits").trainable_weights
        optimizer = TF1RMSProp(learning_rate=0.05)
        optimizer.build(head)
        ema = ExponentialMovingAverage(model, decay=0.9999)
    shadow = ema.shadows_by_path()
    assert isinstance(shadow["logits/kernel"], tf.distribute.DistributedValues)

    @tf.function
    def train_step(x):
        def replica_step(x):
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = tf.reduce_mean(tf.square(logits)) / strategy.num_replicas_in_sync
            optimizer.apply(tape.gradient(loss, head), head)
        strategy.run(replica_step, args=(x,))
        ema.update(optimizer.iterations)  # cross-replica context

    def components(variable):
        if isinstance(variable, keras.Variable):
            variable = variable.value  # the MirroredVariable inside
        return [c.numpy().copy() for c in variable.values]

    paths = ["logits/kernel", "stem/bn/moving_mean", "blocks_1/expand_bn/moving_variance"]
    weights = {v.path: v for v in model.weights}
    expected = {p: components(shadow[p]) for p in paths}
    for t in (1, 2):
        # Different images per replica: BN statistics differ between replicas.
        data = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(images(2, seed=10 * t + ctx.replica_id_in_sync_group)))
        train_step(data)
        d = np_decay(0.9999, t)
        for p in paths:
            now = components(weights[p])
            expected[p] = [e - (1 - d) * (e - n) for e, n in zip(expected[p], now)]
            for got, want in zip(components(shadow[p]), expected[p]):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=p)
    assert not np.allclose(components(weights["logits/kernel"])[0],
                           components(shadow["logits/kernel"])[0])  # the step trained it
    stats = components(weights["stem/bn/moving_mean"])
    assert not np.allclose(stats[0], stats[1])  # per-replica values, each averaged locally

    # Eval-style swap in cross-replica context, per device.
    raw = components(weights["stem/bn/moving_mean"])
    with ema.swapped(model):
        for got, want in zip(components(weights["stem/bn/moving_mean"]),
                             expected["stem/bn/moving_mean"]):
            np.testing.assert_allclose(got, want, rtol=1e-6)
    for got, want in zip(components(weights["stem/bn/moving_mean"]), raw):
        np.testing.assert_array_equal(got, want)


def test_mirrored_strategy_replica_context_update():
    strategy = two_cpu_strategy()
    with strategy.scope():
        v = keras.Variable(np.zeros(3, np.float32), name="v")
        ema = ExponentialMovingAverage([v], decay=0.9999)
    v.assign(np.ones(3, np.float32))

    @tf.function
    def step():
        strategy.run(lambda: ema.update(tf.constant(1, tf.int64)))

    step()
    for component in ema.shadow("v").values:
        np.testing.assert_allclose(component.numpy(), np.full(3, 9 / 11), rtol=1e-6)
