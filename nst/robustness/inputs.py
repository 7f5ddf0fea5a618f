"""Evaluation batches for robustness: clean, corrupted, and the TFDS robustness sets.

Every dataset yields {'image': float32 [B, S, S, 3] in 0..255, 'label': int32 [B]}
batches of the model's eval view (`ViewConfig.eval`: centre crop, resize to S).
Corruptions act on that view — the image the model would see — so their
parameters relate to S, not to the stored resolution. They run in the tf.data
map (parallel, prefetched), overlapping the model.
"""

from typing import Optional

import numpy as np
import tensorflow as tf

from nst.data import input_pipeline as ip
from nst.data.sources import tfds_source

AUTOTUNE = tf.data.AUTOTUNE


def record_batches(pattern: str, num_classes: int, batch_size: int,
                   view: ip.ViewConfig, max_images: Optional[int] = None) -> tf.data.Dataset:
    """Labeled TFRecords through the eval input pipeline (`ip.eval_dataset`);
    `max_images`: only the first N images in file order (None: all)."""
    dataset = ip.eval_dataset(pattern, num_classes, batch_size, view, max_images=max_images)
    return dataset.map(lambda b: {"image": b["image"], "label": b["label"]})


def tfds_info(name: str, data_dir: Optional[str]):
    """(builder, number of classes) of a prepared TFDS image-classification set."""
    tfds = tfds_source._tfds()
    builder = tfds.builder(name, data_dir=data_dir)
    info = tfds_source.check_features(name, builder.info.features, id_key=None)
    return builder, info.num_classes


def tfds_batches(builder, split: str, batch_size: int, view: ip.ViewConfig,
                 max_images: Optional[int] = None) -> tf.data.Dataset:
    """A TFDS split in its deterministic order, decoded to uint8 and put through the view.

    Unlike `tfds_source.tfds_source` the pixels are not re-encoded as JPEG: the
    decoded image goes straight to the eval view (a corrupted set's artefacts
    should not get a second JPEG pass).
    """
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    if max_images is not None:
        dataset = dataset.take(max_images)

    def make(example):
        image = tfds_source.to_rgb_uint8(example["image"])
        return {"image": view.eval(image), "label": tf.cast(example["label"], tf.int32)}

    return dataset.map(make, num_parallel_calls=AUTOTUNE, deterministic=True).batch(batch_size)


def corrupt_batches(dataset: tf.data.Dataset, corruption: str, severity: int,
                    seed: int, batch_size: int) -> tf.data.Dataset:
    """`dataset` with each batch's images corrupted (`corruptions.corrupt`, uint8).

    The view's float pixels are rounded to uint8 first: the corruptions are
    defined on 8-bit images (ImageNet-C's are, too). Image i of the split draws
    its noise from (seed, i, corruption) alone, so the results do not depend on
    the batch size (every batch but the last holds `batch_size` images). Whole
    batches go through one `tf.numpy_function` call each, in a parallel map, so
    several batches are corrupted at once while the model runs.
    """
    from nst.robustness import corruptions  # the other half of the package

    def corrupt_numpy(images, first):
        indices = int(first) + np.arange(len(images))
        return corruptions.corrupt(images, corruption, severity, seed, indices=indices)

    def apply(index, batch):
        pixels = tf.cast(tf.clip_by_value(tf.round(batch["image"]), 0, 255), tf.uint8)
        first = tf.cast(index, tf.int64) * batch_size
        corrupted = tf.numpy_function(corrupt_numpy, [pixels, first], tf.uint8, stateful=False)
        corrupted = tf.ensure_shape(corrupted, batch["image"].shape)
        return {"image": tf.cast(corrupted, tf.float32), "label": batch["label"]}

    return dataset.enumerate().map(apply, num_parallel_calls=AUTOTUNE, deterministic=True)


def prefetched(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.prefetch(AUTOTUNE)


