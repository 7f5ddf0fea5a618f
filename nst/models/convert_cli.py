"""Command line: convert EfficientNet weights into the nst format.

    nst-convert-checkpoint --model_name=efficientnet-b0 \
        --source=/ckpts/noisy_student_efficientnet-b0 --output_dir=/models/b0
    nst-convert-checkpoint --model_name=efficientnet-b3 \
        --source=keras:EfficientNetB3:/weights/b3.weights.h5 \
        --export_saved_model=/serving/b3
    nst-convert-checkpoint --list --source=/runs/student/model.ckpt-1000

`--source` is an original TF1 checkpoint (prefix or directory; nst
checkpoints and `.weights.h5` files are accepted too, the format is sniffed)
or `keras:<ApplicationName>[:<weights file>]`: a `keras.applications`
model built with `weights=None`, optionally filled from a local weights
file (this tool never downloads anything). Every name and shape is checked
before anything is written; on a mismatch the tool prints the full list of
problems and exits with status 1.

`--use_ema=auto|true|false` picks EMA shadows or raw values by the same rule
as `saving.load_weights(use_ema=...)`: with "auto" (the default) a checkpoint
whose shadows cover only some tensors is refused rather than converted into
a mix; "true" demands shadows for every tensor; "false" takes raw values.
"""

import sys

import nst  # noqa: F401  (pins the Keras backend before keras is imported)

import keras
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from nst import cli_errors
from nst.models import convert
from nst.models import efficientnet
from nst.models import saving

FLAGS = flags.FLAGS
KERAS_PREFIX = "keras:"
_NORMALIZATIONS = {"imagenet": "imagenet", "svhn": "svhn", "none": None}
# --use_ema value -> saving.load_weights(use_ema=...).
USE_EMA = {"auto": "auto", "true": True, "false": False}


def define_flags(flag_values=FLAGS):
    """Registers the converter's flags on `flag_values`.

    Flags live here rather than at import time so that importing this module
    cannot collide with another entry point's flags; a flag that another
    tool already defined under the same name (e.g. `--num_label_classes`)
    is shared rather than redefined.
    """
    def define(kind, name, default, help_text, *args):
        if name not in flag_values:
            getattr(flags, f"DEFINE_{kind}")(name, default, *args, help_text,
                                              flag_values=flag_values)

    define("string", "model_name", "efficientnet-b0",
           "Architecture, as in the original (efficientnet-b0 .. -l2).")
    define("integer", "num_label_classes", 1000, "Number of classes K.")
    define("boolean", "small_image_model", False,
           "The 32x32 variant (stages 2 and 3 with stride 1).")
    define("float", "width_coefficient", None, "Overrides the width multiplier.")
    define("float", "depth_coefficient", None, "Overrides the depth multiplier.")
    define("integer", "input_image_size", None,
           "Input resolution; default: the model's native one (32 with --small_image_model).")
    define("enum", "normalization", "imagenet",
           "Pixel statistics the converted model normalises with "
           "(the original uses svhn for --task_name=svhn).", sorted(_NORMALIZATIONS))
    define("string", "source", None,
           "Original checkpoint prefix or directory, or keras:EfficientNetBx[:path/to/weights.h5].")
    define("enum", "source_scope", "auto",
           "Which model of an original checkpoint to read; 'teacher' takes "
           "teacher_model/<name>/ of a student run.", ["auto", "student", "teacher"])
    define("enum", "use_ema", "auto",
           "auto: EMA shadows when every tensor has one, raw values when none has, "
           "an error for a partial set; true: shadows required; false: raw values only.",
           list(USE_EMA))
    define("boolean", "no_ema", False, "Same as --use_ema=false.")
    define("string", "output_dir", None, "Writes the nst format here.")
    define("string", "export_saved_model", None,
           "Writes a serving SavedModel (serve(images) -> logits, probabilities) here.")
    define("string", "export_keras", None, "Writes a .keras archive here.")
    define("boolean", "list", False,
           "Only print the model scopes found in an original checkpoint.")


def parse_keras_source(source: str):
    """'keras:EfficientNetB3[:path]' -> ('EfficientNetB3', path or None)."""
    rest = source[len(KERAS_PREFIX):]
    name, _, weights = rest.partition(":")
    if not name:
        raise app.UsageError(f"--source={source}: expected keras:<ApplicationName>[:<weights>]")
    return name, weights or None


def build_keras_source(source: str, image_size, num_classes: int):
    """Builds the `keras.applications` model a `keras:` source names.

    Returns a model for `[B, image_size, image_size, 3]` inputs with
    `num_classes` outputs; weights are random unless the source names a file.
    """
    name, weights = parse_keras_source(source)
    constructor = getattr(keras.applications, name, None)
    if constructor is None or not name.startswith("EfficientNetB"):
        raise app.UsageError(f"--source={source}: {name!r} is not a keras.applications "
                             "EfficientNetB0..B7 model")
    if image_size is None:
        raise app.UsageError("A keras: source needs a fixed input size")
    if weights is not None and not tf.io.gfile.exists(weights):
        raise FileNotFoundError(f"No weights file {weights}")
    keras_model = constructor(weights=None, input_shape=(image_size, image_size, 3),
                              classes=num_classes, classifier_activation=None)
    if weights is not None:
        keras_model.load_weights(weights)
    return keras_model


def _list_roots(source: str) -> int:
    reader = tf.train.load_checkpoint(source)
    roots = convert.find_roots(reader.get_variable_to_shape_map())
    if not roots:
        sys.stderr.write(f"No EfficientNet scope found in {source}\n")
        return 1
    for root in roots:
        print(root)
    return 0


def _build_target():
    model, _ = efficientnet.build_model(
        FLAGS.model_name, FLAGS.num_label_classes,
        width=FLAGS.width_coefficient, depth=FLAGS.depth_coefficient,
        resolution=FLAGS.input_image_size, small_image=FLAGS.small_image_model,
        normalization=_NORMALIZATIONS[FLAGS.normalization])
    return model


def convert_and_export() -> int:
    """Runs one conversion from the parsed flags; returns the exit status."""

    if FLAGS.no_ema and FLAGS["use_ema"].present and FLAGS.use_ema != "false":
        raise app.UsageError(f"--use_ema={FLAGS.use_ema} and --no_ema contradict each other")
    use_ema = False if FLAGS.no_ema else USE_EMA[FLAGS.use_ema]
    model = _build_target()
    if FLAGS.source.startswith(KERAS_PREFIX):
        keras_model = build_keras_source(FLAGS.source, model.image_size,
                                         FLAGS.num_label_classes)
        # keras.applications models carry no shadows, so --use_ema=true must fail here too.
        convert.choose_ema(FLAGS.source, use_ema, {v.path for v in keras_model.weights}, set())
        report = convert.load_keras_applications(model, keras_model)
    else:
        report = saving.load_weights(model, FLAGS.source, use_ema=use_ema,
                                     source=FLAGS.source_scope)
    summary = (f"Loaded {report.num_loaded} tensors into {model.config.name} "
               f"({len(model.config.blocks())} blocks, {model.config.num_classes} classes, "
               f"{model.image_size}px) from {report.source}")
    if report.root:
        summary += f", scope {report.root!r}"
    summary += f"; {report.num_from_ema} from EMA shadows"
    logging.info(summary)
    print(summary)

    if FLAGS.output_dir:
        prefix = saving.save_weights(model, FLAGS.output_dir)
        print(f"Wrote nst checkpoint {prefix}")
    if FLAGS.export_saved_model:
        saving.export_serving(model, FLAGS.export_saved_model, format="saved_model")
        print(f"Wrote SavedModel {FLAGS.export_saved_model}")
    if FLAGS.export_keras:
        saving.export_serving(model, FLAGS.export_keras, format="keras")
        print(f"Wrote Keras archive {FLAGS.export_keras}")
    if not (FLAGS.output_dir or FLAGS.export_saved_model or FLAGS.export_keras):
        print("No output requested: the weights fit the model; nothing written.")
    return 0


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.source:
        raise app.UsageError("--source is required")
    if FLAGS.export_keras and not FLAGS.export_keras.endswith(".keras"):
        raise app.UsageError(f"--export_keras must end in .keras, got {FLAGS.export_keras}")

    # Errors (CheckpointMismatchError, an unknown model name, a weights file of another
    # architecture, unreadable files) are one line: nst.cli_errors, via run().
    if FLAGS.list:
        if FLAGS.source.startswith(KERAS_PREFIX):
            raise app.UsageError("--list reads original checkpoints, not keras: sources")
        return _list_roots(FLAGS.source)
    return convert_and_export()


def run():
    """Console-script entry point (`nst-convert-checkpoint`)."""
    define_flags()
    cli_errors.run(main)


if __name__ == "__main__":
    run()
