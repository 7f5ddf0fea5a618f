"""Command lines that write the generated datasets as TFRecords (the pipeline's data stage).

    nst-make-digits --output_dir=data/digits          # sklearn's bundled digits, offline
    nst-make-digits --output_dir=data/digits --labels_per_class=20 --seed=1
    apt-get install dataset-fashion-mnist              # the four IDX files, offline
    nst-make-fashion-mnist --output_dir=data/fashion_mnist
    nst-make-fashion-mnist --output_dir=data/fm_s1 --labels_per_class=40 --seed=1

(also `python tools/make_digits.py` / `python tools/make_fashion_mnist.py` in a checkout).
Layout: <output_dir>/{train,dev,test}-%05d-of-%05d, <output_dir>/unlabeled/extra-…,
<output_dir>/dataset_info.json. Re-running with the same flags does nothing. Each prints
the record count of every split as one JSON line.
"""

import json

import nst  # noqa: F401  (pins the Keras backend before TensorFlow-heavy imports)
from absl import app, flags

from nst import cli_errors
from nst.data.sources import digits
from nst.data.sources import fashion_mnist

FLAGS = flags.FLAGS


def _print_counts(info):
    print(json.dumps({split: s["num_records"] for split, s in info["splits"].items()}))


def _define_digits_flags():
    flags.DEFINE_string("output_dir", None, "Output root.", required=True)
    flags.DEFINE_integer("labels_per_class", 10, "Labeled training images per class.")
    flags.DEFINE_float("test_fraction", 0.3, "Per-class fraction held out for test.")
    flags.DEFINE_float("dev_fraction", 0.1, "Per-class fraction held out for dev.")
    flags.DEFINE_integer("seed", 0, "Seed of the split.")
    flags.DEFINE_integer("num_shards", None, "Shards per split (default: train/dev/test 2, "
                         "extra 4).")
    flags.DEFINE_bool("overwrite", False, "Replace a dataset made with other arguments.")


def _digits_main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    _print_counts(digits.make_digits_dataset(
        FLAGS.output_dir, labels_per_class=FLAGS.labels_per_class,
        test_fraction=FLAGS.test_fraction, dev_fraction=FLAGS.dev_fraction,
        seed=FLAGS.seed, num_shards=FLAGS.num_shards, overwrite=FLAGS.overwrite))


def _define_fashion_mnist_flags():
    flags.DEFINE_string("output_dir", None, "Output root.", required=True)
    flags.DEFINE_string("source_dir", fashion_mnist.DEFAULT_SOURCE_DIR,
                        "Directory of the four IDX files (gzip or raw); the default is "
                        "where `apt-get install dataset-fashion-mnist` puts them.")
    flags.DEFINE_enum("source", "idx", list(fashion_mnist.SOURCES),
                      "idx: the IDX files in --source_dir; tfds: a prepared TFDS "
                      "fashion_mnist.")
    flags.DEFINE_string("tfds_data_dir", None, "--source=tfds: TFDS data_dir.")
    flags.DEFINE_integer("labels_per_class", 40, "Labeled training images per class.")
    flags.DEFINE_integer("seed", 0, "Seed of the labeled/unlabeled split.")
    flags.DEFINE_integer("dev_per_class", fashion_mnist.DEV_PER_CLASS,
                         "Dev images per class (the same ones for every --seed).")
    flags.DEFINE_integer("num_shards", None, "Shards per split (default: train/dev 2, "
                         "test 4, extra 8).")
    flags.DEFINE_bool("overwrite", False, "Replace a dataset made with other arguments.")


def _fashion_mnist_main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    info = fashion_mnist.make_fashion_mnist_dataset(
        FLAGS.output_dir, labels_per_class=FLAGS.labels_per_class, seed=FLAGS.seed,
        dev_per_class=FLAGS.dev_per_class,
        source_dir=FLAGS.source_dir, source=FLAGS.source,
        tfds_data_dir=FLAGS.tfds_data_dir, num_shards=FLAGS.num_shards,
        overwrite=FLAGS.overwrite)
    _print_counts(info)


# The flags are defined when a command starts, not at import: the two commands share
# flag names with different defaults (--labels_per_class 10 vs 40).

def digits_cli():
    """`nst-make-digits`: the offline digits demo dataset (nst.data.sources.digits)."""
    _define_digits_flags()
    cli_errors.run(_digits_main)


def fashion_mnist_cli():
    """`nst-make-fashion-mnist`: Fashion-MNIST (nst.data.sources.fashion_mnist)."""
    _define_fashion_mnist_flags()
    cli_errors.run(_fashion_mnist_main)
