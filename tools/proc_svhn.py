#!/usr/bin/env python
"""SVHN .mat files -> TFRecords, as the original proc_svhn.py (see nst.data.sources.svhn).

    python tools/proc_svhn.py --task_name=svhn --raw_data_dir=data/svhn/raw \
        --output_dir=data/svhn/proc

Existing .mat files in --raw_data_dir are used as they are (nothing is re-downloaded);
missing ones are downloaded unless --nodownload. Re-running with the same flags does
nothing. --full_train_data needs its own --output_dir (train_full-* would also match
train*); mixing both modes in one directory is refused.
"""

import json

import nst  # noqa: F401  (pins the Keras backend before TensorFlow-heavy imports)
from absl import app, flags
from nst import cli_errors

from nst.data.sources import svhn

FLAGS = flags.FLAGS
flags.DEFINE_string("task_name", "svhn", "Task to process; only 'svhn' is supported.")
flags.DEFINE_string("raw_data_dir", None, "Where the .mat files are / are downloaded to.",
                    required=True)
flags.DEFINE_string("output_dir", None, "TFRecord output root.", required=True)
flags.DEFINE_bool("full_train_data", False, "Keep all training images (no dev split, "
                  "dev := test) and add _full to the file names.")
# nst additions:
flags.DEFINE_integer("dev_size", svhn.DEV_SIZE, "Dev images taken from the shuffled train.")
flags.DEFINE_list("num_shards", [], "Shard count overrides as split=count, e.g. "
                  "train=16,extra=32 (default train 128, dev 64, test 64, extra 128).")
flags.DEFINE_bool("download", True, "Download missing .mat files.")
flags.DEFINE_bool("overwrite", False, "Replace output made with other flags.")


def parse_num_shards(items):
    """['train=16', 'extra=32'] -> {'train': 16, 'extra': 32}."""
    shards = {}
    for item in items:
        split, sep, count = item.partition("=")
        if not sep or not count.strip().isdigit():
            raise app.UsageError(f"--num_shards entries are split=count, got {item!r}")
        shards[split.strip()] = int(count)
    return shards


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.task_name != "svhn":
        raise app.UsageError(f"Only --task_name=svhn is supported, got {FLAGS.task_name!r}")
    info = svhn.proc_svhn(
        FLAGS.raw_data_dir, FLAGS.output_dir, full_train_data=FLAGS.full_train_data,
        dev_size=FLAGS.dev_size, num_shards=parse_num_shards(FLAGS.num_shards),
        download_missing=FLAGS.download, overwrite=FLAGS.overwrite)
    print(json.dumps({split: s["num_records"] for split, s in info["splits"].items()}))


if __name__ == "__main__":
    cli_errors.run(main)
