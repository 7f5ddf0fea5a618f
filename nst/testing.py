"""Helpers shared by the tests and `tools/bad_inputs.py` (in the spirit of `tf.test`).

Nothing here is used by training, prediction or the pipeline.
"""

import os
from typing import Dict


def file_tree(directory) -> Dict[str, bytes]:
    """{path relative to `directory`: bytes} of every file below it, for byte-for-byte
    comparisons of a job's outputs (a rerun, a resume, another runner)."""
    directory = str(directory)
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


def summary_scalars(directory) -> Dict[str, Dict[int, float]]:
    """{tag: {step: value}} from the TF2 summary event files in `directory`."""
    import tensorflow as tf
    scalars = {}
    for path in tf.io.gfile.glob(os.path.join(str(directory), "events.out.tfevents.*")):
        for raw in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            for value in event.summary.value:
                number = (tf.make_ndarray(value.tensor) if value.HasField("tensor")
                          else value.simple_value)
                scalars.setdefault(value.tag, {})[event.step] = float(number)
    return scalars


def two_cpu_strategy():
    """MirroredStrategy over two logical CPUs (tests/conftest.py makes them).

    Reduces through one device instead of collective ops: every
    MirroredStrategy numbers its collectives from the same keys, so a
    second strategy in the same process can clash with an earlier one's
    collectives ("Shape mismatch in the collective instance 100",
    tensorflow/tensorflow#62790).
    """
    import tensorflow as tf
    return tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())


def save_tiny_model(directory, num_classes: int = 10, small_image: bool = True):
    """Saves a random-weight EfficientNet-B0 at width and depth 0.25, 32x32 (the digits
    model's size) as an nst checkpoint in `directory`; returns the model."""
    from nst.models import saving
    from nst.models.efficientnet import build_model
    model, _ = build_model("efficientnet-b0", num_classes, width=0.25, depth=0.25,
                           resolution=32, small_image=small_image, normalization="svhn")
    saving.save_weights(model, str(directory))
    return model
