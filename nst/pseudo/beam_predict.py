"""The whole pseudo-labelling stage as one Apache Beam job: `python -m nst.pseudo.beam_predict`
(console: `nst-pseudo-label-beam`).

predict (`--mode=predict`) -> histogram -> thresholds -> select -> filtered shards + stats:

  predict  Create[shard] -> Reshuffle -> skip shards whose outputs exist (resume)
           -> ParDo(ReadShardFn)   a shard's rows (shard, index, id, image, true label)
              in batches of predict_batch_size cut from its first record, as
              `--mode=predict` cuts them
           -> RunInference(TeacherModelHandler)  one such batch per call -> decode + eval
              view + teacher (EMA weights, inference mode) ->
              (shard, [(row, probabilities float32 [K])])
           -> CoGroupByKey with the shard keys (a shard of no record still gets its file)
           -> ParDo(WriteShardFn)  rows in file order through `predict.SliceOutput`: the
              records, info file and count check of `--mode=predict`, published atomically
              <output_dir>/<file_prefix>-%05d-of-%05d, <info_dir>/info-*.txt
  filter   after every shard is written (`Count.Globally` gate): the two passes of
           `nst.pseudo.beam.build_pipeline` over those files (its transforms, the local
           per-shard code) -> <filter_output_dir>/data/train-0-*, threshold.json, stats/

Because the model sees the same batches as in `--mode=predict` (on some CPUs an image's
probabilities depend in the last bits on the batch it is in), the records are encoded by
predict's own writer from those outputs, and the filter is the same per-shard code, the
filtered records and the statistics equal those of `nst-main --mode=predict` +
`nst-filter-unlabel` (tests/pseudo/test_beam_predict.py).

The model is loaded once per worker process: RunInference keeps the handler's model in
Beam's per-process `shared.Shared` cache, so the DoFn instances of all threads of a worker
use one copy. `share_model_across_processes` (one copy per machine behind a proxy process)
is not used: every batch of images would then cross a process boundary, and the teacher
of this project fits each worker process (the paper's L2 on one accelerator per process).

Memory: the rows of one shard (encoded images and probabilities) are grouped in one worker
to be written in file order; choose --num_shards so that a shard fits.

Flags: those of `nst-main` that `--mode=predict` uses (one definition, `nst.config`), the
filter's of `nst-filter-unlabel` that predict does not have already (`nst.pseudo.
filter_config`), and --filter_output_dir; Beam options pass through, unknown words are
refused (`nst.pseudo.beam.split_argv`).
"""

import dataclasses
import os
from typing import Dict, Iterable, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nst  # noqa: E402,F401  (pins the Keras backend)
import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags, logging  # noqa: E402
from apache_beam.ml.inference.base import ModelHandler, RunInference  # noqa: E402

from nst import config as config_lib  # noqa: E402
from nst import cli_errors, distribute, fileio  # noqa: E402
from nst.data import input_pipeline as ip  # noqa: E402
from nst.data import readers, wire  # noqa: E402
from nst.models import saving  # noqa: E402
from nst.pseudo import beam as beam_lib  # noqa: E402
from nst.pseudo import filter_config  # noqa: E402
from nst.pseudo import predict  # noqa: E402

FLAGS = flags.FLAGS
_METRICS = "nst_pseudo_label"


@dataclasses.dataclass(frozen=True)
class Row:
    """One unlabeled record on its way through the job (image: its encoded bytes)."""

    shard: int
    index: int
    image_id: bytes
    image: bytes
    true_label: int  # -1: none stored


# --------------------------------------------------------------------------- checks


def check_job(config: config_lib.ExperimentConfig, filter_cfg: filter_config.FilterConfig):
    """Everything that can be checked before any work: flags this job does not support,
    the teacher checkpoint and its class count, every input shard, and the info files'
    counts. Raises ValueError / FileNotFoundError naming the flag or file."""
    for name, value, why in (
            ("reassign_label", config.reassign_label, "re-labelling runs with nst-main"),
            ("total_replicas", config.total_replicas != 1, "the job predicts whole shards"),
            ("skip_corrupt", config.skip_corrupt, "a bad record fails the job, naming it"),
            ("write_train_info", config.write_train_info, "it writes pseudo-labelled records")):
        if value:
            raise ValueError(f"--{name} is not supported by nst-pseudo-label-beam ({why})")
    if not config.predict_ckpt_path:
        raise ValueError("nst-pseudo-label-beam needs --predict_ckpt_path")
    path = config.predict_ckpt_path
    if not saving.checkpoint_exists(path):
        raise FileNotFoundError(f"No checkpoint at --predict_ckpt_path={path}")
    stored = saving.stored_model_config(path)
    if stored is not None and stored[0].num_classes != config.num_label_classes:
        raise ValueError(f"The model at --predict_ckpt_path={path} predicts "
                         f"{stored[0].num_classes} classes but --num_label_classes is "
                         f"{config.num_label_classes}")
    if os.path.abspath(filter_cfg.output_dir) == os.path.abspath(config.output_dir):
        raise ValueError("--filter_output_dir must differ from --output_dir (the "
                         "pseudo-labelled records)")
    for s in predict.plan(config):
        if all(tf.io.gfile.exists(p) for p in s.outputs):
            continue  # predicted by an earlier run: its input is not needed again
        if not tf.io.gfile.exists(s.input_path):
            raise FileNotFoundError(f"Input shard {s.input_path} does not exist "
                                    f"(--label_data_dir, --file_prefix, --num_shards)")
        expected = predict._info_count(s)
        if expected is not None and expected != predict.count_slice(s):
            raise ValueError(f"Count mismatch for shard {s.shard}: {s.input_path} holds "
                             f"{predict.count_slice(s)} records but the info file "
                             f"{s.info_path} says {expected}")


# --------------------------------------------------------------------------- predict


class ReadShardFn(beam.DoFn):
    """shard -> its records as lists of `Row`s in file order (the reader of
    `--mode=predict`): predict_batch_size rows each, the shard's last list shorter."""

    def __init__(self, config: config_lib.ExperimentConfig):
        self._config = config
        self._rows = beam.metrics.Metrics.counter(_METRICS, "records_read")

    def process(self, shard: int) -> Iterable[List[Row]]:
        c = self._config
        s = _slices(c)[shard]
        records = readers.read_examples([s.input_path], "unlabeled", c.num_label_classes,
                                        deterministic=True, cycle_length=1)
        for batch in records.batch(c.predict_batch_size).as_numpy_iterator():
            yield [Row(shard, int(batch["index"][i]), batch["id"][i], batch["image"][i],
                       int(batch["true_label"][i])) for i in range(len(batch["index"]))]
            self._rows.inc(len(batch["index"]))


class Teacher:
    """The loaded teacher of one worker process: encoded images -> probabilities.

    `__call__(images: list of n encoded images, n <= batch_size)` -> float32 [n, K]
    (little-endian, as `--mode=predict` stores them): decode and eval view in one traced
    function (`predict.eval_pixels`, padded to batch_size so it traces once), then the
    padded fixed-size batch of `predict.Predictor`.
    """

    def __init__(self, config: config_lib.ExperimentConfig):
        distribute.set_precision(config.use_bfloat16)
        model = predict.load_teacher(config)
        self.predictor = predict.Predictor(model, config.predict_batch_size)
        view = ip.ViewConfig(image_size=model.image_size, small_image=config.small_image_model)
        self._pixels = tf.function(
            lambda images: tf.map_fn(lambda image: predict.eval_pixels(view, image), images,
                                     fn_output_signature=tf.float32),
            input_signature=[tf.TensorSpec([config.predict_batch_size], tf.string)])

    def __call__(self, images: List[bytes]) -> np.ndarray:
        n = len(images)
        padded = list(images) + [images[0]] * (self.predictor.batch_size - n)
        pixels = self._pixels(tf.constant(padded)).numpy()[:n]
        return np.ascontiguousarray(self.predictor(pixels), "<f4")


class TeacherModelHandler(ModelHandler):
    """RunInference's handler for our checkpoints: `load_model` builds the Keras model of
    --predict_ckpt_path and restores its EMA weights exactly as `--mode=predict` does
    (`predict.load_teacher`); `run_inference` labels one element, a list of one shard's
    `Row`s (`ReadShardFn`), in inference mode as one batch and yields
    (shard, [(row, probabilities float32 [K])]) for the grouping by shard.

    The stock TensorFlow handlers load a SavedModel or a model class with
    `model.load_weights`, which know neither `model_config.json` nor the EMA shadows of
    our (or the original TF1) checkpoints, hence this subclass. The batches are made by
    `ReadShardFn`, not by RunInference (`batch_elements_kwargs`: one element per call):
    batches of rows of several shards or cut elsewhere in a shard would change the
    last bits of some probabilities on some CPUs."""

    def __init__(self, config: config_lib.ExperimentConfig):
        super().__init__()
        self._config = config

    def load_model(self) -> Teacher:
        return Teacher(self._config)

    def run_inference(self, batch: Sequence[List[Row]], model: Teacher,
                      inference_args: Optional[Dict] = None):
        out = []
        for rows in batch:  # one list (batch_elements_kwargs)
            probabilities = model([row.image for row in rows])
            out.append((rows[0].shard, list(zip(rows, probabilities))))
        return out

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": 1}

    def share_model_across_processes(self) -> bool:
        return False  # one model per worker process (module doc)


class WriteShardFn(beam.DoFn):
    """(shard, {"shard": [...], "rows": [[(Row, probabilities)]]}) -> shard, once its
    outputs are published: the rows in file order through `predict.SliceOutput`, the
    writer of `--mode=predict` (records, info file, count check, temp + rename)."""

    def __init__(self, config: config_lib.ExperimentConfig):
        self._config = config
        self._records = beam.metrics.Metrics.counter(_METRICS, "records_written")

    def process(self, element):
        shard, grouped = element
        rows = sorted((pair for batch in grouped["rows"] for pair in batch),
                      key=lambda pair: pair[0].index)
        s = _slices(self._config)[shard]
        k = self._config.num_label_classes
        batch = {"index": np.array([r.index for r, _ in rows], np.int64),
                 "id": [r.image_id for r, _ in rows], "image": [r.image for r, _ in rows],
                 "true_label": np.array([r.true_label for r, _ in rows], np.int64)}
        probabilities = (np.stack([p for _, p in rows]) if rows
                         else np.zeros((0, k), "<f4"))
        output = predict.SliceOutput(s, s.input_path, self._config)
        try:
            output.write(batch, probabilities, probabilities.argmax(axis=1), range(len(rows)),
                         wire.PseudoLabeledEncoder(), None)
            output.finish(None)
        except BaseException:
            output.abort()
            raise
        self._records.inc(len(rows))
        yield shard


def _slices(config: config_lib.ExperimentConfig) -> Dict[int, predict.Slice]:
    return {s.shard: s for s in predict.plan(config)}


def _not_predicted(shard: int, config: config_lib.ExperimentConfig) -> bool:
    s = _slices(config)[shard]
    done = all(tf.io.gfile.exists(p) for p in s.outputs)
    if done:
        logging.info("Shard %d: %s exists, not predicted again", shard, s.output_path)
    return not done


def predict_shards(pipeline: beam.Pipeline, config: config_lib.ExperimentConfig):
    """Adds the predict part to `pipeline`; returns the PCollection of the one count of
    shards it wrote (present once all are published)."""
    shards = (pipeline
              | "Shards" >> beam.Create(sorted(_slices(config)))
              | "SpreadShards" >> beam.Reshuffle()
              | "NotPredictedYet" >> beam.Filter(_not_predicted, config))
    predictions = (shards
                   | "ReadShards" >> beam.ParDo(ReadShardFn(config))
                   | "Teacher" >> RunInference(TeacherModelHandler(config)))
    written = ({"shard": shards | "ShardKeys" >> beam.Map(lambda s: (s, s)),
                "rows": predictions}
               | "GroupByShard" >> beam.CoGroupByKey()
               | "WriteShards" >> beam.ParDo(WriteShardFn(config)))
    return written | "AllPredicted" >> beam.combiners.Count.Globally()


def build_pipeline(pipeline: beam.Pipeline, config: config_lib.ExperimentConfig,
                   filter_cfg: filter_config.FilterConfig):
    """Adds predict and both filter passes to `pipeline`; returns the PCollection of the
    one final-stats dict."""
    return beam_lib.build_pipeline(pipeline, filter_cfg, after=predict_shards(pipeline, config))


def run_pseudo_label_beam(config: config_lib.ExperimentConfig,
                          filter_cfg: filter_config.FilterConfig,
                          pipeline_options: beam_lib.PipelineArgs = None) -> Dict:
    """Checks the inputs (`check_job`), runs the job and waits; returns final_stats.json's
    content. `config` is a finalised predict ExperimentConfig, `filter_cfg` reads its
    output_dir."""
    check_job(config, filter_cfg)
    tf.io.gfile.makedirs(config.output_dir)
    with beam.Pipeline(options=beam_lib.pipeline_options_from(pipeline_options)) as p:
        build_pipeline(p, config, filter_cfg)
    return fileio.read_json(filter_cfg.path("final_stats.json"))


# --------------------------------------------------------------------------- command line

# The filter's flags that name its input: the job's input is the predictions it writes.
_FILTER_INPUT_FLAGS = ("input_dir", "output_dir", "prediction_dir")
# Accepted and ignored: the job runs every shard and every step.
_IGNORED_FLAGS = ("shard_id", "mode")


def define_flags(flag_values=FLAGS):
    """nst-main's flags (`nst.config.define_flags`), the filter's that it lacks
    (`filter_config.flag_definitions`, without input_dir/output_dir/prediction_dir),
    --filter_output_dir and --beam_args."""
    config_lib.define_flags(flag_values)
    for kind, name, default, help_text, kwargs in filter_config.flag_definitions():
        if name not in flag_values and name not in _FILTER_INPUT_FLAGS:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text,
                                              flag_values=flag_values, **kwargs)
    flags.DEFINE_string("filter_output_dir", "", "Output root of the filter: data/, stats/, "
                        "threshold.json (its --output_dir); --output_dir holds the "
                        "pseudo-labelled records.", flag_values=flag_values)
    if "beam_args" not in flag_values:
        flags.DEFINE_string("beam_args", "", "Beam pipeline options as one shell-quoted "
                            "string; options that are no flag of this tool may also be "
                            "given directly.", flag_values=flag_values)


# FilterConfig fields that are predict settings too: one value for both (predict's).
_SHARED = ("file_prefix", "num_shards", "total_replicas", "num_label_classes", "seed")


def configs_from_flags(flag_values=FLAGS):
    """(finalised predict ExperimentConfig over every shard, FilterConfig reading its
    output_dir). The settings of `_SHARED` come from the predict config (gin included)."""
    explicit = dict(config_lib.explicit_flags(flag_values), mode="predict")
    config = config_lib.build_config(flag_values.gin_file, flag_values.gin_param, explicit)
    config = config_lib.finalize(dataclasses.replace(
        config, shard_id=f"0-{config.num_shards - 1}"))
    if not flag_values.filter_output_dir:
        raise ValueError("nst-pseudo-label-beam needs --filter_output_dir")
    values = {name: getattr(config, name) for name in _SHARED}
    for field in dataclasses.fields(filter_config.FilterConfig):
        if field.name not in values and field.name not in _FILTER_INPUT_FLAGS \
                and field.name != "info_dir":
            value = flag_values[field.name].value
            values[field.name] = (bool(value) if field.name in filter_config.INT_BOOL_FLAGS
                                  else value)
    filter_cfg = filter_config.FilterConfig(
        input_dir=config.output_dir, output_dir=flag_values.filter_output_dir, **values)
    return config, filter_cfg


def filter_flags(filter_cfg: filter_config.FilterConfig) -> List[str]:
    """The flags of this tool that give `filter_cfg` together with a predict config whose
    output_dir is its input_dir: --filter_output_dir and the filter's own settings
    (`FilterConfig.to_flags` without the input and the `_SHARED` ones, which the predict
    config carries)."""
    skip = set(_SHARED) | set(_FILTER_INPUT_FLAGS) | {"info_dir"}
    return [f"--filter_output_dir={filter_cfg.output_dir}"] + [
        flag for flag in filter_cfg.to_flags()
        if flag[2:].split("=", 1)[0] not in skip]


def main(argv):
    for name in _IGNORED_FLAGS:
        if FLAGS[name].present:
            logging.warning("--%s is ignored: the job predicts and filters every shard", name)
    config, filter_cfg = configs_from_flags(FLAGS)  # errors: one line (nst.cli_errors)
    final = run_pseudo_label_beam(config, filter_cfg, argv[1:])
    logging.info("Pseudo labels done: %d records in %s", final["total_cnt"],
                 filter_cfg.output_dir)


def cli():
    define_flags()
    cli_errors.run(main, flags_parser=beam_lib._parse_flags)


if __name__ == "__main__":
    cli()
