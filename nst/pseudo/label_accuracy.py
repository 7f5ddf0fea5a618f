"""How often pseudo labels are right, measured against the withheld true labels.

Benchmark data sets (digits, Fashion-MNIST, SVHN as `proc_svhn.py` writes it) keep each
unlabeled image's true class in `image/class/label`; training never reads it, but predict
and the filter carry it into their pseudo-labelled records. Comparing it with the
record's `label` (the teacher's argmax) answers the question every self-training user
asks: how clean are the labels the student learns from, before the filter (every
prediction) and after it (every copy written, duplicates included, i.e. what the student
actually trains on).

`pseudo_label_accuracy(pattern, K)` returns

  {"records": int,             # records read
   "with_true_label": int,     # of them, those with a stored true label
   "correct": int,             # label == true label
   "accuracy": float | None,   # correct / with_true_label (None: no true labels)
   "per_class": [{"records", "correct", "accuracy"}] * K}   # by pseudo label, i.e. the
                               # precision of each class's pseudo labels
"""

from typing import Dict, List

import numpy as np
import tensorflow as tf

from nst.data import readers
from nst.data import schema

_BATCH = 4096


def _labels(files: List[str]) -> tf.data.Dataset:
    features = {schema.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
                schema.CLASS_LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0)}

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, features)
        # Stored 1-based; 0 (the default) means "not stored" -> -1.
        return parsed[schema.LABEL_KEY], parsed[schema.CLASS_LABEL_KEY] - 1

    return (tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
            .batch(_BATCH).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def pseudo_label_accuracy(pattern: str, num_classes: int) -> Dict:
    """Accuracy of the pseudo labels in the records matching `pattern` (module doc).

    Raises FileNotFoundError when nothing matches and ValueError naming the pattern when a
    label lies outside [0, num_classes).
    """
    files = readers.list_files(pattern)
    records = np.zeros(num_classes, np.int64)
    known = np.zeros(num_classes, np.int64)
    correct = np.zeros(num_classes, np.int64)
    try:
        for label, true in _labels(files).as_numpy_iterator():
            if label.size and (label.min() < 0 or label.max() >= num_classes
                               or true.max() >= num_classes):
                raise ValueError(f"{pattern}: a label outside [0, {num_classes}) (pseudo "
                                 f"labels {label.min()}..{label.max()}, true labels up to "
                                 f"{true.max()})")
            records += np.bincount(label, minlength=num_classes)
            has_true = true >= 0
            known += np.bincount(label[has_true], minlength=num_classes)
            correct += np.bincount(label[has_true & (label == true)], minlength=num_classes)
    except tf.errors.OpError as e:
        raise ValueError(f"{pattern}: unreadable pseudo-labelled records ({e.message})") \
            from None

    def ratio(hit, total):
        return float(hit / total) if total else None

    return {"records": int(records.sum()), "with_true_label": int(known.sum()),
            "correct": int(correct.sum()), "accuracy": ratio(correct.sum(), known.sum()),
            "per_class": [{"records": int(records[c]), "correct": int(correct[c]),
                           "accuracy": ratio(correct[c], known[c])}
                          for c in range(num_classes)]}
