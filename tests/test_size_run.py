"""nst.sizing: memory parts, slot counts, the activation rule, largest batch, the
device table, the per-op roofline and bad input (cheap: tiny models only; nothing
is timed — the CPU-rate arithmetic runs on a fake clock)."""

import math
import subprocess
import sys

import keras
import pytest
import tensorflow as tf

import nst  # noqa: F401
from nst.models import config as model_config
from nst.models import flops as flops_lib
from nst.models.efficientnet import build_model
from nst.sizing import cpu_rates, devices, estimate, graph, memory, recipe, timing


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
    cpu = devices.get("cpu", dict(matmul_gflops=200.0))
    assert cpu["fp32_tflops"] == pytest.approx(0.2) and cpu["memory_bytes"] > 0
    assert cpu["cpu"]["op_overhead_us"] == devices.CPU_RECORDED["op_overhead_us"]


def test_digits_recipe_estimate():
    jobs = recipe.from_gin("digits/online.gin")
    student = [j for j in jobs if j.name == "student-1"][0]
    assert (student.image_size, student.global_batch, student.unlabel_ratio) == (32, 32, 3.0)
    assert student.teacher is not None
    e = estimate.estimate(student, "cpu", 1, 1.0, cpu_rates=dict(matmul_gflops=100.0))
    assert (e.labeled, e.unlabeled) == (32, 96)
    assert e.fits and e.largest_batch > 32 and e.step_seconds > 0
    assert e.days == pytest.approx(e.step_seconds * 600 / 86400)
    # The online teacher's forward is a part of the step; its parts add up.
    parts = e.step_parts
    assert parts["teacher"] > 0 and parts["overhead"] > 0
    assert parts["total"] == pytest.approx(
        parts["forward"] + parts["backward"] + parts["update"] + parts["teacher"]
        + parts["overhead"])


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


# ----------------------------------------------------------------- the timing model

RATES = timing.Rates(matmul=1e9, depthwise=1e8, depthwise_backward=5e7,
                     bandwidth=((1.0, 1e9),), op_seconds=1e-3)
OPS = graph.ForwardWork((
    graph.OpWork("Conv2D", "matmul", flops_per_row=1e6, row_elements=1000, step_elements=500),
    graph.OpWork("DepthwiseConv2dNative", "depthwise", flops_per_row=1e5, row_elements=2000),
    graph.OpWork("Mul", "elementwise", row_elements=4000),
))
VARIABLES = timing.Variables(trainable=2, trainable_elements=1000, weights=3,
                             weight_elements=1100, l2=1, l2_elements=900)


def test_roofline_by_hand():
    # 10 rows, float32. Forward: conv max(1e7 / 1e9, (40000 + 2000) B / 1e9) = 0.01;
    # depthwise max(1e6 / 1e8, 80000 B / 1e9) = 0.01; Mul 160000 B / 1e9 = 1.6e-4.
    assert timing.forward_seconds(OPS, 10, RATES, 4) == pytest.approx(0.02016)
    # Backward: conv 2e7 / 1e9 = 0.02 (bytes 3.6 x 40000 + 2 x 2000 are less);
    # depthwise 2e6 / 5e7 = 0.04; Mul 3.6 x 160000 B / 1e9 = 5.76e-4.
    assert timing.forward_seconds(OPS, 10, RATES, 4, backward=True) == pytest.approx(0.060576)
    # Update: ops 2 x 2 + 6 x 3 + 4 x 1 = 26; bytes (7 x 1000 + 8 x 1100 + 6 x 900) x 4.
    assert timing.update_cost(VARIABLES) == (26, 84800)
    step = timing.step_time(OPS, VARIABLES, 10, RATES, "float32", utilization=0.5)
    assert step.forward == pytest.approx(0.02016)
    assert step.update == pytest.approx(84800 / 1e9)
    # Overhead: 3 forward ops x (1 + 1.4 backward) + 26 update ops, 1 ms each.
    assert step.overhead == pytest.approx(0.0332)
    assert step.total == pytest.approx((0.02016 + 0.060576 + 84800 / 1e9) / 0.5 + 0.0332)
    # bfloat16 halves the per-row bytes only: the Mul's 160000 B become 80000 B.
    assert timing.op_seconds(OPS.ops[2], 10, RATES, 2) == pytest.approx(8e-5)


def test_roofline_fused_moves_no_elementwise_bytes():
    fused = timing.Rates(**dict(vars(RATES), fused=True))
    assert timing.op_seconds(OPS.ops[2], 10, fused, 4) == 0.0
    assert timing.forward_seconds(OPS, 10, fused, 4) == pytest.approx(0.02)
    # A bandwidth-bound conv: the fused backward moves 2 x (not 3.6 x) its bytes.
    slow = timing.Rates(**dict(vars(fused), bandwidth=((1.0, 1e6),)))
    conv = OPS.ops[0]
    assert timing.op_seconds(conv, 10, slow, 4, backward=True) == pytest.approx(
        (2 * 40000 + 2 * 2000) / 1e6)


def test_teacher_forward_is_added():
    with_teacher = timing.step_time(OPS, VARIABLES, 10, RATES, "float32", teacher=OPS,
                                    teacher_rows=10)
    alone = timing.step_time(OPS, VARIABLES, 10, RATES, "float32")
    assert with_teacher.teacher == pytest.approx(0.02016)
    assert with_teacher.overhead - alone.overhead == pytest.approx(3 * 1e-3)


def test_bandwidth_by_size_is_log_linear_and_clamped():
    r = timing.Rates(1, 1, 1, bandwidth=((1e3, 1e9), (1e5, 1e11)))
    assert r.bandwidth_at(1e4) == pytest.approx(1e10)
    assert r.bandwidth_at(10) == 1e9 and r.bandwidth_at(1e9) == 1e11


@pytest.fixture(scope="module")
def digits_numbers():
    return estimate.numbers_of(_digits(), 32)


def test_step_time_is_monotone(digits_numbers):
    work, variables = digits_numbers.train_work, digits_numbers.variables
    rates = timing.device_rates(devices.get("cpu"), "float32")
    times = [timing.step_time(work, variables, r, rates, "float32").total
             for r in (1, 8, 64, 512)]
    assert times == sorted(times) and len(set(times)) == 4
    slower = timing.Rates(**dict(vars(rates), bandwidth=tuple(
        (s, b / 2) for s, b in rates.bandwidth)))
    assert timing.step_time(work, variables, 64, slower, "float32").total > times[2]
    by_u = [timing.step_time(work, variables, 64, rates, "float32", u).total
            for u in (0.25, 0.5, 1.0)]
    assert by_u == sorted(by_u, reverse=True)


def test_accelerator_estimates_are_monotone():
    job = recipe.from_model("efficientnet-b0", 32, 64, "bfloat16", small_image=True,
                            num_classes=10)
    half = estimate.estimate(job, "tpu-v3", 1, 0.5, labeled=32)
    full = estimate.estimate(job, "tpu-v3", 1, 1.0, labeled=32)
    # No per-op overhead on a TPU: time is the roofline / utilisation.
    assert half.step_seconds == pytest.approx(2 * full.step_seconds)
    assert estimate.estimate(job, "tpu-v3", 1, 1.0, labeled=64).step_seconds > (
        full.step_seconds)
    a100 = estimate.estimate(job, "a100-80gb", 1, 1.0, labeled=32).step_seconds
    h200 = estimate.estimate(job, "h200", 1, 1.0, labeled=32).step_seconds
    assert h200 < a100


def test_graph_walk_matches_the_flop_count(digits_numbers):
    config = model_config.get_config("efficientnet-b0", 10, width=0.25, depth=0.25,
                                     small_image=True)
    cost = flops_lib.model_cost(config, 32)
    work = digits_numbers.train_work
    assert work.flops_per_row() == cost.flops
    assert work.flops_per_row("depthwise") == 2 * cost.macs_by_kind["depthwise"]
    assert sum(o.kind == "depthwise" for o in work.ops) == len(config.blocks())
    # Inference mode has no batch statistics or moving-average updates.
    assert digits_numbers.infer_work.num_ops < work.num_ops
    assert digits_numbers.infer_work.flops_per_row() == cost.flops


def test_graph_walk_of_one_conv_by_hand():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(
        inputs))
    (conv,) = [o for o in graph.forward_work(model, 8).ops if o.type == "Conv2D"]
    assert conv.kind == "matmul"
    assert conv.flops_per_row == 2 * 8 * 8 * 4 * 3 * 3 * 3
    assert conv.row_elements == 8 * 8 * 3 + 8 * 8 * 4
    assert conv.step_elements == 3 * 3 * 3 * 4


def _moved_and_ops(ops):
    """(elements read + written, ops) of graph ops, static shapes (the test's own count)."""
    elements, count = 0, 0
    for op in ops:
        if op.type in graph.FREE:
            continue
        count += 1
        if op.type in graph.NO_COPY:
            continue
        for t in list(op.inputs) + list(op.outputs):
            if t.dtype.name != "resource" and t.shape.rank is not None:
                elements += math.prod(t.shape)
    return elements, count


def test_backward_and_update_constants_match_the_traced_step():
    from nst.train import objective
    from nst.train.ema import ExponentialMovingAverage
    from nst.train.optimizer import TF1RMSProp
    model = _digits()
    optimizer = TF1RMSProp(learning_rate=0.1)
    optimizer.build(model.trainable_variables)
    ema = ExponentialMovingAverage(model, 0.999)

    def segments(batch):
        marks = []

        def step(x):
            def mark():
                marks.append(len(tf.compat.v1.get_default_graph().get_operations()))
            variables = model.trainable_variables
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(model(x, training=True))
                mark()
                loss += objective.l2_regularization(variables, 1e-5)
            mark()
            grads = tape.gradient(loss, variables)
            mark()
            optimizer.apply(grads, variables)
            ema.update(optimizer.iterations)

        ops = tf.function(step).get_concrete_function(
            tf.TensorSpec([batch, 32, 32, 3])).graph.get_operations()
        cuts = [0] + marks + [len(ops)]
        return [_moved_and_ops(ops[a:b]) for a, b in zip(cuts, cuts[1:])]

    small, large = segments(2), segments(4)
    per_row = [(b[0] - a[0]) / 2 for a, b in zip(small, large)]
    forward_ops, backward_ops = small[0][1], small[2][1]
    # The L2 term's forward and backward ops are in the update, not the backward ratio.
    v = estimate.numbers_of(model, 32).variables
    l2_backward_ops = timing.UPDATE["l2"][0] // 2 * v.l2
    assert per_row[2] / per_row[0] == pytest.approx(timing.BACKWARD_ROW_BYTES, rel=0.1)
    assert (backward_ops - l2_backward_ops) / forward_ops == pytest.approx(
        timing.BACKWARD_OPS, rel=0.1)
    update_ops = small[1][1] + l2_backward_ops + small[3][1]
    assert update_ops == pytest.approx(timing.update_cost(v)[0], rel=0.1)


def test_cpu_rates_arithmetic_on_a_fake_clock(monkeypatch):
    calls = []

    def fake(fn, seconds):
        fn()  # the TensorFlow code runs once; nothing is timed
        calls.append(fn)
        # op overhead chain, depthwise forward, forward+backward, matmul, bandwidth...
        return {1: 256e-6, 2: 0.01, 3: 0.03}.get(len(calls), 0.016)

    monkeypatch.setattr(cpu_rates, "seconds_per_call", fake)
    r = cpu_rates.measure(seconds=0.0, matmul_n=64, depthwise_shape=(2, 8, 8, 16),
                          bandwidth_sizes=(2 ** 10, 2 ** 12))
    assert set(r) == set(devices.CPU_RECORDED)
    assert r["op_overhead_us"] == pytest.approx(1.0)  # 256 us / 256 ops
    dw_flops = 2.0 * 2 * 8 * 8 * 16 * 9
    assert r["depthwise_gflops"] == pytest.approx(dw_flops / 0.01 / 1e9)
    assert r["depthwise_backward_gflops"] == pytest.approx(2 * dw_flops / 0.02 / 1e9)
    assert r["matmul_gflops"] == pytest.approx(2 * 64 ** 3 / 0.016 / 1e9)
    # 256 products per call (the cap: 256 MiB would take 32 Ki of them at 1 Ki floats):
    # 62.5 us each, less the 1 us overhead, each reading two and writing one n-float tensor.
    per_op = 0.016 / cpu_rates.MAX_PRODUCTS - 1e-6
    assert r["bandwidth"][0] == pytest.approx((12.0 * 2 ** 10, 12.0 * 2 ** 10 / per_op / 1e9))
    timing.device_rates(devices.get("cpu", r), "float32")  # a usable CPU row


def test_bandwidth_products_read_a_working_set_no_cache_holds():
    mib = 2 ** 20
    # Inputs and outputs of one call: 8 bytes per element and product (a new input, an output).
    assert cpu_rates.products_per_call(2 ** 25, 256 * mib) == cpu_rates.MIN_PRODUCTS
    assert cpu_rates.products_per_call(2 ** 20, 256 * mib) == 32  # 32 x 8 MiB = 256 MiB
    assert cpu_rates.products_per_call(2 ** 20, 256 * mib + 1) == 33
    assert cpu_rates.products_per_call(2 ** 10, 256 * mib) == cpu_rates.MAX_PRODUCTS
    out = cpu_rates._cold_products(4, 3)()
    assert len(out) == 3 and all(o.shape == (4,) for o in out)
    # Distinct inputs: no two products are the same tensor.
    assert len({tuple(o.numpy()) for o in out}) == 3


def test_bandwidth_for_every_device():
    for name in devices.names():
        row = devices.get(name)
        rates = timing.device_rates(row, "bfloat16")
        assert rates.bandwidth and all(b > 0 for _, b in rates.bandwidth), name
        if name != "cpu":
            assert row["bandwidth_gbs"] > 0 and "xla_fusion" in row
            assert any(u in row["source"] for u in ("GBps", "GB/s", "TB/s")), name
    assert devices.DEVICES["tpu-v3"]["bandwidth_gbs"] == 450.0  # half of a chip's 900
    assert devices.DEVICES["tpu-v3"]["xla_fusion"] and not devices.DEVICES["h100"]["xla_fusion"]


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, float("nan")])
def test_utilization_outside_zero_one_names_the_flag(value):
    with pytest.raises(ValueError, match="--utilization"):
        timing.check_utilization(value)
    job = recipe.from_model("efficientnet-b0", 32, 8, "float32", small_image=True,
                            num_classes=10)
    with pytest.raises(ValueError, match="--utilization"):
        estimate.estimate(job, "tpu-v3", 1, value)


def test_default_utilization_by_device():
    assert timing.default_utilization("cpu") == 1.0
    assert timing.default_utilization("tpu-v3") == timing.DEFAULT_UTILIZATION


@pytest.mark.parametrize("args,flag", [
    (["--device=tpu-v9"], "--device"),
    (["--utilization=1.5"], "--utilization"),
    (["--utilization=0"], "--utilization"),
])
def test_cli_bad_input_is_one_line_naming_the_flag(args, flag):
    out = subprocess.run([sys.executable, "-m", "nst.sizing.cli",
                          "--model_name=efficientnet-b0", *args], capture_output=True, text=True)
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and flag in errors[0], out.stderr


def test_peak_rss_is_the_child_s_own_not_the_parent_s():
    """The check's children must not report the large parent's high-water mark."""
    from nst.sizing import measure
    # Importing nst (TensorFlow) makes a child of ~0.7 GiB; the parent is made
    # twice that. Zero pages are not resident until written.
    ballast = bytearray(1500 * 2 ** 20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    assert measure.peak_rss() > 1500 * 2 ** 20
    out = subprocess.run(
        [sys.executable, "-c", "from nst.sizing.measure import peak_rss; print(peak_rss())"],
        capture_output=True, text=True, check=True)
    child_peak = int(out.stdout.split()[-1])
    del ballast
    assert child_peak < 1100 * 2 ** 20, child_peak


def test_check_refuses_batches_whose_peaks_do_not_differ(monkeypatch):
    from nst.sizing import measure
    monkeypatch.setattr(measure, "run_child", lambda *a, **k: {
        "peak_rss": 2 ** 30, "step_seconds": 0.1, "all_step_seconds": [0.1]})
    with pytest.raises(RuntimeError, match="batch 80.*not above batch 16"):
        measure.check_case("efficientnet-b0", 32, True, (16, 80), 1, cpu_rates=None)
