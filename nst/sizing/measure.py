"""The checks of the estimates against this CPU (`nst-size-run --check`).

A fresh process per batch size runs the work of one training step as
nst/train/loop.py does it — forward, loss with the L2 term, gradients,
TF1RMSProp update, EMA update — in one tf.function, and reports its RSS
high-water mark (`VmHWM`) and step times.

Activation memory: TensorFlow's `get_memory_info('CPU:0')` reports 0 on CPU,
and tracemalloc does not see TensorFlow's allocator, so the peak RSS is used.
The fixed costs (TensorFlow, the model, its gradients, slots and EMA) are the
same in both processes, so the difference of two batch sizes divided by the
rows added is the measured per-row peak increase of a step, compared with
`memory.activation_bytes_per_row`.

Step time: the median of a few steps after the first, at the larger batch,
against `timing.step_time` at this CPU's rates measured just before.
"""

import importlib
import json
import os
import subprocess
import sys
import time

WEIGHT_DECAY = 1e-5  # the recipes' default (nst/config.py)
EMA_DECAY = 0.9999


def _build(name, size, small):
    from nst.models.efficientnet import build_model
    if small:
        return build_model(name, 10, width=0.25, depth=0.25, small_image=True,
                           normalization="svhn")[0]
    return build_model(name, 1000, image_size=size)[0]


def peak_rss() -> int:
    """This process's RSS high-water mark in bytes (Linux `VmHWM`).

    Not `getrusage().ru_maxrss`: Linux carries the parent's high-water mark
    across fork and exec into it, so a child started by a large parent (the
    check, after measuring the CPU's rates) reports the parent's peak.
    `VmHWM` belongs to the address space exec made.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line: the memory check needs Linux")


def child(name, size, small, batch, steps):
    """Runs in a fresh process: peak RSS after one step, and step times."""
    importlib.import_module("nst")  # selects the Keras backend
    import tensorflow as tf
    from nst.train import objective
    from nst.train.ema import ExponentialMovingAverage
    from nst.train.optimizer import TF1RMSProp
    model = _build(name, size, small)
    optimizer = TF1RMSProp(learning_rate=1e-3)
    optimizer.build(model.trainable_variables)
    ema = ExponentialMovingAverage(model, EMA_DECAY)
    images = tf.random.uniform([batch, size, size, 3], 0, 255)
    labels = tf.one_hot(tf.zeros([batch], tf.int32), model.output_shape[-1])

    @tf.function
    def step():
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels, logits))
            loss += objective.l2_regularization(variables, WEIGHT_DECAY)
        grads = tape.gradient(loss, variables)
        optimizer.apply(grads, variables)
        ema.update(optimizer.iterations)
        return loss

    step().numpy()  # traces, then runs once: the peak of a real step
    peak = peak_rss()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step().numpy()
        times.append(time.perf_counter() - start)
    times.sort()
    return {"peak_rss": peak, "step_seconds": times[len(times) // 2] if times else None,
            "all_step_seconds": times}


def run_child(name, size, small, batch, steps=0) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "nst.sizing.measure", name, str(size), str(int(small)),
         str(batch), str(steps)], capture_output=True, text=True, check=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def estimate_case(name, size, small, batch, cpu_rates) -> dict:
    """Per-row activation bytes and step time of one case, estimated (no timing)."""
    importlib.import_module("nst")  # selects the Keras backend
    from nst.sizing import devices, estimate, timing
    numbers = estimate.numbers_of(_build(name, size, small), size)
    rates = timing.device_rates(devices.get("cpu", cpu_rates), "float32")
    step = timing.step_time(numbers.train_work, numbers.variables, batch, rates, "float32")
    return {"activation_row": numbers.activation_row, "step": step.as_dict()}


def check_case(name, size, small, batches, steps, cpu_rates):
    """Estimate vs measurement for one model: per-row activation bytes and step time."""
    low, high = (run_child(name, size, small, b, steps if b == batches[1] else 0)
                 for b in batches)
    measured_row = (high["peak_rss"] - low["peak_rss"]) / (batches[1] - batches[0])
    if measured_row <= 0:
        # The high-water mark was set outside the step (tracing, model building) in
        # both processes, so the batches are too close to show the step's memory.
        raise RuntimeError(
            f"{name} at {size} px: the peak RSS of batch {batches[1]} "
            f"({high['peak_rss'] / 2 ** 20:.0f} MiB) is not above batch {batches[0]}'s "
            f"({low['peak_rss'] / 2 ** 20:.0f} MiB); use batches further apart")
    est = estimate_case(name, size, small, batches[1], cpu_rates)
    estimate_s = est["step"]["total"]
    return {"model": name + (" (digits, w=d=0.25)" if small else ""), "image_size": size,
            "batches": list(batches),
            "activation_mib_per_row": {"estimate": est["activation_row"] / 2 ** 20,
                                       "measured": measured_row / 2 ** 20,
                                       "ratio": est["activation_row"] / measured_row},
            "step_seconds": {"estimate": estimate_s, "measured": high["step_seconds"],
                             "ratio": (estimate_s / high["step_seconds"]
                                       if high["step_seconds"] else None),
                             "batch": batches[1], "parts": est["step"],
                             "all_measured": high["all_step_seconds"]}}


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(child(a[0], int(a[1]), a[2] == "1", int(a[3]), int(a[4]))))
