"""Filter and class-balance pseudo labels: `python -m nst.filter_unlabel` (spec §2.4, §4).

One invocation runs one step; `--only_get_stats` picks it:

  1  histogram  for each shard of --shard_id and --task: prelim_stats_<shard>_<task>.json.
                The master job (the one with shard 0, task 0) then also runs the reduce
                if every histogram exists, and otherwise logs which are missing (the
                original's master behaviour, without its busy-wait: run the shards in
                any order, e.g. 127 down to 0, or run the reduce yourself afterwards).
  2  reduce     once: sums all histograms (an error lists missing ones) and writes
                total_counts*.json, threshold.json, num_image_across_cat.json.
  0  select     for each shard of --shard_id and --task: stats/stats_<shard>_<task>.json
                and data/train-<task>-<shard>-of-<num_shards>; fails at once if
                threshold.json is missing. A shard whose stats file exists is skipped.
                The master job then also finalizes if every shard is done, and otherwise
                logs which are not.
  3  finalize   once: stats/final_stats.json (an error lists shards not done yet).

--shard_id takes one shard, a list or ranges ('3', '0,1,2', '0-63,100'): one job then
handles those shards one after the other through one reader, which saves the reader's
set-up (~0.1 s) per shard; run several such jobs to use a machine's cores.

A complete local run over N shards (each line may run in parallel across shards):

  for i in 0..N-1: python -m nst.filter_unlabel --only_get_stats=1 --shard_id=$i ...
  python -m nst.filter_unlabel --only_get_stats=2 ...
  for i in 0..N-1: python -m nst.filter_unlabel --only_get_stats=0 --shard_id=$i ...
  python -m nst.filter_unlabel --only_get_stats=3 ...

Inputs: with --prediction_dir, the original layout (raw shards <input_dir>/<file_prefix>-
%05d-of-%05d, predictions <prediction_dir>/train-info-%05d-of-%05d-%05d, optional counts in
<info_dir>); without it, <input_dir>/<file_prefix>-* hold pseudo-labelled records (image,
image/id, probabilities). Images are joined with predictions by image id in both cases
(`nst.pseudo.join`). With --total_replicas=R there are R tasks per shard: task t handles
worker slice t (records with index mod R == t).

Changes from the original: --task defaults to 0 and must be in [0, total_replicas) (-1
deadlocked the original); total_label_replicas, debug, data_type and eval_imagenet_p are
gone (the slice count is checked against --total_replicas); copy counts are seeded per
image id (--seed) and the output is shuffled with a --shuffle_buffer-record buffer; no
sample JPEGs are dumped.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nst  # noqa: E402,F401  (pins the Keras backend)
from absl import app, flags, logging  # noqa: E402

from nst import cli_errors  # noqa: E402
from nst.data import writers  # noqa: E402
from nst.pseudo import filter as filter_lib  # noqa: E402
from nst.pseudo import filter_config  # noqa: E402

FLAGS = flags.FLAGS

HISTOGRAM, REDUCE, SELECT, FINALIZE = 1, 2, 0, 3


def define_flags(flag_values=FLAGS):
    """Registers the flags on `flag_values` (skipping names another tool already defined):
    one per `FilterConfig` field (`filter_config.define_flags`: names, types, defaults
    and help kept beside the dataclass) plus this binary's own --shard_id, --task and
    --only_get_stats."""
    filter_config.define_flags(flag_values)

    def define(kind, name, default, help_text, **kwargs):
        if name not in flag_values:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text,
                                              flag_values=flag_values, **kwargs)

    define("string", "shard_id", "0",
           "Shards handled by this process: '3', '0,1,2' or '0-9' (one after the other, "
           "through one reader).")
    define("integer", "task", 0, "Worker slice handled by this process, 0..total_replicas-1.")
    define("integer", "only_get_stats", 0,
           "Step: 1 histogram, 2 reduce, 0 select, 3 finalize (see the module doc).",
           lower_bound=0, upper_bound=3)


def config_from_flags(flag_values=FLAGS) -> filter_config.FilterConfig:
    return filter_config.config_from_flags(flag_values)


def run(flag_values=FLAGS):
    """Runs the step chosen by --only_get_stats; returns its result (tests use it): the
    thresholds (reduce, or a master histogram job that reduced), the final stats
    (finalize), else per shard of --shard_id the histogram path (1) or the copies per
    class (0; None for a shard already done) — one value for a single shard, a list for
    several."""
    config = config_from_flags(flag_values)
    step, task = flag_values.only_get_stats, flag_values.task
    if step == REDUCE:
        return filter_lib.reduce_histograms(config)
    if step == FINALIZE:
        return filter_lib.finalize_stats(config)
    shards = writers.parse_shard_ids(flag_values.shard_id, config.num_shards)
    for shard in shards:
        config.check_task(shard, task)
    if not config.input_dir:
        raise ValueError("--input_dir is required")
    master = any(filter_lib.is_master(shard, task) for shard in shards)
    if step == HISTOGRAM:
        paths = filter_lib.write_shard_histograms(config, shards, task)
        if master:
            missing = filter_lib.missing_histograms(config)
            if not missing:
                return filter_lib.reduce_histograms(config)
            logging.warning("Master job: not reducing yet, %d histogram(s) missing (run "
                            "those shards, then --only_get_stats=2): %s", len(missing),
                            missing)
        return paths[0] if len(shards) == 1 else paths
    stats = filter_lib.select_shards(config, shards, task)
    if master:
        missing = filter_lib.missing_stats(config)
        if not missing:
            filter_lib.finalize_stats(config)
        else:
            logging.info("Master job: not finalizing yet, %d shard(s) not selected (run "
                         "them, then --only_get_stats=3): %s", len(missing), missing)
    return stats[shards[0]] if len(shards) == 1 else [stats[shard] for shard in shards]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run(FLAGS)


def cli():
    define_flags()
    cli_errors.run(main)


if __name__ == "__main__":
    cli()
