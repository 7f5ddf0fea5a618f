"""The one place where absl flags, gin files and defaults meet.

Every setting of `nst.main` is a field of `ExperimentConfig`, named and
defaulted like the original's flag (spec §2.2, §2.3). The same table defines
the absl flags, so the two cannot drift apart.

Precedence, lowest to highest:
  1. the field defaults below (the original's flag defaults, except where
     the spec calls a default broken — see `DEFAULT_CHANGES`);
  2. gin bindings, from `--gin_file` (repeatable, in order) then
     `--gin_param` (repeatable), e.g. `ExperimentConfig.train_batch_size = 128`;
  3. flags given explicitly on the command line.
A flag left at its default never overrides gin. Unknown flags and unknown gin
bindings are errors before any work starts, and so is a value of the wrong type or
outside `RANGES`, whatever set it (`finalize`). Gin files and bindings may import only
the project's and gin's own modules (`nst.safe_gin`).
"""

import dataclasses
import json
import os
import typing
from typing import Dict, List, Optional

import gin
import tensorflow as tf
from absl import flags

from nst import fileio
from nst import recipes
from nst import safe_gin
from nst import settings_check
from nst.settings_check import Range

# Where our defaults deliberately differ from the original's, and why.
DEFAULT_CHANGES = {
    "mode": "train_and_eval did nothing in the original; here it trains and evaluates, "
            "so it stays the default",
    "use_tpu": "False: the original defaulted to True; pass --use_tpu (with --tpu, or "
               "nothing on a TPU VM) to train on a TPU, and --tpu alone is an error "
               "rather than a silent CPU run",
    "use_bfloat16": "False, as the original's scripts: pass --use_bfloat16 on TPUs "
                    "(bfloat16 is slow on CPUs)",
}


@gin.configurable
@dataclasses.dataclass
class ExperimentConfig:
    """All settings of a training / eval / predict job (flag names of the original)."""
    # Task and data
    task_name: str = "imagenet"
    label_data_dir: Optional[str] = None
    unlabel_data_dir: str = ""
    model_dir: Optional[str] = None
    num_label_classes: int = 1000
    num_train_images: Optional[int] = None
    num_eval_images: Optional[int] = None
    num_test_images: Optional[int] = None
    num_train_shards: Optional[int] = None
    eval_splits: str = "dev,test"
    # Model
    model_name: str = "efficientnet-b0"
    input_image_size: Optional[int] = None
    small_image_model: bool = False
    dropout_rate: Optional[float] = None
    stochastic_depth_rate: Optional[float] = None
    depth_coefficient: Optional[float] = None
    width_coefficient: Optional[float] = None
    # Mode and schedule
    mode: str = "train_and_eval"
    train_steps: int = 109474
    train_ratio: float = 1.0
    train_last_step_num: int = -1
    train_batch_size: int = 4096
    eval_batch_size: int = 8
    iterations_per_loop: int = 1000
    save_checkpoints_steps: int = 1000
    keep_checkpoint_max: int = 5
    log_step_count_steps: int = 64
    eval_timeout: Optional[int] = None
    # Optimisation
    base_learning_rate: float = 0.016
    final_base_lr: Optional[float] = None
    moving_average_decay: float = 0.9999
    weight_decay: float = 1e-5
    label_smoothing: float = 0.1
    # Noisy Student
    unlabel_ratio: float = 0.0
    teacher_softmax_temp: float = -1.0
    teacher_model_name: Optional[str] = None
    teacher_model_path: Optional[str] = None
    teacher_image_size: Optional[int] = None
    label_data_sample_prob: float = 1.0
    label_mask_normalization: str = "original"
    # Augmentation
    augment_name: Optional[str] = None
    unl_aug: str = "default"
    randaug_mag: int = 27
    randaug_layer: int = 2
    cutout_op: bool = True
    remove_aug: bool = False
    randaug_out_of_range: str = "original"
    # Initialisation
    init_model: bool = False
    init_model_path: Optional[str] = None
    fix_layer_num: int = -1
    # Hardware
    use_tpu: bool = False
    tpu: Optional[str] = None
    gcp_project: Optional[str] = None
    tpu_zone: Optional[str] = None
    master: Optional[str] = None
    use_bfloat16: bool = False
    num_shards_per_group: int = -1
    data_format: str = "channels_last"
    transpose_input: bool = True
    use_cache: bool = True
    skip_host_call: bool = False
    # Reproducibility and robustness
    seed: int = 0
    skip_corrupt: bool = False
    # Predict mode (§2.3)
    predict_ckpt_path: str = ""
    output_dir: str = ""
    info_dir: str = ""
    num_shards: int = 128
    shard_id: str = "0"
    total_replicas: int = 1
    worker_id: int = 0
    reassign_label: bool = False
    data_type: str = "tfrecord"
    file_prefix: str = "train"
    predict_batch_size: int = 256
    write_train_info: bool = False
    num_sample_images: int = 30000


HELP = {
    "task_name": "imagenet, svhn, digits or fashion_mnist: normalisation constants and "
                 "dataset sizes; svhn, digits and fashion_mnist force 32x32 small-image "
                 "models with 10 classes",
    "label_data_dir": "Directory of labeled TFRecords (train*, dev*, test*, validation*)",
    "unlabel_data_dir": "Unlabeled data; ';'-separated dirs of train*/extra* files",
    "model_dir": "Checkpoints, summaries, FLAGS.json, eval results",
    "num_label_classes": "Number of classes K",
    "num_train_images": "Labeled train set size (counted from the files if unset)",
    "num_eval_images": "Evaluate only the first N images of dev (and validation) "
                       "(default: the whole split)",
    "num_test_images": "Evaluate only the first N images of test (default: the whole "
                       "split)",
    "num_train_shards": "Use only the first N sorted labeled training files",
    "eval_splits": "Comma-separated split prefixes to evaluate (dev, test, validation, ...)",
    "model_name": "Student architecture, e.g. efficientnet-b0 ... efficientnet-l2",
    "input_image_size": "Student resolution (default: the model's native one)",
    "small_image_model": "32x32 variant of EfficientNet",
    "dropout_rate": "Overrides the model's head dropout",
    "stochastic_depth_rate": "Overrides the stochastic depth rate (default 0.2)",
    "depth_coefficient": "Overrides the student's depth multiplier",
    "width_coefficient": "Overrides the student's width multiplier",
    "mode": "train, eval, predict or train_and_eval",
    "train_steps": "Schedule length in steps (before train_ratio)",
    "train_ratio": "Multiplies train_steps, train_last_step_num and the decay interval",
    "train_last_step_num": "Train only the last N steps of the schedule (-1: all)",
    "train_batch_size": "Global labeled batch size",
    "eval_batch_size": "Eval batch size (every image is evaluated, no remainder dropped)",
    "iterations_per_loop": "Train steps per tf.function call (host round trip)",
    "save_checkpoints_steps": "Checkpoint cadence (at least iterations_per_loop)",
    "keep_checkpoint_max": "Checkpoints retained",
    "log_step_count_steps": "Unused (progress is logged every iterations_per_loop steps)",
    "eval_timeout": "eval mode: seconds to wait for a new checkpoint (unset: evaluate once)",
    "base_learning_rate": "Learning rate per 256 labeled images",
    "final_base_lr": "Decay so that the per-256 LR reaches this value at the end",
    "moving_average_decay": "EMA decay; <= 0 disables EMA",
    "weight_decay": "Coefficient of the L2 term",
    "label_smoothing": "Label smoothing of labeled and hard pseudo labels",
    "unlabel_ratio": "r: unlabeled rows per labeled row; 0 = supervised training",
    "teacher_softmax_temp": "Soft pseudo labels at this temperature; -1 = hard labels",
    "teacher_model_name": "Online teacher architecture",
    "teacher_model_path": "Online teacher checkpoint (nst or original, EMA weights)",
    "teacher_image_size": "Online teacher resolution (default: its native one)",
    "label_data_sample_prob": "p: Bernoulli mask on labeled losses",
    "label_mask_normalization": "original (divide by B) or mean (divide by the kept rows)",
    "augment_name": "None (crop and flip) or v1 (RandAugment)",
    "unl_aug": "Augmentation of unlabeled images; default = augment_name",
    "randaug_mag": "RandAugment magnitude M",
    "randaug_layer": "RandAugment number of ops N",
    "cutout_op": "Include Cutout among the RandAugment ops",
    "remove_aug": "Train on eval views (no crop, flip or RandAugment)",
    "randaug_out_of_range": "original (TF1 integer wraps above M=10) or clamp",
    "init_model": "Initialise the student from init_model_path (EMA weights)",
    "init_model_path": "Checkpoint to initialise the student from",
    "fix_layer_num": "Freeze the stem and the first N blocks (-1: none)",
    "use_tpu": "Use a Cloud TPU (with --tpu)",
    "tpu": "Cloud TPU name or grpc address",
    "gcp_project": "GCP project of the TPU",
    "tpu_zone": "GCE zone of the TPU",
    "master": "TensorFlow master address (TPU resolver)",
    "use_bfloat16": "bfloat16 activations (mixed_bfloat16)",
    "num_shards_per_group": "Batch-norm group size across replicas (-1 auto, -2 all)",
    "data_format": "Only channels_last is supported",
    "transpose_input": "Accepted for compatibility; numerically neutral",
    "use_cache": "Cache labeled training records in host memory",
    "skip_host_call": "Skip writing training summaries",
    "seed": "Seed of file order, shuffling, augmentation and noise",
    "skip_corrupt": "Skip corrupt records (counted and logged) instead of failing",
    "predict_ckpt_path": "Checkpoint to predict with (EMA weights)",
    "output_dir": "Where prediction / reassigned files are written",
    "info_dir": "Where per-shard image counts (info-*.txt) are written",
    "num_shards": "Number of input shard files",
    "shard_id": "Shards to predict: '3', '0,1,2' or '0-9'",
    "total_replicas": "Split each shard into this many interleaved slices",
    "worker_id": "Which slice to process",
    "reassign_label": "Re-label already filtered data",
    "data_type": "Only tfrecord",
    "file_prefix": "Input file name prefix",
    "predict_batch_size": "Predict batch size (the original hard-coded 8)",
    "write_train_info": "Also write the original's prediction-only train-info-* files (§3.4)",
    "num_sample_images": "--reassign_label: about this many JPEG samples in total "
                         "under <output_dir>/samples (0: none)",
}

MODES = ("train", "eval", "predict", "train_and_eval")

# The values each number setting may take, whatever set it (flag, gin file, gin param);
# `finalize` checks them with the field types. -1 and the like are the original's
# "unset" / "off" values. Settings without an entry take any value of their type.
RANGES = {
    "num_label_classes": Range(1),
    "num_train_images": Range(1),
    "num_eval_images": Range(1),
    "num_test_images": Range(1),
    "num_train_shards": Range(1),
    "input_image_size": Range(1),
    # As nst.models.config.get_config requires: a rate of 1 would drop everything.
    "dropout_rate": Range(0, 1, high_open=True),
    "stochastic_depth_rate": Range(0, 1, high_open=True),
    "depth_coefficient": Range(0, low_open=True),
    "width_coefficient": Range(0, low_open=True),
    "train_steps": Range(1),
    "train_ratio": Range(0, low_open=True),
    "train_last_step_num": Range(-1),
    "train_batch_size": Range(1),
    "eval_batch_size": Range(1),
    "iterations_per_loop": Range(1),
    "save_checkpoints_steps": Range(1),
    "keep_checkpoint_max": Range(1),  # tf.train.CheckpointManager refuses 0
    "eval_timeout": Range(0),
    "base_learning_rate": Range(0),
    "final_base_lr": Range(0),
    "moving_average_decay": Range(high=1),  # <= 0 disables EMA
    "weight_decay": Range(0),
    "label_smoothing": Range(0, 1),
    "unlabel_ratio": Range(0),
    "teacher_softmax_temp": Range(0, low_open=True, also=(-1,)),
    "teacher_image_size": Range(1),
    # The share of labeled losses kept: nst.train.objective divides by it.
    "label_data_sample_prob": Range(0, 1, low_open=True),
    "randaug_mag": Range(0),
    "randaug_layer": Range(0),
    "num_shards_per_group": Range(-2),  # -1 auto, -2 all (nst.models.group_norm)
    "seed": Range(0),  # numpy's seeds are non-negative
    "num_shards": Range(1),
    "total_replicas": Range(1),
    "worker_id": Range(0),
    "predict_batch_size": Range(1),
    "num_sample_images": Range(0),
}

# Per-task defaults (§2.1 step 1-2, §8.1, §9.1).
TASKS = {
    "imagenet": dict(num_train_images=1281167, num_eval_images=50000, normalization="imagenet"),
    "svhn": dict(num_train_images=69257, num_eval_images=4000, num_test_images=26032,
                 normalization="svhn", small_image=True, num_classes=10, image_size=32,
                 flip=False),
    # Digits, like house numbers, change meaning when mirrored: no flip either.
    "digits": dict(normalization="svhn", small_image=True, num_classes=10, image_size=32,
                   flip=False),
    # Clothes keep their class when mirrored: flipped like ImageNet and CIFAR.
    "fashion_mnist": dict(normalization="fashion_mnist", small_image=True, num_classes=10,
                          image_size=32),
}


def _fields():
    return dataclasses.fields(ExperimentConfig)


def _kind(field):
    """'bool', 'int', 'float' or 'str' for a field typed T or Optional[T]."""
    kind = field.type
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if args:
        kind = args[0]
    return {bool: "bool", int: "int", float: "float"}.get(kind, "str")


def define_flags(flag_values=None):
    """Defines one absl flag per `ExperimentConfig` field, plus --gin_file/--gin_param.

    Args:
      flag_values: the `absl.flags.FlagValues` to define them in (default:
        the global `flags.FLAGS`); already defined names are skipped.
    """
    defined = flags.FLAGS if flag_values is None else flag_values
    definers = {"bool": flags.DEFINE_bool, "int": flags.DEFINE_integer,
                "float": flags.DEFINE_float, "str": flags.DEFINE_string}
    for field in _fields():
        if field.name in defined:
            continue
        definers[_kind(field)](field.name, field.default, HELP.get(field.name, ""),
                               flag_values=defined)
    if "gin_file" not in defined:
        flags.DEFINE_multi_string("gin_file", [], "Gin config files, applied in order: "
                                  "paths, or names of shipped recipes such as "
                                  "svhn/student_online.gin (nst/recipes/)",
                                  flag_values=defined)
    if "gin_param" not in defined:
        flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. "
                                  "'ExperimentConfig.train_batch_size = 128'",
                                  flag_values=defined)


def explicit_flags(flag_values=None) -> Dict[str, object]:
    """{field: value} for the config flags the user actually passed."""
    flag_values = flags.FLAGS if flag_values is None else flag_values
    return {f.name: flag_values[f.name].value for f in _fields()
            if f.name in flag_values and flag_values[f.name].present}


def build_config(gin_files: List[str] = (), gin_params: List[str] = (),
                 overrides: Optional[Dict[str, object]] = None) -> ExperimentConfig:
    """Defaults < gin files < gin params < `overrides` (explicit flags).

    `gin_files` are paths or names of shipped recipes (`svhn/student_online.gin`,
    `nst.recipes.resolve_gin_file`).

    Raises:
      ValueError: an unknown gin binding or override name, or invalid values.
      FileNotFoundError: a gin file that is neither a file nor a recipe.
    """
    gin_files = [recipes.resolve_gin_file(f) for f in gin_files]
    recipes.add_search_path()
    gin.clear_config()
    try:
        try:
            safe_gin.parse_config_files_and_bindings(gin_files, list(gin_params))
        except (ValueError, KeyError, SyntaxError) as e:
            raise ValueError(f"Bad gin configuration: {e}") from e
        config = ExperimentConfig()
    finally:
        # The bindings live in gin's global state; left in place, they would
        # silently become the defaults of every later `ExperimentConfig(...)`
        # in the process (and of a second build_config's unbound fields).
        gin.clear_config()
    overrides = dict(overrides or {})
    names = {f.name for f in _fields()}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"Unknown settings: {sorted(unknown)}")
    config = dataclasses.replace(config, **overrides)
    # A value that is neither an explicit flag nor the (valid) default came from gin.
    sources = {f.name: f"set by --{f.name}" if f.name in overrides else "set in gin"
               for f in _fields()}
    return finalize(config, sources)


def check(config: ExperimentConfig, sources: Optional[Dict[str, str]] = None,
          where: str = ""):
    """Raises `settings_check.SettingError` for a value of the wrong type or outside
    `RANGES`; `sources` ({field: "set by --x"}) and `where` ("teacher: ") name it."""
    settings_check.check(config, RANGES, sources=sources, where=where)


def finalize(config: ExperimentConfig,
             sources: Optional[Dict[str, str]] = None) -> ExperimentConfig:
    """Checks values, applies task rules (§2.1); returns a new config.

    `sources` ({field: "set by --x"}) names where a refused value came from.
    """
    check(config, sources)
    settings = dataclasses.replace(config)
    if config.mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}, got {config.mode!r}")
    if config.task_name not in TASKS:
        raise ValueError(f"--task_name must be one of {sorted(TASKS)}, got {config.task_name!r}")
    task = TASKS[config.task_name]
    changes = {}
    if task.get("small_image"):
        changes.update(small_image_model=True, num_label_classes=task["num_classes"],
                       input_image_size=task["image_size"])
    for key in ("num_train_images", "num_eval_images", "num_test_images"):
        if getattr(config, key) is None and key in task:
            changes[key] = task[key]
    if config.train_last_step_num == -1:
        changes["train_last_step_num"] = config.train_steps
    config = dataclasses.replace(config, **changes)
    if config.train_ratio != 1:
        config = dataclasses.replace(
            config, train_steps=int(config.train_steps * config.train_ratio),
            train_last_step_num=int(config.train_last_step_num * config.train_ratio))
    if config.data_format != "channels_last":
        raise ValueError("--data_format: only channels_last is supported")
    if config.data_type != "tfrecord":
        raise ValueError("--data_type: only tfrecord is supported")
    if config.augment_name not in (None, "", "v1"):
        raise ValueError(f"--augment_name must be empty or v1, got {config.augment_name!r}")
    if config.unl_aug not in ("default", "", "v1"):
        raise ValueError(f"--unl_aug must be default, empty or v1, got {config.unl_aug!r}")
    if config.teacher_model_name and not config.teacher_model_path:
        raise ValueError("--teacher_model_name needs --teacher_model_path")
    # What the user asked for, before the rules above: `write_effective_config`
    # records it as gin, so that replaying the file repeats the run (finalize
    # is not idempotent: train_ratio scales the steps each time).
    object.__setattr__(config, "_settings", settings)
    return config


def normalization(config: ExperimentConfig) -> str:
    return TASKS[config.task_name]["normalization"]


def random_flip(config: ExperimentConfig) -> bool:
    """Whether training views flip images (the original: all tasks but SVHN)."""
    return TASKS[config.task_name].get("flip", True)


def gin_bindings(config: ExperimentConfig) -> str:
    """Every field of `config` as `ExperimentConfig.<field> = <value>` gin lines."""
    return "".join(f"ExperimentConfig.{f.name} = {getattr(config, f.name)!r}\n"
                   for f in _fields())


def write_effective_config(config: ExperimentConfig, model_dir: str):
    """Writes FLAGS.json and operative_config.gin into `model_dir`.

    FLAGS.json holds every setting as the run uses it (after `finalize`).
    operative_config.gin holds every setting as requested (defaults < gin <
    explicit flags, before `finalize`), so `--gin_file=<model_dir>/operative_config.gin`
    repeats the run; for a config that did not come from `finalize` it holds
    the config's own values.
    """
    tf.io.gfile.makedirs(model_dir)
    fileio.atomic_write_json(os.path.join(model_dir, "FLAGS.json"), dataclasses.asdict(config))
    settings = getattr(config, "_settings", config)
    header = ("# Settings of this run: defaults < gin files < gin params < explicit flags,\n"
              "# before the task rules and train_ratio scaling of nst.config.finalize\n"
              "# (FLAGS.json holds the values after them). Replay with --gin_file.\n")
    fileio.atomic_write_text(os.path.join(model_dir, "operative_config.gin"),
                             header + gin_bindings(settings))


def to_json(config: ExperimentConfig) -> str:
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)
