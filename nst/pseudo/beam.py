"""The filter/balance stage (spec §4) as one Apache Beam pipeline: `python -m nst.pseudo.beam`.

The unit of parallelism is the (shard, task) pair, exactly the unit of the local jobs of
`nst.filter_unlabel`, and each pair runs the same per-shard code (`nst.pseudo.filter`,
which streams one shard through `reader`/`join`, `histogram` and `select`). The outputs are
therefore the files of a local run with the same flags: same names, same JSON bytes, same
records in the same order.

  pass 1   Create[(shard, task)] -> Reshuffle -> ParDo(histogram)
             writes prelim_stats_%05d_%d.json (kept if it exists, as locally) and emits its
             int64 [K, 101] histogram
           -> CombineGlobally(sum) -> Map(publish)
             total_counts.json, total_counts_sum.json, filter_config.json,
             num_image_across_cat.json, threshold.json; emits threshold.json's content
  pass 2   Create[(shard, task)] -> Reshuffle -> ParDo(select, thresholds=AsSingleton)
             data/train-%d-%05d-of-%05d (atomic temp + rename), stats/stats_%05d_%d.json
             (a pair whose stats file exists is finished and skipped, as locally)
           -> Count.Globally -> Map(finalize)  stats/final_stats.json

Both input layouts of `nst.pseudo.layout` work (pseudo-labelled records, or raw shards plus
`train-info-*` predictions joined by id): each worker runs the local per-shard join.
Copy counts are seeded per (seed, image id) and the output shuffle per (seed, shard,
task), so neither Beam's scheduling nor a retried bundle changes the output.

`output_dir` (and `prelim_stats_dir`) must be storage that every worker sees, e.g.
gs://bucket/dir on Dataflow; the DirectRunner works on local paths.
"""

import difflib
import os
import re
import shlex
import sys
from typing import Dict, List, Sequence, Tuple, Union

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nst  # noqa: E402,F401  (pins the Keras backend)
import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from nst import cli_errors, fileio, filter_unlabel  # noqa: E402
from nst.pseudo import filter as filter_lib  # noqa: E402
from nst.pseudo import filter_config  # noqa: E402
from nst.pseudo import histogram as hist_lib  # noqa: E402

FLAGS = flags.FLAGS
_METRICS = "nst_filter"
ShardKey = Tuple[int, int]  # (shard, task)


# --------------------------------------------------------------------------- pass 1


class ShardHistogramFn(beam.DoFn):
    """(shard, task) -> its histogram int64 [K, 101]; writes prelim_stats_<shard>_<task>.json.

    An existing histogram file is kept and read back (a resumed or retried run does not
    redo the shard), which is also what the local reduce sums.
    """

    def __init__(self, config: filter_config.FilterConfig):
        self._config = config
        self._images = beam.metrics.Metrics.counter(_METRICS, "histogram_images")

    def process(self, key: ShardKey):
        shard, task = key
        filter_lib.write_shard_histogram(self._config, shard, task)
        hist = filter_lib.read_shard_histogram(self._config, shard, task)
        self._images.inc(int(hist.sum()))
        yield hist


class SumHistograms(beam.CombineFn):
    """Sum of int64 [K, 101] histograms (histograms of disjoint image sets add up)."""

    def __init__(self, num_classes: int):
        self._shape = (num_classes, hist_lib.NUM_BUCKETS)

    def create_accumulator(self):
        return np.zeros(self._shape, np.int64)

    def add_input(self, accumulator, hist):
        hist = np.asarray(hist, np.int64)
        if hist.shape != self._shape:  # a histogram of another K: never mix silently
            raise ValueError(f"histogram of shape {hist.shape}, expected {self._shape}")
        accumulator += hist  # Beam lets add_input update the accumulator in place
        return accumulator

    def merge_accumulators(self, accumulators):
        total = self.create_accumulator()
        for accumulator in accumulators:
            total += accumulator
        return total

    def extract_output(self, accumulator):
        return accumulator


def _publish(total: np.ndarray, config: filter_config.FilterConfig) -> Dict:
    """The combined histogram -> the reduce step's files, exactly as the local reduce
    writes them; returns threshold.json's content {"<class>": [threshold, total]}."""
    return filter_lib.publish_thresholds(config, total).to_json()


# --------------------------------------------------------------------------- pass 2


class SelectShardFn(beam.DoFn):
    """(shard, task), side input threshold.json content -> (shard, task) once its data file
    and stats/stats_<shard>_<task>.json are written (`filter.select_shard`)."""

    def __init__(self, config: filter_config.FilterConfig):
        self._config = config
        self._records = beam.metrics.Metrics.counter(_METRICS, "records_written")
        self._skipped = beam.metrics.Metrics.counter(_METRICS, "shards_already_selected")

    def process(self, key: ShardKey, thresholds_json: Dict):
        shard, task = key
        # Plain JSON types cross the runner's side-input coder; K = 1000 rebuilds in ~1 ms.
        thresholds = hist_lib.Thresholds.from_json(thresholds_json,
                                                   self._config.num_label_classes)
        stats = filter_lib.select_shard(self._config, shard, task, thresholds)
        if stats is None:
            self._skipped.inc()
        else:
            self._records.inc(sum(stats.values()))
        yield key


def _finalize(num_selected: int, config: filter_config.FilterConfig) -> Dict:
    expected = config.num_shards * config.total_replicas
    if num_selected != expected:
        raise RuntimeError(f"{num_selected} (shard, task) pairs selected, expected {expected}")
    return filter_lib.finalize_stats(config)  # reads every stats file, as the local step


# --------------------------------------------------------------------------- pipeline


def _shard_keys(shards, total_replicas: int) -> List[ShardKey]:
    return [(s, t) for s in shards for t in range(total_replicas)]


def _keys(pipeline, label: str, keys: List[ShardKey], after=None):
    """The (shard, task) keys as a PCollection: created at once, or, with `after` (a
    PCollection of one element), only once that element exists, so that the pass reads
    files which an earlier part of the same pipeline writes (`nst.pseudo.beam_predict`)."""
    if after is None:
        return pipeline | label >> beam.Create(keys)
    return after | label >> beam.FlatMap(lambda _, keys: list(keys), keys)


def build_pipeline(pipeline: beam.Pipeline, config: filter_config.FilterConfig,
                   after=None):
    """Adds both passes to `pipeline`; returns the PCollection of the one final-stats dict.
    `after`: a one-element PCollection the passes wait for (`_keys`)."""
    if not config.input_dir:
        raise ValueError("--input_dir is required")
    # Reshuffle after Create: the runner may then spread the pairs over workers instead of
    # fusing them into the single bundle that Create makes.
    hists = (_keys(pipeline, "HistogramKeys",
                   _shard_keys(config.histogram_shards(), config.total_replicas), after)
             | "SpreadHistograms" >> beam.Reshuffle()
             | "ShardHistograms" >> beam.ParDo(ShardHistogramFn(config)))
    thresholds = (hists
                  | "SumHistograms" >> beam.CombineGlobally(
                      SumHistograms(config.num_label_classes))
                  | "PublishThresholds" >> beam.Map(_publish, config))
    # Selection runs on every shard, also with --only_use_num_shards (as locally).
    selected = (_keys(pipeline, "SelectKeys",
                      _shard_keys(range(config.num_shards), config.total_replicas), after)
                | "SpreadSelection" >> beam.Reshuffle()
                | "SelectShards" >> beam.ParDo(SelectShardFn(config),
                                               beam.pvalue.AsSingleton(thresholds)))
    return (selected
            | "CountSelected" >> beam.combiners.Count.Globally()
            | "FinalStats" >> beam.Map(_finalize, config))


PipelineArgs = Union[None, PipelineOptions, Sequence[str]]


def pipeline_options_from(options: PipelineArgs) -> PipelineOptions:
    """None -> the in-process DirectRunner; a list of args such as ["--runner=
    DataflowRunner", "--project=p", ...] -> PipelineOptions; PipelineOptions as is."""
    if isinstance(options, PipelineOptions):
        return options
    return PipelineOptions(list(options or []))


def run_beam_filter(config: filter_config.FilterConfig,
                    pipeline_options: PipelineArgs = None) -> Dict:
    """Runs both passes and waits; returns final_stats.json's content
    {"cat_count": ..., "cat_sorted_pairs": ..., "total_cnt": N}.

    A failing shard fails the pipeline with the runner's error, whose message includes
    the local code's (e.g. the file and record that could not be read).
    """
    with beam.Pipeline(options=pipeline_options_from(pipeline_options)) as pipeline:
        build_pipeline(pipeline, config)
    # Read back rather than collected: runners do not return PCollection contents.
    return fileio.read_json(config.path("final_stats.json"))


# --------------------------------------------------------------------------- command line

_IGNORED_FLAGS = ("only_get_stats", "shard_id", "task")  # the pipeline runs every step


def define_flags(flag_values=FLAGS):
    """The flags of `nst.filter_unlabel` plus --beam_args: one per FilterConfig field
    (`filter_config.define_flags`), and that binary's own --only_get_stats, --shard_id and
    --task, accepted and ignored (`_IGNORED_FLAGS`)."""
    filter_unlabel.define_flags(flag_values)
    if "beam_args" not in flag_values:
        flags.DEFINE_string("beam_args", "",
                            "Beam pipeline options as one shell-quoted string, e.g. "
                            "'--runner=DataflowRunner --project=p'. Options that are no "
                            "flag of this tool may also be given directly.",
                            flag_values=flag_values)


def unknown_options(args: Sequence[str]) -> List[str]:
    """The words of `args` (up to a '--') that look like options but that none of Beam's
    pipeline options parses: Beam's own parser (`PipelineOptions.get_all_options`, over
    every options class imported, i.e. the standard, direct, Google Cloud, worker, setup,
    portable, Flink and Spark ones) decides. Beam itself only warns about such a word and
    drops it or passes it on."""
    args = list(args)
    if "--" in args:
        args = args[:args.index("--")]
    single = [a for a in args if re.match(r"-[A-Za-z_]", a)]  # -x: no Beam option looks so
    known = PipelineOptions([]).get_all_options()
    parsed = PipelineOptions([a for a in args if a not in single]).get_all_options(
        retain_unknown_options=True)
    unparsed = set(parsed) - set(known)  # the unknown ones, by argparse's dest
    return [a for a in args if a in single
            or (a.startswith("--") and _dest(a) in unparsed)]


def _dest(option: str) -> str:
    """argparse's attribute name of '--some-name[=value]': some_name."""
    return option.lstrip("-").split("=", 1)[0].replace("-", "_")


def _unknown_error(unknown: Sequence[str], flag_values) -> flags.Error:
    names = sorted(set(flag_values) | set(PipelineOptions([]).get_all_options()))
    words = []
    for option in unknown:
        close = difflib.get_close_matches(_dest(option), names, n=1)
        words.append(f"{option} (did you mean --{close[0]}?)" if close else option)
    return flags.Error(
        f"Unknown command line flag{'s' if len(words) > 1 else ''} {', '.join(words)}: "
        f"neither a flag of this tool nor a Beam pipeline option (options that only a "
        f"runner's job server knows go in --beam_args, which is passed on unchecked)")


def split_argv(argv: Sequence[str], flag_values=FLAGS) -> List[str]:
    """Parses this tool's flags from argv; returns the rest (Beam's options), followed by
    the words of --beam_args. Raises flags.Error naming every word of the rest that looks
    like an option but is no Beam pipeline option either (`unknown_options`): a misspelt
    flag such as --num_shard=4 stops the tool before any work."""
    rest = flag_values(list(argv), known_only=True)[1:]
    unknown = unknown_options(rest)
    if unknown:
        raise _unknown_error(unknown, flag_values)
    return rest + shlex.split(flag_values.beam_args)


def run(flag_values=FLAGS, beam_argv: Sequence[str] = ()) -> Dict:
    for name in _IGNORED_FLAGS:
        if flag_values[name].present:
            logging.warning("--%s is ignored: the Beam pipeline runs every step on every "
                            "shard and task", name)
    return run_beam_filter(filter_config.config_from_flags(flag_values), list(beam_argv))


def main(argv):
    final = run(FLAGS, argv[1:])  # errors: one line (nst.cli_errors, via cli)
    logging.info("Filter done: %d records", final["total_cnt"])


def _parse_flags(argv: Sequence[str], flag_values=FLAGS) -> List[str]:
    """app.run's flags_parser: this tool's flags, the rest is passed on to Beam. A bad
    value of one of this tool's flags, or an unknown flag, raises flags.Error, which
    `cli_errors.run` prints as one line."""
    return [argv[0]] + split_argv(argv, flag_values)


def cli():
    define_flags()
    cli_errors.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    cli()
