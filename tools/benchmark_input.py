#!/usr/bin/env python
"""Input-pipeline speed: our RandAugment and student pipeline vs references.

Measured side by side in one process (timings on a shared 2-core machine
vary 20-50% between runs; the ratios are what to compare):

  1. per-image RandAugment (N=2) at 32x32 and 224x224: ours vs
     `keras_cv.layers.RandAugment` applied per image, both in
     `Dataset.map(num_parallel_calls=AUTOTUNE)` over the same uint8 images;
  2. the full student training pipeline at 32x32 (TFRecords -> parse ->
     decode -> RandAugment + Cutout + pad/crop -> batches of B labeled + U
     unlabeled) vs the EfficientNet-B0 training step at 32x32, batch 64;
  3. the ImageNet-style pipeline at 224x224 (inception crop, bicubic resize,
     flip, RandAugment) in images/second.

keras-cv is only a benchmark reference, not a dependency of nst:
  pip install keras-cv --no-deps
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

from nst.augment import randaugment  # noqa: E402
from nst.data import input_pipeline, schema, writers  # noqa: E402
from nst.models.efficientnet import build_model  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("images_32", 6000, "Images per 32x32 measurement.")
flags.DEFINE_integer("images_224", 600, "Images per 224x224 measurement.")
flags.DEFINE_integer("magnitude", 10, "RandAugment magnitude M (0..10 keeps keras-cv comparable).")
flags.DEFINE_integer("train_steps", 30, "EfficientNet-B0 steps to time.")


def _rate(dataset, num_images, count_fn):
    """Images per second over `num_images` after a short warm-up."""
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    seen, start = 0, time.perf_counter()
    while seen < num_images:
        seen += count_fn(next(iterator))
    return seen / (time.perf_counter() - start)


def _images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def randaugment_rates(size, num_images, magnitude):
    images = _images(512, size)
    source = tf.data.Dataset.from_tensor_slices(images).repeat()

    ours = source.map(
        lambda x: randaugment.distort_image_with_randaugment(
            x, 2, magnitude, **_constants(size)),
        num_parallel_calls=tf.data.AUTOTUNE).batch(64).prefetch(2)
    results = {"ours": _rate(ours, num_images, lambda b: int(b.shape[0]))}
    try:
        import keras_cv
    except ImportError:
        results["keras_cv"] = None
        return results
    layer = keras_cv.layers.RandAugment(value_range=(0, 255), augmentations_per_image=2,
                                        magnitude=magnitude / 10.0)
    theirs = source.map(lambda x: layer(tf.cast(x, tf.float32)),
                        num_parallel_calls=tf.data.AUTOTUNE).batch(64).prefetch(2)
    results["keras_cv"] = _rate(theirs, num_images, lambda b: int(b.shape[0]))
    return results


def _constants(size):
    if size <= 64:
        return dict(translate_const=size // 8, cutout_const=size // 8)
    return dict(translate_const=100, cutout_const=40)


def _write_records(directory, n, size, prefix, unlabeled=False, num_shards=4):
    images = _images(n, size, seed=1)
    records = []
    for i, image in enumerate(images):
        data = tf.io.encode_jpeg(image, quality=100).numpy()
        if unlabeled:
            probs = np.full(10, 0.05, np.float32)
            probs[i % 10] = 0.55
            records.append(schema.encode_unlabeled(data, probabilities=probs))
        else:
            records.append(schema.encode_labeled(data, i % 10))
    writers.write_shards(records, directory, prefix, num_shards)


def student_pipeline_rate(tmp, num_images, magnitude):
    _write_records(tmp, 2048, 32, "train")
    _write_records(os.path.join(tmp, "unlabeled"), 4096, 32, "extra", unlabeled=True)
    view = input_pipeline.ViewConfig(image_size=32, small_image=True, augment_name="v1",
                                     randaug_mag=magnitude, flip=False)
    dataset = input_pipeline.student_train_dataset(
        os.path.join(tmp, "train*"), os.path.join(tmp, "unlabeled/extra*"), 10, 64, view,
        unlabel_ratio=3, seed=0)
    return _rate(dataset, num_images, lambda b: int(b["image"].shape[0]))


def imagenet_pipeline_rate(tmp, num_images, magnitude):
    directory = os.path.join(tmp, "imagenet")
    images = _images(128, 256, seed=2)
    records = [schema.encode_labeled(tf.io.encode_jpeg(im, quality=90).numpy(), i % 10)
               for i, im in enumerate(images)]
    writers.write_shards(records, directory, "train", 4)
    view = input_pipeline.ViewConfig(image_size=224, augment_name="v1", randaug_mag=magnitude)
    dataset = input_pipeline.labeled_train_dataset(os.path.join(directory, "train*"), 10, 16,
                                                   view, seed=0)
    return _rate(dataset, num_images, lambda b: int(b["image"].shape[0]))


def b0_train_rate(steps, batch=64, size=32):
    """EfficientNet-B0 training images/second at 32x32 (a plain Keras train step)."""
    model, _ = build_model("efficientnet-b0", 10, image_size=size, resolution=size)
    optimizer = keras.optimizers.SGD(0.01)
    images = tf.constant(_images(batch, size).astype(np.float32))
    labels = tf.constant(np.arange(batch) % 10)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss)
    return steps * batch / (time.perf_counter() - start)


def main(argv):
    del argv
    m = FLAGS.magnitude
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPU cores, RandAugment N=2 M={m}")
    rows = []
    for size, n in ((32, FLAGS.images_32), (224, FLAGS.images_224)):
        r = randaugment_rates(size, n, m)
        ratio = f"{r['ours'] / r['keras_cv']:.2f}" if r["keras_cv"] else "n/a"
        kcv = f"{r['keras_cv']:.0f}" if r["keras_cv"] else "not installed"
        rows.append(f"| RandAugment per image, {size}x{size} | {r['ours']:.0f} | "
                    f"keras-cv RandAugment: {kcv} | {ratio} |")
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = student_pipeline_rate(tmp, FLAGS.images_32, m)
        imagenet = imagenet_pipeline_rate(tmp, FLAGS.images_224, m)
    train = b0_train_rate(FLAGS.train_steps)
    rows.append(f"| student pipeline 32x32 (B=64, U=192, v1) | {pipeline:.0f} | "
                f"EfficientNet-B0 training, 32x32, batch 64: {train:.0f} | {pipeline / train:.2f} |")
    rows.append(f"| ImageNet-style train pipeline 224x224 (v1) | {imagenet:.0f} | - | - |")
    print("| measurement | ours (img/s) | reference (img/s) | ratio |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    cli_errors.run(main)
