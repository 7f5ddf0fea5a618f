#!/usr/bin/env python
"""Writes Fashion-MNIST as labeled/dev/test/unlabeled TFRecords (nst.data.sources.fashion_mnist).

    apt-get install dataset-fashion-mnist      # the four IDX files, offline
    python tools/make_fashion_mnist.py --output_dir=data/fashion_mnist
    python tools/make_fashion_mnist.py --output_dir=data/fm_s1 --labels_per_class=40 --seed=1

Layout: <output_dir>/{train,dev,test}-%05d-of-%05d, <output_dir>/unlabeled/extra-…,
<output_dir>/dataset_info.json. Re-running with the same flags does nothing.
"""

import json

import nst  # noqa: F401  (pins the Keras backend before TensorFlow-heavy imports)
from absl import app, flags

from nst.data.sources import fashion_mnist

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Output root.", required=True)
flags.DEFINE_string("source_dir", fashion_mnist.DEFAULT_SOURCE_DIR,
                    "Directory of the four IDX files (gzip or raw); the default is where "
                    "`apt-get install dataset-fashion-mnist` puts them.")
flags.DEFINE_enum("source", "idx", list(fashion_mnist.SOURCES),
                  "idx: the IDX files in --source_dir; tfds: a prepared TFDS fashion_mnist.")
flags.DEFINE_string("tfds_data_dir", None, "--source=tfds: TFDS data_dir.")
flags.DEFINE_integer("labels_per_class", 40, "Labeled training images per class.")
flags.DEFINE_integer("seed", 0, "Seed of the labeled/unlabeled split.")
flags.DEFINE_integer("dev_per_class", fashion_mnist.DEV_PER_CLASS,
                     "Dev images per class (the same ones for every --seed).")
flags.DEFINE_integer("num_shards", None, "Shards per split (default: train/dev 2, test 4, "
                     "extra 8).")
flags.DEFINE_bool("overwrite", False, "Replace a dataset made with other arguments.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        info = fashion_mnist.make_fashion_mnist_dataset(
            FLAGS.output_dir, labels_per_class=FLAGS.labels_per_class, seed=FLAGS.seed,
            dev_per_class=FLAGS.dev_per_class,
            source_dir=FLAGS.source_dir, source=FLAGS.source,
            tfds_data_dir=FLAGS.tfds_data_dir, num_shards=FLAGS.num_shards,
            overwrite=FLAGS.overwrite)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    print(json.dumps({split: s["num_records"] for split, s in info["splits"].items()}))


if __name__ == "__main__":
    app.run(main)
