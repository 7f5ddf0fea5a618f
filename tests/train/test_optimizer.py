"""TF1 RMSProp semantics (spec §5.5) against a NumPy implementation."""

import numpy as np
import pytest

import keras
import tensorflow as tf

from nst.train.optimizer import TF1RMSProp
from nst.train.schedule import NoisyStudentSchedule
from nst.testing import two_cpu_strategy

W0 = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
GRADS = [np.array([[0.5, -0.1], [2.0, 0.0]], np.float32),
         np.array([[0.3, 0.4], [-1.0, 1e-3]], np.float32),
         np.array([[-0.2, 0.0], [0.5, 5.0]], np.float32),
         np.array([[1.0, 1.0], [1.0, 1.0]], np.float32),
         np.array([[0.0, -3.0], [0.1, 0.2]], np.float32)]


def np_tf1_rmsprop(w, grads, lr, rho=0.9, momentum=0.9, eps=1e-3):
    """The TF1 RMSPropOptimizer update, slots ms = 1 and mom = 0 at the start."""
    w = w.astype(np.float64)
    ms, mom = np.ones_like(w), np.zeros_like(w)
    for g in grads:
        ms = rho * ms + (1 - rho) * g ** 2
        mom = momentum * mom + lr * g / np.sqrt(ms + eps)
        w = w - mom
    return w, ms, mom


def run(optimizer, grads, w0=W0):
    variable = keras.Variable(w0, name="w")
    optimizer.build([variable])
    for g in grads:
        optimizer.apply([tf.constant(g)], [variable])
    return variable


def test_matches_tf1_formula_over_several_steps():
    optimizer = TF1RMSProp(learning_rate=0.1)
    variable = run(optimizer, GRADS)
    want_w, want_ms, want_mom = np_tf1_rmsprop(W0, GRADS, 0.1)
    np.testing.assert_allclose(variable.numpy(), want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(optimizer.mean_squares[0].numpy(), want_ms, rtol=1e-5)
    np.testing.assert_allclose(optimizer.momentums[0].numpy(), want_mom, rtol=1e-5, atol=1e-7)
    assert int(optimizer.iterations) == len(GRADS)


@pytest.mark.parametrize("fused", [True, False])
def test_fused_and_keras_ops_paths_agree(fused):
    optimizer = TF1RMSProp(learning_rate=0.1, fused=fused)
    variable = run(optimizer, GRADS)
    want_w, want_ms, want_mom = np_tf1_rmsprop(W0, GRADS, 0.1)
    np.testing.assert_allclose(variable.numpy(), want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(optimizer.mean_squares[0].numpy(), want_ms, rtol=1e-5)
    np.testing.assert_allclose(optimizer.momentums[0].numpy(), want_mom, rtol=1e-5, atol=1e-7)


def test_slot_initial_values():
    optimizer = TF1RMSProp(learning_rate=0.1)
    variable = keras.Variable(W0, name="w")
    optimizer.build([variable])
    np.testing.assert_array_equal(optimizer.mean_squares[0].numpy(), np.ones_like(W0))
    np.testing.assert_array_equal(optimizer.momentums[0].numpy(), np.zeros_like(W0))
    assert optimizer.mean_squares[0].shape == variable.shape


def test_differs_from_keras_rmsprop():
    ours = run(TF1RMSProp(learning_rate=0.1), GRADS[:1]).numpy()
    theirs = run(keras.optimizers.RMSprop(learning_rate=0.1), GRADS[:1]).numpy()
    # Keras: ms starts at 0 -> first step lr * g / sqrt(0.1 g^2 + 1e-7), ~3.16 lr sign(g).
    g = GRADS[0].astype(np.float64)
    np.testing.assert_allclose(theirs, W0 - 0.1 * g / np.sqrt(0.1 * g ** 2 + 1e-7), rtol=1e-5)
    np.testing.assert_allclose(ours, np_tf1_rmsprop(W0, GRADS[:1], 0.1)[0], rtol=1e-5)
    moved = np.abs(g) > 0
    assert np.all(np.abs(ours - theirs)[moved] > 1e-3)


def test_keras_extras_off_and_config_round_trip():
    optimizer = TF1RMSProp(learning_rate=0.25)
    assert optimizer.weight_decay is None
    assert optimizer.clipnorm is None and optimizer.clipvalue is None
    assert optimizer.global_clipnorm is None
    assert optimizer.use_ema is False
    assert (optimizer.rho, optimizer.momentum, optimizer.epsilon) == (0.9, 0.9, 1e-3)
    config = optimizer.get_config()
    clone = TF1RMSProp.from_config(config)
    assert clone.get_config() == config
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, TF1RMSProp)


def test_schedule_learning_rate_and_config():
    schedule = NoisyStudentSchedule(0.016, 128, 69257, 109474, final_base_lr=2e-4)
    optimizer = TF1RMSProp(learning_rate=schedule)
    variable = run(optimizer, GRADS[:3])
    # Steps 0, 1, 2 use lr = peak * s / W.
    w = W0.astype(np.float64)
    ms, mom = np.ones_like(w), np.zeros_like(w)
    for step, g in enumerate(GRADS[:3]):
        lr = schedule.peak_learning_rate * step / schedule.warmup_steps
        ms = 0.9 * ms + 0.1 * g ** 2
        mom = 0.9 * mom + lr * g / np.sqrt(ms + 1e-3)
        w = w - mom
    np.testing.assert_allclose(variable.numpy(), w, rtol=1e-6)
    clone = TF1RMSProp.from_config(optimizer.get_config())
    assert isinstance(clone._learning_rate, NoisyStudentSchedule)
    assert clone._learning_rate.get_config() == schedule.get_config()


def test_checkpoint_round_trip_of_slots(tmp_path):
    optimizer = TF1RMSProp(learning_rate=0.1)
    variable = run(optimizer, GRADS[:3])
    path = tf.train.Checkpoint(optimizer=optimizer, w=variable).save(str(tmp_path / "ckpt"))

    # Built before the restore (the usual resume order) ...
    fresh = TF1RMSProp(learning_rate=0.1)
    fresh_var = keras.Variable(np.zeros_like(W0), name="w")
    fresh.build([fresh_var])
    tf.train.Checkpoint(optimizer=fresh, w=fresh_var).restore(path).assert_consumed()
    # ... or after it (deferred restoration when the slots are created).
    late = TF1RMSProp(learning_rate=0.1)
    status = tf.train.Checkpoint(optimizer=late).restore(path)
    late_var = keras.Variable(variable.numpy(), name="w")
    late.build([late_var])
    status.expect_partial()

    for other in (fresh, late):
        np.testing.assert_array_equal(other.mean_squares[0].numpy(),
                                      optimizer.mean_squares[0].numpy())
        np.testing.assert_array_equal(other.momentums[0].numpy(), optimizer.momentums[0].numpy())
        assert int(other.iterations) == 3
    np.testing.assert_array_equal(fresh_var.numpy(), variable.numpy())
    # Training continues identically.
    for opt, var in ((optimizer, variable), (fresh, fresh_var)):
        opt.apply([tf.constant(GRADS[3])], [var])
    np.testing.assert_array_equal(fresh_var.numpy(), variable.numpy())


def test_xla_compiled_step():
    optimizer = TF1RMSProp(learning_rate=0.1)
    variable = keras.Variable(W0, name="w")
    optimizer.build([variable])

    @tf.function(jit_compile=True)
    def step(g):
        optimizer.apply([g], [variable])

    for g in GRADS:
        step(tf.constant(g))
    np.testing.assert_allclose(variable.numpy(), np_tf1_rmsprop(W0, GRADS, 0.1)[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_mirrored_strategy_two_replicas(fused):
    strategy = two_cpu_strategy()
    with strategy.scope():
        variable = keras.Variable(W0, name="w")
        optimizer = TF1RMSProp(learning_rate=0.1, fused=fused)
        optimizer.build([variable])

    @tf.function
    def step(g):
        def replica_step():
            # Replica i sees gradient (i + 1) * g; Keras sums them: 3 g.
            ctx = tf.distribute.get_replica_context()
            scale = tf.cast(ctx.replica_id_in_sync_group + 1, tf.float32)
            optimizer.apply([g * scale], [variable])
        strategy.run(replica_step)

    for g in GRADS[:3]:
        step(tf.constant(g))
    want = np_tf1_rmsprop(W0, [3 * g for g in GRADS[:3]], 0.1)
    for component in variable.value.values:
        np.testing.assert_allclose(component.numpy(), want[0], rtol=1e-5, atol=1e-6)
    for component in optimizer.mean_squares[0].value.values:
        np.testing.assert_allclose(component.numpy(), want[1], rtol=1e-5)
    assert optimizer.iterations.numpy() == 3
