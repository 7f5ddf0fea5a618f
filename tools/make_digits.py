#!/usr/bin/env python
"""Writes the offline digits demo dataset (see nst.data.sources.digits).

    python tools/make_digits.py --output_dir=data/digits
    python tools/make_digits.py --output_dir=data/digits --labels_per_class=20 --seed=1

Layout: <output_dir>/{train,dev,test}-%05d-of-%05d, <output_dir>/unlabeled/extra-…,
<output_dir>/dataset_info.json. Re-running with the same flags does nothing.
"""

import json

import nst  # noqa: F401  (pins the Keras backend before TensorFlow-heavy imports)
from absl import app, flags

from nst.data.sources import digits

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Output root.", required=True)
flags.DEFINE_integer("labels_per_class", 10, "Labeled training images per class.")
flags.DEFINE_float("test_fraction", 0.3, "Per-class fraction held out for test.")
flags.DEFINE_float("dev_fraction", 0.1, "Per-class fraction held out for dev.")
flags.DEFINE_integer("seed", 0, "Seed of the split.")
flags.DEFINE_integer("num_shards", None, "Shards per split (default: train/dev/test 2, "
                     "extra 4).")
flags.DEFINE_bool("overwrite", False, "Replace a dataset made with other arguments.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    info = digits.make_digits_dataset(
        FLAGS.output_dir, labels_per_class=FLAGS.labels_per_class,
        test_fraction=FLAGS.test_fraction, dev_fraction=FLAGS.dev_fraction,
        seed=FLAGS.seed, num_shards=FLAGS.num_shards, overwrite=FLAGS.overwrite)
    print(json.dumps({split: s["num_records"] for split, s in info["splits"].items()}))


if __name__ == "__main__":
    app.run(main)
