"""Evaluation: top-1 / top-5 accuracy and loss over every image of a split.

Unlike the original (batch 8, remainder dropped), every image counts: the
last partial batch is evaluated too. Weights are the EMA shadows when the
caller swaps them in (`ExponentialMovingAverage.swapped`).
"""

import json
import math
import os
import time
import weakref
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from nst import fileio


class NonFiniteModelError(FloatingPointError):
    """The evaluated model gives NaN or Inf logits or loss: its weights are unusable."""


# One traced function per (model, K, smoothing): every evaluation of a
# train_and_eval run reuses it instead of tracing the model again.
_BATCH_STATS = weakref.WeakKeyDictionary()


def _batch_stats_fn(model, num_classes: int, label_smoothing: float, image_spec, label_spec):
    functions = _BATCH_STATS.setdefault(model, {})
    # Any batch size: one trace serves full and partial batches alike.
    specs = (tf.TensorSpec([None] + list(image_spec.shape[1:]), image_spec.dtype),
             tf.TensorSpec([None], label_spec.dtype))
    key = (num_classes, label_smoothing) + specs
    if key in functions:
        return functions[key]
    k = min(5, num_classes)
    # A weak reference: the cache entry must not keep its own key alive.
    model_ref = weakref.ref(model)

    @tf.function(input_signature=specs)
    def batch_stats(images, labels):
        logits = tf.cast(model_ref()(images, training=False), tf.float32)
        onehot = tf.one_hot(labels, num_classes)
        if label_smoothing:
            onehot = onehot * (1 - label_smoothing) + label_smoothing / num_classes
        loss = tf.nn.softmax_cross_entropy_with_logits(onehot, logits)
        top1 = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        top5 = tf.cast(tf.nn.in_top_k(labels, logits, k), tf.float32)
        non_finite = tf.reduce_any(tf.logical_not(tf.math.is_finite(logits)), axis=-1)
        return (tf.reduce_sum(top1), tf.reduce_sum(top5), tf.reduce_sum(loss),
                tf.shape(labels)[0], tf.reduce_sum(tf.cast(non_finite, tf.int32)))

    functions[key] = batch_stats
    return batch_stats


def evaluate(model, dataset: tf.data.Dataset, num_classes: int,
             label_smoothing: float = 0.0, source: Optional[str] = None) -> Dict[str, float]:
    """Runs `model` in inference mode over `dataset` ({'image', 'label'} batches).

    `source` names the model in errors (e.g. "the EMA weights of <checkpoint>").

    Returns:
      {"top_1_accuracy", "top_5_accuracy", "loss" (mean cross-entropy with
      `label_smoothing`, no L2 term), "num_images"}.

    Raises:
      NonFiniteModelError: some logits, or the loss, are NaN or Inf.
    """
    spec = dataset.element_spec
    batch_stats = _batch_stats_fn(model, num_classes, float(label_smoothing),
                                  spec["image"], spec["label"])
    totals = np.zeros(5)
    for batch in dataset:
        totals += [float(v) for v in batch_stats(batch["image"], batch["label"])]
    count, non_finite = totals[3], int(totals[4])
    if count == 0:
        raise ValueError("The evaluation split holds no images")
    loss = totals[2] / count
    if non_finite or not math.isfinite(loss):
        raise NonFiniteModelError(
            f"Evaluation of {source or 'the model'} is not finite: NaN or Inf logits for "
            f"{non_finite} of {int(count)} images, mean loss {loss:.4g}. Its weights are "
            f"unusable (training diverged?); evaluate an earlier checkpoint.")
    return {"top_1_accuracy": totals[0] / count, "top_5_accuracy": totals[1] / count,
            "loss": loss, "num_images": int(count)}


def append_result(model_dir: str, result: dict, filename: str = "eval_results.json"):
    """Appends one result (with a timestamp) to `<model_dir>/<filename>`, atomically."""
    path = os.path.join(model_dir, filename)
    history = fileio.read_json(path) if tf.io.gfile.exists(path) else []
    history.append(dict(result, time=time.time()))
    fileio.atomic_write_json(path, history)
    logging.info("eval: %s", json.dumps(result, sort_keys=True))
