"""Prints parameters and forward FLOPs of every named EfficientNet.

    nst-model-table                       # all models, 1000 classes, native size
    nst-model-table --num_label_classes=10 --small_image_model
    nst-model-table --models=efficientnet-b0,efficientnet-l2 --build

`--build` also builds each Keras model and checks that its variables match
the count (EfficientNet-L2 takes about 2 GiB of memory and a minute).
"""

import gc
import sys

from absl import app, flags

from nst import cli_errors
from nst.models import config as config_lib
from nst.models import flops

FLAGS = flags.FLAGS
flags.DEFINE_list("models", None, "Model names; default: every named model.")
flags.DEFINE_integer("num_label_classes", 1000, "Number of classes K.")
flags.DEFINE_integer("input_image_size", None, "Resolution; default: each model's own.")
flags.DEFINE_bool("small_image_model", False, "The 32x32 variant.")
flags.DEFINE_bool("build", False, "Build every model and verify the counts.")

# Trainable parameters at 1000 classes as printed (rounded) by the paper.
PAPER_PARAMS = {
    "efficientnet-b0": 5.3e6, "efficientnet-b1": 7.8e6, "efficientnet-b2": 9.1e6,
    "efficientnet-b3": 12.2e6, "efficientnet-b4": 19.3e6, "efficientnet-b5": 30.4e6,
    "efficientnet-b6": 43.0e6, "efficientnet-b7": 66.3e6, "efficientnet-l2": 480e6,
}


def table_rows(names, num_classes, image_size=None, small_image=False):
    """Returns one `ModelCost` per name."""
    rows = []
    for name in names:
        config = config_lib.get_config(name, num_classes=num_classes, small_image=small_image,
                                       resolution=image_size)
        rows.append((name, flops.model_cost(config)))
    return rows


def format_table(rows, num_classes) -> str:
    lines = ["| model | resolution | trainable params | paper | model tensors | GMACs | GFLOPs |",
             "|---|---|---|---|---|---|---|"]
    for name, cost in rows:
        paper = PAPER_PARAMS.get(name) if num_classes == 1000 else None
        paper_text = f"{paper / 1e6:.1f}M ({cost.trainable_params / paper - 1:+.2%})" if paper else "-"
        lines.append(
            f"| {name} | {cost.image_size} | {cost.trainable_params:,} | {paper_text} | "
            f"{cost.num_tensors} | {cost.macs / 1e9:.3f} | {cost.flops / 1e9:.3f} |")
    return "\n".join(lines)


def verify_by_building(name, cost, num_classes, small_image):
    """Builds the Keras model and compares its variables with `cost`."""
    import keras  # deferred: the table itself needs no TensorFlow session
    import numpy as np
    from nst.models.efficientnet import build_model
    model, _ = build_model(name, num_classes, small_image=small_image,
                           resolution=cost.image_size, image_size=None)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    tensors = len(model.weights)
    del model
    keras.backend.clear_session()
    gc.collect()
    if (trainable, tensors) != (cost.trainable_params, cost.num_tensors):
        raise AssertionError(f"{name}: built model has {trainable:,} trainable params in "
                             f"{tensors} tensors; the count says {cost.trainable_params:,} in "
                             f"{cost.num_tensors}")


def main(argv):
    del argv
    names = FLAGS.models or list(config_lib.MODEL_TABLE)
    rows = table_rows(names, FLAGS.num_label_classes, FLAGS.input_image_size,
                      FLAGS.small_image_model)
    print(format_table(rows, FLAGS.num_label_classes))
    if FLAGS.build:
        for name, cost in rows:
            verify_by_building(name, cost, FLAGS.num_label_classes, FLAGS.small_image_model)
            print(f"verified by building: {name}")
    sys.stdout.flush()


def run():
    cli_errors.run(main)


if __name__ == "__main__":
    run()
