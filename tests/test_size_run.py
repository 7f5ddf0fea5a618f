"""nst.sizing: memory parts, slot counts, the activation rule, largest batch, the
device table and bad input (cheap: tiny models only)."""

import math

import keras
import pytest

import nst  # noqa: F401
from nst.models import config as model_config
from nst.models.efficientnet import build_model
from nst.sizing import devices, estimate, memory, recipe


def _digits():
    return build_model("efficientnet-b0", 10, width=0.25, depth=0.25, small_image=True,
                       normalization="svhn")[0]


def test_parameter_memory_is_count_params_times_four():
    model = _digits()
    trainable = sum(math.prod(v.shape) for v in model.trainable_variables)
    fixed = memory.fixed_bytes(model.count_params(), trainable, "rmsprop")
    assert fixed["parameters"] == 4 * model.count_params()
    assert fixed["ema"] == 4 * model.count_params()
    assert fixed["gradients"] == 4 * trainable
    assert fixed["slots"] == 2 * 4 * trainable


@pytest.mark.parametrize("name,slots", [("rmsprop", 2), ("momentum", 1), ("sgd", 0),
                                        ("adam", 2)])
def test_slot_counts(name, slots):
    assert memory.slot_count(name) == slots


def test_rmsprop_slots_match_the_optimizer():
    from nst.train.optimizer import TF1RMSProp
    model = _digits()
    opt = TF1RMSProp(learning_rate=0.1)
    opt.build(model.trainable_variables)
    assert len(opt.mean_squares) + len(opt.momentums) == (
        memory.slot_count(recipe.OPTIMIZER) * len(model.trainable_variables))


def test_activation_rule_on_a_two_layer_model():
    # conv (keeps its 8x8x3 input) -> BN (keeps its 8x8x4 input and output) -> dense.
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(5)(x)
    model = keras.Model(inputs, outputs)
    # Flatten's output is a reshape of BN's: a different tensor, kept by the dense.
    expected = 8 * 8 * 3 + 8 * 8 * 4 + 8 * 8 * 4 + 8 * 8 * 4
    assert memory.activation_bytes_per_row(model, 8, "float32") == 4 * expected
    assert memory.activation_bytes_per_row(model, 8, "bfloat16") == 2 * expected


def test_largest_batch_boundary_and_monotone():
    fixed = {"parameters": 100}
    no_unlabeled = lambda b: 0  # noqa: E731
    # budget 0.9 x 1000 = 900: 100 + 8 x 100 = 900 fits, 9 does not.
    assert memory.largest_batch(1000, fixed, 100, no_unlabeled) == 8
    assert memory.largest_batch(999, fixed, 100, no_unlabeled) == 7
    assert memory.largest_batch(100, fixed, 100, no_unlabeled) == 0
    with_u = lambda b: 3 * b  # noqa: E731
    sizes = [memory.largest_batch(m, fixed, 10, with_u) for m in range(100, 20000, 997)]
    assert sizes == sorted(sizes) and sizes[-1] > 0
    b = memory.largest_batch(5000, fixed, 10, with_u)
    assert memory.step_bytes(fixed, b, 3 * b, 10) <= 4500 < memory.step_bytes(
        fixed, b + 1, 3 * b + 3, 10)


def test_device_table_complete():
    for name in ["tpu-v3", "tpu-v4", "tpu-v5e", "tpu-v5p", "a100-40gb", "a100-80gb",
                 "h100", "h200"]:
        row = devices.DEVICES[name]
        assert row["memory_bytes"] > 0 and row["bf16_tflops"] > 0 and row["fp32_tflops"] > 0
        assert row["source"]
    assert devices.DEVICES["tpu-v3"]["memory_bytes"] == 16 * 2 ** 30  # per core
    cpu = devices.get("cpu", 200.0)
    assert cpu["fp32_tflops"] == pytest.approx(0.2) and cpu["memory_bytes"] > 0


def test_digits_recipe_estimate():
    jobs = recipe.from_gin("digits/online.gin")
    student = [j for j in jobs if j.name == "student-1"][0]
    assert (student.image_size, student.global_batch, student.unlabel_ratio) == (32, 32, 3.0)
    assert student.teacher is not None
    e = estimate.estimate(student, "cpu", 1, 1.0, cpu_gflops=100.0)
    assert (e.labeled, e.unlabeled) == (32, 96)
    assert e.fits and e.largest_batch > 32 and e.step_seconds > 0
    assert e.days == pytest.approx(e.step_seconds * 600 / 86400)


@pytest.mark.parametrize("call,flag", [
    (lambda: devices.get("tpu-v9"), "--device"),
    (lambda: recipe.from_model("efficientnet-b99", None, 8, "float32"), "--model_name"),
    (lambda: recipe.from_model("efficientnet-b0", 0, 8, "float32"), "--image_size"),
    (lambda: recipe.from_model("efficientnet-b0", -3, 8, "float32"), "--image_size"),
    (lambda: recipe.from_gin("no/such/recipe.gin"), "--gin_file"),
])
def test_bad_input_names_the_flag(call, flag):
    with pytest.raises(ValueError, match=flag):
        call()


def test_model_names_are_known():
    assert "efficientnet-l2" in model_config.model_names()
