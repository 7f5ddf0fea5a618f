"""The §5.6 learning-rate schedule: table rows, warm-up, staircase, offsets."""

import math

import numpy as np
import pytest

import keras
import tensorflow as tf

from nst.train.schedule import NoisyStudentSchedule, resolve_train_steps

IMAGENET_N = 1_281_167


def lr(schedule, step):
    return float(schedule(step))


def svhn():
    """SVHN run.sh: N = 69,257, B = 128, final_base_lr 2e-4."""
    return NoisyStudentSchedule(base_learning_rate=0.016, train_batch_size=128,
                                num_train_images=69_257, train_steps=109_474,
                                final_base_lr=2e-4)


def imagenet(train_ratio):
    steps, last = resolve_train_steps(109_474, -1, train_ratio)
    return NoisyStudentSchedule(base_learning_rate=0.016, train_batch_size=4096,
                                num_train_images=IMAGENET_N, train_steps=steps,
                                train_ratio=train_ratio, train_last_step_num=last)


def test_svhn_row():
    s = svhn()
    assert s.steps_per_epoch == pytest.approx(541.07, abs=0.005)
    assert s.peak_learning_rate == pytest.approx(0.008, rel=1e-12)
    assert s.decay_epochs == pytest.approx(1.3716, abs=5e-5)
    assert s.decay_steps == pytest.approx(742.1, abs=0.05)
    assert s.warmup_steps == 2705
    assert float(s.epoch(2705)) == pytest.approx(2705 / s.steps_per_epoch, rel=1e-6)
    last = lr(s, 109_474 - 1)
    assert last == pytest.approx(9.09e-5, rel=1e-3)
    assert last / (128 / 256) == pytest.approx(1.8e-4, rel=0.02)  # per-256, a bit below 2e-4
    assert last < 2e-4 * 128 / 256


@pytest.mark.parametrize("train_ratio, steps, decay_epochs", [(2, 218_948, 4.8),
                                                               (1, 109_474, 2.4)])
def test_imagenet_rows(train_ratio, steps, decay_epochs):
    s = imagenet(train_ratio)
    assert s.train_steps == steps and s.step_offset == 0
    assert s.steps_per_epoch == pytest.approx(312.79, abs=0.01)  # 312.785
    assert s.peak_learning_rate == pytest.approx(0.256, rel=1e-12)
    assert s.decay_epochs == pytest.approx(decay_epochs, rel=1e-12)
    assert s.warmup_steps == 1563
    assert lr(s, steps - 1) == pytest.approx(3.09e-3, rel=2e-3)


# The schedule runs in float32 like TF1's exponential_decay: 0.97 as a float32
# is 0.97 + 2.9e-8, so 0.97**k drifts by ~3e-8 * k relative (~4e-6 at k=145).
POW_RTOL = 1e-5


def np_lr(s, step):
    """The §5.6 formula in Python doubles."""
    t = step + s.step_offset
    if t < s.warmup_steps:
        return s.peak_learning_rate * t / s.warmup_steps
    return s.peak_learning_rate * 0.97 ** math.floor(t / (s.steps_per_epoch * s.decay_epochs))


def test_matches_formula_over_the_run():
    for s in (svhn(), imagenet(2), imagenet(1)):
        for step in list(range(0, s.train_steps, 997)) + [s.train_steps - 1]:
            assert lr(s, step) == pytest.approx(np_lr(s, step), rel=POW_RTOL, abs=1e-12)


def test_warmup_is_linear_from_exactly_zero_then_drops():
    s = imagenet(1)
    assert lr(s, 0) == 0.0
    warm = np.array([lr(s, k) for k in range(0, s.warmup_steps, 50)])
    np.testing.assert_allclose(warm, s.peak_learning_rate * np.arange(0, s.warmup_steps, 50)
                               / s.warmup_steps, rtol=1e-6)
    assert lr(s, s.warmup_steps - 1) == pytest.approx(
        s.peak_learning_rate * (s.warmup_steps - 1) / s.warmup_steps, rel=1e-6)
    # The decay count started at step 0: floor(5 / 2.4) = 2 decays at once.
    assert lr(s, s.warmup_steps) == pytest.approx(0.9409 * s.peak_learning_rate, rel=1e-6)
    # With 4.8-epoch decay: floor(5 / 4.8) = 1.
    s2 = imagenet(2)
    assert lr(s2, s2.warmup_steps) == pytest.approx(0.97 * s2.peak_learning_rate, rel=1e-6)


def test_staircase():
    s = imagenet(1)
    d = s.decay_steps  # 750.69 steps
    for k in (3, 10, 100):
        first = math.ceil(k * d)  # first step with k decays
        assert lr(s, first - 1) == pytest.approx(s.peak_learning_rate * 0.97 ** (k - 1),
                                                 rel=POW_RTOL)
        assert lr(s, first) == pytest.approx(s.peak_learning_rate * 0.97 ** k, rel=POW_RTOL)
        assert lr(s, first) / lr(s, first - 1) == pytest.approx(0.97, rel=1e-6)
        assert lr(s, first + int(d) - 1) == lr(s, first)  # flat within a stair


def test_train_last_step_num_offset():
    full = svhn()
    steps, last = resolve_train_steps(109_474, 1000, 1)
    tail = NoisyStudentSchedule(0.016, 128, 69_257, steps, final_base_lr=2e-4,
                                train_last_step_num=last)
    assert tail.step_offset == 108_474
    for step in (0, 1, 500, 999):
        assert lr(tail, step) == lr(full, step + 108_474)
    # A tail shorter than the schedule skips the warm-up.
    assert lr(tail, 0) > 0
    for offset_free in (None, -1, 109_474):
        same = NoisyStudentSchedule(0.016, 128, 69_257, 109_474, final_base_lr=2e-4,
                                    train_last_step_num=offset_free)
        assert same.step_offset == 0


def test_resolve_train_steps():
    assert resolve_train_steps(109_474, -1, 1) == (109_474, 109_474)
    assert resolve_train_steps(109_474, None, 1) == (109_474, 109_474)
    assert resolve_train_steps(109_474, -1, 2) == (218_948, 218_948)
    assert resolve_train_steps(1000, 300, 1.5) == (1500, 450)
    assert resolve_train_steps(1001, -1, 1.5) == (1501, 1501)  # truncated
    assert resolve_train_steps(1001, 333, 0.5) == (500, 166)


def test_label_data_sample_prob_scales_batch():
    s = NoisyStudentSchedule(0.016, 4096, IMAGENET_N, 100_000, label_data_sample_prob=0.25)
    assert s.steps_per_epoch == pytest.approx(IMAGENET_N / 1024)
    assert s.peak_learning_rate == pytest.approx(0.064)
    assert s.warmup_steps == int(5 * IMAGENET_N / 1024)


def test_tensor_steps_in_tf_function():
    s = svhn()
    step_var = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def at(step):
        return s(step)

    @tf.function
    def at_variable():
        return s(step_var)

    for step in (0, 17, 2704, 2705, 50_000, 109_473):
        # Graph rewrites may reorder peak * s / W: equal up to float32 rounding.
        want = pytest.approx(lr(s, step), rel=1e-6)
        assert float(at(tf.constant(step, tf.int64))) == want
        assert float(at(tf.constant(step, tf.int32))) == want
        step_var.assign(step)
        assert float(at_variable()) == want
        assert float(at(tf.constant(step, tf.int64))) == pytest.approx(np_lr(s, step),
                                                                       rel=POW_RTOL)
    assert s(tf.constant(5)).dtype == tf.float32


def test_config_round_trip_and_errors():
    s = NoisyStudentSchedule(0.016, 128, 69_257, 109_474, label_data_sample_prob=0.5,
                             train_ratio=1.0, final_base_lr=2e-4, train_last_step_num=5000)
    clone = NoisyStudentSchedule.from_config(s.get_config())
    assert clone.get_config() == s.get_config()
    assert lr(clone, 123) == lr(s, 123)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
    assert isinstance(restored, NoisyStudentSchedule)
    with pytest.raises(ValueError, match="final_base_lr"):
        NoisyStudentSchedule(0.016, 128, 69_257, 109_474, final_base_lr=0.02)
    with pytest.raises(ValueError, match="warm-up"):
        NoisyStudentSchedule(0.016, 128, 69_257, 100, final_base_lr=2e-4)
    with pytest.raises(ValueError, match="label_data_sample_prob"):
        NoisyStudentSchedule(0.016, 128, 69_257, 100, label_data_sample_prob=0.0)
