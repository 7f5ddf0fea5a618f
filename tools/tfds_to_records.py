#!/usr/bin/env python
"""A TFDS image-classification dataset -> nst TFRecords (see nst.data.sources.tfds_source).

    python tools/tfds_to_records.py --dataset=cifar10 --split=train \
        --output_dir=data/cifar10
    python tools/tfds_to_records.py --dataset=cifar10 --split=test --output_dir=data/cifar10
    python tools/tfds_to_records.py --dataset=svhn_cropped --split=extra --kind=unlabeled \
        --output_dir=data/svhn_tfds/unlabeled

The dataset must already be prepared in --data_dir unless --download.
"""

import json

import nst  # noqa: F401  (pins the Keras backend before TensorFlow-heavy imports)
from absl import app, flags
from nst import cli_errors

from nst.data.sources import tfds_source

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", None, "TFDS name, optionally with config/version.",
                    required=True)
flags.DEFINE_string("split", "train", "TFDS split, slicing allowed (train[:90%]).")
flags.DEFINE_string("output_dir", None, "Where the shards go.", required=True)
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's own).")
flags.DEFINE_enum("kind", "labeled", list(tfds_source.KINDS), "Record format to write.")
flags.DEFINE_string("prefix", None, "File prefix (default: split name, or 'extra' for "
                    "unlabeled).")
flags.DEFINE_integer("num_shards", None, "Shards (default: about 10,000 records each).")
flags.DEFINE_string("image_key", "image", "Image feature.")
flags.DEFINE_string("label_key", "label", "ClassLabel feature; empty for none (unlabeled).")
flags.DEFINE_string("id_key", tfds_source.TFDS_ID, "'tfds_id', a string feature, or empty "
                    "for <dataset>/<split>/<index>.")
flags.DEFINE_integer("image_size", None, "Resize to this square size (default: keep).")
flags.DEFINE_bool("dummy_pseudo_labels", False, "(unlabeled) add the original's dummy "
                  "probabilities/label/prob fields.")
flags.DEFINE_bool("download", False, "Download and prepare the dataset first.")
flags.DEFINE_bool("overwrite", False, "Replace existing <prefix>-* shards.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    result = tfds_source.tfds_to_records(
        FLAGS.dataset, FLAGS.split, FLAGS.output_dir, data_dir=FLAGS.data_dir,
        kind=FLAGS.kind, prefix=FLAGS.prefix, num_shards=FLAGS.num_shards,
        image_key=FLAGS.image_key, label_key=FLAGS.label_key or None,
        id_key=FLAGS.id_key or None, image_size=FLAGS.image_size,
        dummy_pseudo_labels=FLAGS.dummy_pseudo_labels, download=FLAGS.download,
        overwrite=FLAGS.overwrite)
    print(json.dumps({k: result[k] for k in ("num_records", "num_classes", "pattern")}))


if __name__ == "__main__":
    cli_errors.run(main)
