"""Settings of a pipeline run and the stages they produce (used by `nst.pipeline`).

Gin files configure two things:

  PipelineConfig.<field> = ...                  the loop (fields below)
  teacher/ExperimentConfig.<field> = ...        the teacher's training (nst-main flags)
  student/ExperimentConfig.<field> = ...        every student's training
  student/iteration_2/ExperimentConfig.<f> = .. only student 2 (overrides student/)
  finetune/ExperimentConfig.<field> = ...       the optional fine-tuning stage
  ExperimentConfig.<field> = ...                every stage (unscoped)

Precedence: ExperimentConfig defaults < unscoped < role scope < iteration scope < what the
pipeline sets itself (data dirs, model dirs, teacher paths, mode, seed). PipelineConfig:
defaults < gin files < gin params < command-line flags (--run_dir, --seed, ...).

`plan` checks every PipelineConfig setting and every stage's ExperimentConfig settings for
type and range (`RANGES`, `nst.config.RANGES`) before it plans anything; gin files and
bindings may import only the project's and gin's own modules (`nst.safe_gin`).
"""

import dataclasses
import json
import os
from typing import Dict, List, Optional, Tuple

import gin
import tensorflow as tf
from absl import logging

from nst import config as config_lib
from nst import fileio
from nst import recipes
from nst import safe_gin
from nst import settings_check
from nst.data import readers
from nst.data.sources import digits
from nst.data.sources import fashion_mnist
from nst.models import config as model_config
from nst.models import flops
from nst.pseudo import filter_config
from nst.pseudo.filter_config import FilterConfig
from nst.recipes import resolve_gin_file  # noqa: F401  (re-exported: the one resolver)
from nst.settings_check import OneOf, Range

DEFAULT_GIN_FILE = "digits/noisy_student.gin"
QUICK_GIN_FILE = "digits/quick.gin"
PIPELINE_FILE = "pipeline.json"
# Data sets the pipeline writes itself into <run_dir>/data: their module and the console
# script that makes them (nst.data.make_dataset).
GENERATED_DATASETS = {"digits": (digits, "nst-make-digits"),
                      "fashion_mnist": (fashion_mnist, "nst-make-fashion-mnist")}
DONE_FILE = "stage_done.json"


@dataclasses.dataclass
class Stage:
    """One step of the loop.

    kind: data | train | predict | filter | pseudo_label. `settings` (train, predict,
    pseudo_label) is the stage's ExperimentConfig before `finalize`, written to
    `configs/<name>.gin`; `filter_config` (filter, pseudo_label) the FilterConfig;
    `data_args` (data) the digits arguments. pseudo_label = predict + filter as one Beam
    job (PipelineConfig.pseudo_label_runner = "beam"); its directory is the filter's.
    """

    name: str
    kind: str
    iteration: int
    directory: str
    settings: Optional[config_lib.ExperimentConfig] = None
    filter_config: Optional[FilterConfig] = None
    data_args: Optional[Dict] = None
    role: str = ""  # train: teacher | student | finetune
    beam_args: str = ""  # pseudo_label: the Beam job's pipeline options

    @property
    def done_path(self) -> str:
        return os.path.join(self.directory, DONE_FILE)

    def is_done(self) -> bool:
        return tf.io.gfile.exists(self.done_path)


@gin.configurable
@dataclasses.dataclass
class PipelineConfig:
    """The loop's settings.

    Attributes:
      run_dir: where every stage writes (see `nst.pipeline`).
      title: report heading.
      dataset: "digits" (the bundled demo data, written to <run_dir>/data),
        "fashion_mnist" (Fashion-MNIST from the IDX files in `source_dir`, written to
        <run_dir>/data) or "records" (existing TFRecords: `label_data_dir` with
        train*/dev*/test* files and `unlabel_data_dir` with
        `<unlabeled_prefix>-%05d-of-%05d` shards; `unlabeled_num_shards` of them, 0 =
        count the files).
      source_dir: fashion_mnist: directory of the four IDX files (default: where
        `apt-get install dataset-fashion-mnist` puts them).
      labels_per_class: digits, fashion_mnist: labeled training images per class.
      data_seed: digits, fashion_mnist: seed of the labeled/unlabeled split.
      dev_per_class: fashion_mnist: dev images per class (the same for every data_seed).
      num_iterations: student iterations N (>= 1).
      online_teacher: students run their teacher on raw unlabeled images (no predict or
        filter stages), as the original SVHN run.sh.
      teacher_path: start from this trained teacher (an nst model_dir or an original TF1
        checkpoint with `teacher_model_name`) instead of training one.
      teacher_model_name: the architecture of `teacher_path` when it is an original
        checkpoint (nst checkpoints say it themselves).
      min_threshold, num_image, upsample, use_top, use_all: the filter (§4; num_image 0 =
        unlabeled images / classes).
      predict_batch_size: images per teacher call in the predict stage.
      pseudo_label_runner: "local" runs predict and filter as two stages of local jobs;
        "beam" runs both as one stage, the Beam job `nst-pseudo-label-beam`
        (`nst.pseudo.beam_predict`), with the same outputs in the same places.
      pseudo_label_beam_args: that job's Beam pipeline options, one shell-quoted string
        (default: the in-process DirectRunner), e.g. "--runner=DirectRunner
        --direct_num_workers=2 --direct_running_mode=multi_processing".
      student_noise: False trains students without RandAugment, dropout and stochastic
        depth (the "student without noise" baseline).
      finetune: after the last student, fine-tune at a higher resolution on labeled
        images with shallow layers fixed (§5.9, the L2 recipe); settings in `finetune/`.
      seed: seed of every stage (initialisation, input order, noise, filter draws).
    """

    run_dir: str = "runs/digits"
    title: str = "Noisy Student"
    dataset: str = "digits"
    label_data_dir: str = ""
    unlabel_data_dir: str = ""
    unlabeled_prefix: str = "extra"
    unlabeled_num_shards: int = 0
    source_dir: str = fashion_mnist.DEFAULT_SOURCE_DIR
    labels_per_class: int = 10
    data_seed: int = 0
    dev_per_class: int = fashion_mnist.DEV_PER_CLASS
    num_iterations: int = 2
    online_teacher: bool = False
    teacher_path: str = ""
    teacher_model_name: str = ""
    min_threshold: float = 0.3
    num_image: int = 0
    upsample: bool = True
    use_top: bool = True
    use_all: bool = False
    predict_batch_size: int = 256
    pseudo_label_runner: str = "local"
    pseudo_label_beam_args: str = ""
    student_noise: bool = True
    finetune: bool = False
    seed: int = 0

    def data_dirs(self) -> Tuple[str, str]:
        """(labeled dir, unlabeled dir)."""
        if self.dataset in GENERATED_DATASETS:
            data = os.path.join(self.run_dir, "data")
            return data, os.path.join(data, "unlabeled")
        return self.label_data_dir, self.unlabel_data_dir


# The values each number setting of PipelineConfig may take (checked by `plan`, whatever
# set it); the settings passed on to the stages keep the stages' rules.
RANGES = {
    "unlabeled_num_shards": Range(0),  # 0 = count the files
    "labels_per_class": Range(1),
    "data_seed": Range(0),
    "dev_per_class": Range(0),
    "num_iterations": Range(1),
    "min_threshold": filter_config.RANGES["min_threshold"],
    "num_image": Range(0),  # 0 = unlabeled images / classes
    "predict_batch_size": config_lib.RANGES["predict_batch_size"],
    "seed": config_lib.RANGES["seed"],
    "pseudo_label_runner": OneOf(("local", "beam")),
}


def _stage_settings(scopes: List[str]) -> config_lib.ExperimentConfig:
    """An ExperimentConfig under the active gin bindings and the nested `scopes`."""
    if not scopes:
        return config_lib.ExperimentConfig()
    with gin.config_scope(scopes[0]):
        return _stage_settings(scopes[1:])


def _params(settings: config_lib.ExperimentConfig) -> int:
    finalized = config_lib.finalize(dataclasses.replace(settings, mode="train"))
    config = model_config.get_config(
        finalized.model_name, finalized.num_label_classes, width=finalized.width_coefficient,
        depth=finalized.depth_coefficient, resolution=finalized.input_image_size,
        small_image=finalized.small_image_model)
    return flops.model_cost(config).trainable_params


def _shard_count(directory: str, prefix: str) -> int:
    files = sorted(tf.io.gfile.glob(os.path.join(directory, f"{prefix}-*-of-*")))
    if not files:
        raise FileNotFoundError(f"No unlabeled shards {prefix}-*-of-* in {directory} "
                                f"(PipelineConfig.unlabel_data_dir / unlabeled_prefix)")
    counts = {int(os.path.basename(f).rsplit("-of-", 1)[1]) for f in files}
    if len(counts) != 1 or len(files) != counts.pop():
        raise ValueError(f"The unlabeled shards in {directory} are not one complete set "
                         f"{prefix}-%05d-of-%05d: {[os.path.basename(f) for f in files]}")
    return len(files)


def plan(gin_files: List[str], gin_params: List[str] = (),
         overrides: Optional[Dict] = None, check_data: bool = True):
    """(PipelineConfig, [Stage]) of a run; every check that needs no training happens here.

    check_data=False skips what needs the data directories (their existence, counting
    shards and images): for parsing recipes whose data lives elsewhere, e.g. on GCS.
    """
    gin.clear_config()
    # `include 'svhn/teacher.gin'` inside a recipe finds the shipped recipes too.
    recipes.add_search_path()
    try:
        try:
            safe_gin.parse_config_files_and_bindings(
                [resolve_gin_file(f) for f in gin_files], list(gin_params))
        except (ValueError, KeyError, SyntaxError) as e:
            raise ValueError(f"Bad gin configuration: {e}") from e
        overrides = dict(overrides or {})
        pipeline = dataclasses.replace(PipelineConfig(), **overrides)
        # Defaults are valid: a refused value is a flag's or gin's.
        settings_check.check(pipeline, RANGES, sources={
            f.name: f"set by --{f.name}" if f.name in overrides else "set in gin"
            for f in dataclasses.fields(PipelineConfig)})
        roles = {"teacher": _stage_settings(["teacher"]),
                 "finetune": _stage_settings(["finetune"])}
        students = [_stage_settings(["student", f"iteration_{i}"])
                    for i in range(1, pipeline.num_iterations + 1)]
        # As gin left them: what the pipeline sets itself below comes from the checked
        # PipelineConfig.
        gin_set = {f.name: "set in gin"
                   for f in dataclasses.fields(config_lib.ExperimentConfig)}
        config_lib.check(roles["teacher"], gin_set, "teacher: ")
        if pipeline.finetune:
            config_lib.check(roles["finetune"], gin_set, "finetune: ")
        for i, student in enumerate(students, 1):
            config_lib.check(student, gin_set, f"student {i}: ")
    finally:
        gin.clear_config()
    _check(pipeline, check_data)
    run_dir = pipeline.run_dir
    label_dir, unlabel_dir = pipeline.data_dirs()
    common = dict(label_data_dir=label_dir, seed=pipeline.seed)
    stages = []
    if pipeline.dataset in GENERATED_DATASETS:
        data_args = {"labels_per_class": pipeline.labels_per_class, "seed": pipeline.data_seed}
        if pipeline.dataset != "digits":
            data_args.update(dataset=pipeline.dataset, source_dir=pipeline.source_dir,
                             dev_per_class=pipeline.dev_per_class)
        stages.append(Stage("data", "data", 0, label_dir, data_args=data_args))
    teacher = roles["teacher"]
    if pipeline.teacher_path:
        teacher_dir = pipeline.teacher_path
        teacher = dataclasses.replace(teacher, model_name=pipeline.teacher_model_name
                                      or teacher.model_name)
    else:
        teacher_dir = os.path.join(run_dir, "iteration_0", "teacher")
        teacher = dataclasses.replace(teacher, mode="train_and_eval", model_dir=teacher_dir,
                                      unlabel_ratio=0.0, teacher_model_name=None,
                                      teacher_model_path=None, **common)
        stages.append(Stage("teacher", "train", 0, teacher_dir, settings=teacher,
                            role="teacher"))
    _check_model(teacher, "teacher")
    previous, previous_dir = teacher, teacher_dir
    num_classes = config_lib.finalize(dataclasses.replace(teacher, mode="train")).num_label_classes
    for i, student in enumerate(students, 1):
        directory = os.path.join(run_dir, f"iteration_{i}")
        student_dir = os.path.join(directory, "student")
        if pipeline.online_teacher:
            unlabeled = dict(unlabel_data_dir=unlabel_dir,
                             teacher_model_name=previous.model_name,
                             teacher_model_path=previous_dir)
        else:
            predictions = os.path.join(directory, "predictions")
            filtered = os.path.join(directory, "filtered")
            num_shards = pipeline.unlabeled_num_shards or (
                _shard_count(unlabel_dir, pipeline.unlabeled_prefix) if pipeline.dataset ==
                "records" and check_data else _generated_extra_shards(pipeline))
            predict = dataclasses.replace(
                previous, mode="predict", predict_ckpt_path=previous_dir,
                label_data_dir=unlabel_dir, output_dir=predictions,
                info_dir=os.path.join(predictions, "info"), num_shards=num_shards,
                shard_id=f"0-{num_shards - 1}", file_prefix=pipeline.unlabeled_prefix,
                predict_batch_size=pipeline.predict_batch_size, seed=pipeline.seed,
                teacher_model_name=None, teacher_model_path=None, model_dir=None)
            filter_settings = FilterConfig(
                                    input_dir=predictions, output_dir=filtered,
                                    file_prefix=pipeline.unlabeled_prefix,
                                    num_shards=num_shards, num_label_classes=num_classes,
                                    num_image=pipeline.num_image or (_auto_num_image(
                                        pipeline, num_classes) if check_data else 1),
                                    min_threshold=pipeline.min_threshold,
                                    upsample=pipeline.upsample, use_top=pipeline.use_top,
                                    use_all=pipeline.use_all, seed=pipeline.seed)
            if pipeline.pseudo_label_runner == "beam":
                stages.append(Stage(f"pseudo-label-{i}", "pseudo_label", i, filtered,
                                    settings=predict, filter_config=filter_settings,
                                    beam_args=pipeline.pseudo_label_beam_args))
            else:
                stages.append(Stage(f"predict-{i}", "predict", i, predictions,
                                    settings=predict))
                stages.append(Stage(f"filter-{i}", "filter", i, filtered,
                                    filter_config=filter_settings))
            unlabeled = dict(unlabel_data_dir=os.path.join(filtered, "data"),
                             teacher_model_name=None, teacher_model_path=None)
        student = dataclasses.replace(student, mode="train_and_eval", model_dir=student_dir,
                                      **unlabeled, **common)
        if not pipeline.student_noise:
            student = dataclasses.replace(student, remove_aug=True, augment_name=None,
                                          dropout_rate=0.0, stochastic_depth_rate=0.0)
        if student.unlabel_ratio <= 0:
            raise ValueError(f"student/iteration_{i}: unlabel_ratio must be > 0 "
                             f"(got {student.unlabel_ratio})")
        _check_model(student, f"student {i}")
        if _params(student) < _params(previous):
            logging.warning("Student %d (%s, %d parameters) is smaller than its teacher "
                            "(%s, %d): allowed, but Noisy Student expects an equal or "
                            "larger student", i, student.model_name, _params(student),
                            previous.model_name, _params(previous))
        stages.append(Stage(f"student-{i}", "train", i, student_dir, settings=student,
                            role="student"))
        previous, previous_dir = student, student_dir
    if pipeline.finetune:
        finetune_dir = os.path.join(run_dir, "finetune")
        finetune = dataclasses.replace(
            roles["finetune"], mode="train_and_eval", model_dir=finetune_dir, init_model=True,
            init_model_path=previous_dir, unlabel_ratio=0.0, teacher_model_name=None,
            teacher_model_path=None, **common)
        _check_model(finetune, "finetune")
        stages.append(Stage("finetune", "train", pipeline.num_iterations + 1, finetune_dir,
                            settings=finetune, role="finetune"))
    return pipeline, stages


def _generated_extra_shards(pipeline: PipelineConfig) -> int:
    module = GENERATED_DATASETS.get(pipeline.dataset, (digits,))[0]
    return module.DEFAULT_NUM_SHARDS["extra"]


def _auto_num_image(pipeline: PipelineConfig, num_classes: int) -> int:
    if pipeline.dataset == "fashion_mnist":
        return max(1, fashion_mnist.unlabeled_count(
            pipeline.labels_per_class, source_dir=pipeline.source_dir,
            dev_per_class=pipeline.dev_per_class) // num_classes)
    if pipeline.dataset == "digits":
        labels = digits.load_digits_images()[1]
        extra = digits.split_indices(labels, pipeline.labels_per_class, 0.3, 0.1,
                                     pipeline.data_seed)["extra"]
        return max(1, len(extra) // num_classes)
    # One read of the unlabeled shards' framing.
    files = readers.list_files(os.path.join(pipeline.unlabel_data_dir,
                                            f"{pipeline.unlabeled_prefix}-*"))
    count = int(tf.data.TFRecordDataset(files).reduce(0, lambda n, _: n + 1))
    return max(1, count // num_classes)


def _check(pipeline: PipelineConfig, check_data: bool = True):
    if pipeline.dataset not in (*GENERATED_DATASETS, "records"):
        raise ValueError(f"PipelineConfig.dataset must be one of "
                         f"{sorted(GENERATED_DATASETS) + ['records']}, got "
                         f"{pipeline.dataset!r}")
    if not pipeline.run_dir:
        raise ValueError("--run_dir (PipelineConfig.run_dir) is required")
    if pipeline.dataset == "records" and check_data:
        label_dir, unlabel_dir = pipeline.data_dirs()
        for name, directory, pattern in (("label_data_dir", label_dir, "train*"),
                                         ("unlabel_data_dir", unlabel_dir,
                                          f"{pipeline.unlabeled_prefix}-*")):
            if not directory or not tf.io.gfile.isdir(directory):
                raise FileNotFoundError(f"PipelineConfig.{name}={directory!r} is not a "
                                        f"directory")
            if not tf.io.gfile.glob(os.path.join(directory, pattern)):
                raise FileNotFoundError(f"PipelineConfig.{name}={directory!r} holds no "
                                        f"{pattern} files")
    if pipeline.dataset == "fashion_mnist" and check_data:
        try:  # the files exist, and the labels allow labels_per_class
            fashion_mnist.unlabeled_count(pipeline.labels_per_class,
                                          source_dir=pipeline.source_dir,
                                          dev_per_class=pipeline.dev_per_class)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"PipelineConfig.source_dir: {e}") from None
        except ValueError as e:
            raise ValueError(f"PipelineConfig.labels_per_class: {e}") from None
    if check_data and pipeline.teacher_path and not tf.io.gfile.exists(pipeline.teacher_path) \
            and not tf.io.gfile.exists(pipeline.teacher_path + ".index"):
        raise FileNotFoundError(f"PipelineConfig.teacher_path={pipeline.teacher_path} "
                                f"does not exist")


def _check_model(settings: config_lib.ExperimentConfig, what: str):
    try:
        model_config.get_config(settings.model_name)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


# --------------------------------------------------------------------------- run dir


def describe(pipeline: PipelineConfig, stages) -> Dict:
    """What identifies a run: the loop settings and every stage's settings."""
    out = {"pipeline": dataclasses.asdict(pipeline), "stages": {}}
    for stage in stages:
        if stage.kind == "pseudo_label":
            out["stages"][stage.name] = {
                "predict": dataclasses.asdict(stage.settings),
                "filter": dataclasses.asdict(stage.filter_config),
                "beam_args": stage.beam_args}
        elif stage.settings is not None:
            out["stages"][stage.name] = dataclasses.asdict(stage.settings)
        elif stage.filter_config is not None:
            out["stages"][stage.name] = dataclasses.asdict(stage.filter_config)
        else:
            out["stages"][stage.name] = dict(stage.data_args)
    return json.loads(json.dumps(out))


def _differences(old, new, prefix="") -> List[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def prepare_run_dir(pipeline: PipelineConfig, stages, overwrite: bool = False):
    """Creates the run dir, or checks that an existing one was made by these settings."""
    path = os.path.join(pipeline.run_dir, PIPELINE_FILE)
    wanted = describe(pipeline, stages)
    if tf.io.gfile.exists(path):
        differences = _differences(fileio.read_json(path), wanted)
        if differences and not overwrite:
            shown = "\n  ".join(differences[:12])
            raise ValueError(
                f"{pipeline.run_dir} holds a run with other settings ({len(differences)} "
                f"differ):\n  {shown}\nUse another --run_dir, or --overwrite to delete it "
                f"and start afresh.")
        if differences:
            logging.warning("--overwrite: deleting %s", pipeline.run_dir)
            tf.io.gfile.rmtree(pipeline.run_dir)
    tf.io.gfile.makedirs(pipeline.run_dir)
    fileio.atomic_write_json(path, wanted)
