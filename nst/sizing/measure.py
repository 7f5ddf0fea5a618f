"""The checks of the estimates against this CPU (`nst-size-run --check`).

Activation memory: TensorFlow's `get_memory_info('CPU:0')` reports 0 on CPU,
and tracemalloc does not see TensorFlow's allocator, so a fresh process per
batch size runs one full training step (forward, loss, gradients, TF1RMSProp
update, in one tf.function as training runs it) and reports its RSS high-water mark (`resource.getrusage`).
The fixed costs (TensorFlow, the model, its gradients and slots) are the same
in both processes, so the difference of two batch sizes divided by the rows
added is the measured per-row peak increase of a step, compared with
`memory.activation_bytes_per_row`.

Step time: the same step, timed (median of a few after warm-up), against
forward+backward FLOPs at the measured matmul rate.
"""

import json
import os
import subprocess
import sys
import time


def _build(name, size, small):
    from nst.models.efficientnet import build_model
    if small:
        return build_model(name, 10, width=0.25, depth=0.25, small_image=True,
                           normalization="svhn")[0]
    return build_model(name, 1000)[0]


def child(name, size, small, batch, steps):
    """Runs in a fresh process: peak RSS after one step, and step times."""
    import resource
    import nst  # noqa: F401  (selects the Keras backend)
    import tensorflow as tf
    from nst.train.optimizer import TF1RMSProp
    model = _build(name, size, small)
    optimizer = TF1RMSProp(learning_rate=1e-3)
    optimizer.build(model.trainable_variables)
    images = tf.random.uniform([batch, size, size, 3], 0, 255)
    labels = tf.one_hot(tf.zeros([batch], tf.int32), model.output_shape[-1])

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels, logits))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)

    step()  # traces, then runs once: the peak of a real step
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    return {"peak_rss": peak, "step_seconds": times[len(times) // 2] if times else None}


def run_child(name, size, small, batch, steps=0) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "nst.sizing.measure", name, str(size), str(int(small)),
         str(batch), str(steps)], capture_output=True, text=True, check=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_case(name, size, small, batches, steps, cpu_gflops):
    """Estimate vs measurement for one model: per-row activation bytes and step time."""
    import nst  # noqa: F401
    from nst.models import config as config_lib
    from nst.models import flops
    from nst.sizing import memory, timing
    low, high = (run_child(name, size, small, b, steps if b == batches[1] else 0)
                 for b in batches)
    measured_row = (high["peak_rss"] - low["peak_rss"]) / (batches[1] - batches[0])
    estimate_row = memory.activation_bytes_per_row(_build(name, size, small), size, "float32")
    config = config_lib.get_config(name, 10 if small else 1000, small_image=small,
                                   **(dict(width=0.25, depth=0.25) if small else {}))
    step_flops = timing.train_flops(flops.model_cost(config, size).flops, batches[1])
    estimate_s = step_flops / (cpu_gflops * 1e9)
    return {"model": name + (" (digits, w=d=0.25)" if small else ""), "image_size": size,
            "batches": list(batches),
            "activation_mib_per_row": {"estimate": estimate_row / 2 ** 20,
                                       "measured": measured_row / 2 ** 20,
                                       "ratio": estimate_row / measured_row},
            "step_seconds": {"estimate": estimate_s, "measured": high["step_seconds"],
                             "ratio": (estimate_s / high["step_seconds"]
                                       if high["step_seconds"] else None),
                             "cpu_gflops": cpu_gflops, "batch": batches[1]}}


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(child(a[0], int(a[1]), a[2] == "1", int(a[3]), int(a[4]))))
