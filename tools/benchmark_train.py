#!/usr/bin/env python
"""Training-step speed: our Noisy Student step vs Keras `model.fit`.

Side by side in one process, on the same images:
  * ours: the `Trainer`'s compiled loop (`iterations_per_loop` steps per
    call) for EfficientNet-B0 — one student forward/backward over B labeled
    + U unlabeled rows with stored soft targets, label smoothing, L2, TF1
    RMSProp and the EMA update (no teacher);
  * reference: `keras.applications.EfficientNetB0` trained by one `model.fit` call
    (RMSprop, sparse cross-entropy) on a batch of the same size B + U, with
    `steps_per_execution` equal to our steps per call and its set-up and tracing
    outside the timed region, as ours.
It also measures the machine's float32 matmul rate and reports what
fraction of it training reaches (3 x forward multiply-adds per image:
forward, and backward for activations and weights).
"""

import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nst  # noqa: E402,F401  (pins the Keras backend)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from nst import cli_errors  # noqa: E402

from nst import config as config_lib  # noqa: E402
from nst.models import config as model_config, flops  # noqa: E402
from nst.train import loop  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps_32", 30, "Timed steps at 32x32.")
flags.DEFINE_integer("steps_224", 6, "Timed steps at 224x224.")


def matmul_gflops(n=2048, repeats=10):
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])

    @tf.function
    def run():
        c = a
        for _ in range(repeats):
            c = tf.matmul(c, b) * 1e-3
        return c

    run().numpy()
    start = time.perf_counter()
    run().numpy()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def ours(size, labeled, unlabeled, steps, tmp, jit_compile=False):
    k = 10
    config = config_lib.finalize(config_lib.ExperimentConfig(
        model_name="efficientnet-b0", num_label_classes=k, input_image_size=size,
        label_data_dir=tmp, model_dir=os.path.join(tmp, f"ours{size}"), num_train_images=50000,
        train_batch_size=labeled, unlabel_ratio=unlabeled / labeled, teacher_softmax_temp=1.0,
        iterations_per_loop=steps, mode="train"))
    trainer = loop.Trainer(config, jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    batch = {
        "image": tf.constant(rng.uniform(0, 255, (labeled + unlabeled, size, size, 3)),
                             tf.float32),
        "label": tf.constant(rng.integers(0, k, labeled + unlabeled), tf.int32),
        "unl_probs": tf.nn.softmax(tf.constant(rng.normal(size=(unlabeled, k)), tf.float32)),
    }
    dataset = trainer.strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch).repeat())
    iterator = iter(dataset)
    run = trainer._make_loop()
    run(iterator, tf.constant(2, tf.int32))  # trace and warm up
    start = time.perf_counter()
    metrics = run(iterator, tf.constant(steps, tf.int32))
    float(metrics["train/loss"])
    return steps * (labeled + unlabeled) / (time.perf_counter() - start)


class _ExecutionTimer(keras.callbacks.Callback):
    """Wall time at the end of each execution (`steps_per_execution` steps)."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # wait for the execution to finish
        self.times.append(time.perf_counter())


def keras_fit(size, batch, steps, jit_compile=False):
    """The best plain-Keras version of the same work: one `fit` call whose executions run
    `steps` steps each inside one compiled function (as our loop's `iterations_per_loop`),
    timed from the end of the first execution (tracing, warm-up and `fit`'s own set-up
    excluded, as for ours) to the end of the second."""
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(size, size, 3),
                                              classes=10)
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
                  jit_compile=jit_compile, steps_per_execution=steps)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    timer = _ExecutionTimer()
    model.fit(dataset, steps_per_epoch=2 * steps, epochs=1, verbose=0, callbacks=[timer])
    if len(timer.times) != 2:
        raise RuntimeError(f"expected 2 executions of {steps} steps, timed "
                           f"{len(timer.times)}")
    return steps * batch / (timer.times[1] - timer.times[0])


def main(argv):
    del argv
    peak = matmul_gflops()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU "
          f"cores; float32 matmul: {peak:.0f} GFLOP/s")
    print("| resolution | batch (B + U) | ours (img/s) | keras fit (img/s) | ratio | "
          "ours: training GFLOP/s | fraction of matmul peak |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size, labeled, unlabeled, steps in ((32, 16, 48, FLAGS.steps_32),
                                                (224, 4, 12, FLAGS.steps_224)):
            config = model_config.get_config("efficientnet-b0", num_classes=10, resolution=size)
            forward = flops.model_cost(config, size).flops
            # Keras' jit_compile="auto" does not use XLA on a CPU-only machine, so the XLA
            # rows ask both sides for it explicitly.
            for jit in (False, True):
                rate = ours(size, labeled, unlabeled, steps, tmp, jit_compile=jit)
                reference = keras_fit(size, labeled + unlabeled, steps, jit_compile=jit)
                gflops = 3 * forward * rate / 1e9
                label = "XLA (both jit_compile=True)" if jit else "no XLA (both)"
                print(f"| {size}x{size}, {label} | {labeled} + {unlabeled} | {rate:.1f} | "
                      f"{reference:.1f} | {rate / reference:.2f} | {gflops:.1f} | "
                      f"{gflops / peak:.1%} |")


if __name__ == "__main__":
    cli_errors.run(main)
