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
from nst import eval_robustness
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
from nst.robustness import metrics as robustness_metrics
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

    kind: data | train | predict | filter | pseudo_label | robustness. `settings` (train,
    predict, pseudo_label, robustness) is the stage's ExperimentConfig before `finalize`,
    written to `configs/<name>.gin`; `filter_config` (filter, pseudo_label) the
    FilterConfig; `data_args` (data) the digits arguments; `robustness` (robustness) the
    `nst-eval-robustness` settings of the model in `settings.model_dir`. pseudo_label =
    predict + filter as one Beam job (PipelineConfig.pseudo_label_runner = "beam"); its
    directory is the filter's.
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
    robustness: Optional[eval_robustness.Settings] = None
    model_stage: str = ""  # robustness: the stage (or "teacher") whose model it measures

    @property
    def done_path(self) -> str:
        return os.path.join(self.directory, DONE_FILE)

    def is_done(self) -> bool:
        if not tf.io.gfile.exists(self.done_path):
            return False
        if self.kind != "robustness":
            return True
        # Evaluation settings may change on a finished run (see `prepare_run_dir`): a
        # measurement made with other ones is stale and runs again.
        return fileio.read_json(self.done_path).get("settings") == self.robustness_record()

    def robustness_record(self) -> Dict:
        return json.loads(json.dumps(dataclasses.asdict(self.robustness)))


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
      robustness: after each model (teacher, every student, fine-tuned model) is trained,
        measure it with `nst-eval-robustness` on `robustness_split` of the labeled data:
        clean error, error under each corruption and severity, FGSM accuracy; students
        and the fine-tuned model get CE/mCE relative to the teacher. Results in
        robustness/<stage>/results.json and a section of report.md. Evaluation only:
        turning it on (or changing the settings below) on a finished run measures its
        models without training anything again.
      robustness_split: split prefix of the labeled data to measure on ("test").
      robustness_corruptions: comma-separated names of `nst.robustness.corruptions`
        ("" = all of them, "none" = none).
      robustness_severities: e.g. "1-5" or "1,3,5".
      robustness_fgsm_epsilons: FGSM steps in pixel units over 0..255 ("" = none).
      robustness_num_examples: only the first N images of the split (0 = all).
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
    robustness: bool = False
    robustness_split: str = "test"
    robustness_corruptions: str = ""
    robustness_severities: str = "1-5"
    robustness_fgsm_epsilons: str = "1,2,4,8"
    robustness_num_examples: int = 0
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
    "robustness_num_examples": Range(0),  # 0 = every image of the split
}
ROBUSTNESS_DIR = "robustness"


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
    measure = _robustness_planner(pipeline, label_dir, stages)
    measure("teacher", 0, teacher, teacher_dir)
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
        measure(f"student-{i}", i, student, student_dir)
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
        measure("finetune", pipeline.num_iterations + 1, finetune, finetune_dir)
    return pipeline, stages


def robustness_settings(pipeline: PipelineConfig) -> eval_robustness.Settings:
    """The `nst-eval-robustness` settings the PipelineConfig.robustness_* fields ask for
    (without data, output and baseline); ValueError naming the field."""
    from nst.robustness import corruptions
    field = "PipelineConfig.robustness_"
    try:
        names = eval_robustness.corruption_names(pipeline.robustness_corruptions)
        corruptions.check(names, ())
    except ValueError as e:
        raise ValueError(f"{field}corruptions={pipeline.robustness_corruptions!r}: {e}") \
            from None
    try:
        severities = eval_robustness.parse_severities(pipeline.robustness_severities,
                                                      f"{field}severities")
        corruptions.check((), severities)
    except ValueError as e:
        raise ValueError(f"{field}severities: {e}") from None
    epsilons = eval_robustness.parse_floats(pipeline.robustness_fgsm_epsilons,
                                            f"{field}fgsm_epsilons")
    robustness_metrics.check_epsilons(epsilons, f"{field}fgsm_epsilons")
    if not pipeline.robustness_split:
        raise ValueError(f"{field}split must name a split of the labeled data, e.g. 'test'")
    return eval_robustness.Settings(
        split=pipeline.robustness_split, corruptions=names, severities=severities,
        fgsm_epsilons=epsilons, num_examples=pipeline.robustness_num_examples,
        seed=pipeline.seed)


def _robustness_planner(pipeline: PipelineConfig, label_dir: str, stages: List[Stage]):
    """measure(model_stage, iteration, settings, model_dir) appends the robustness stage of
    one model when PipelineConfig.robustness is on (a no-op otherwise). The teacher's
    results are the baseline of every later model's CE and mCE."""
    if not pipeline.robustness:
        return lambda *args: None
    base = dataclasses.replace(robustness_settings(pipeline), data_dir=label_dir)
    teacher_output = []

    def measure(model_stage: str, iteration: int, settings, model_dir: str):
        directory = os.path.join(pipeline.run_dir, ROBUSTNESS_DIR, model_stage)
        output = os.path.join(directory, "results.json")
        robustness = dataclasses.replace(
            base, output=output,
            baseline_results=teacher_output[0] if teacher_output else "")
        teacher_output.append(output)
        model = dataclasses.replace(settings, mode="eval", model_dir=model_dir)
        stages.append(Stage(f"robustness-{model_stage}", "robustness", iteration, directory,
                            settings=model, robustness=robustness, model_stage=model_stage))

    return measure


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
        elif stage.kind == "robustness":
            out["stages"][stage.name] = {"model": dataclasses.asdict(stage.settings),
                                         "robustness": stage.robustness_record()}
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


def _training_identity(described: Dict) -> Dict:
    """What of `describe`'s output a run's trained models depend on: all but the
    robustness measurements, which only read the models (a robustness stage whose
    settings changed runs again: `Stage.is_done`). PipelineConfig fields that a run
    directory's pipeline.json lacks (it predates them) count as their defaults."""
    pipeline = {**dataclasses.asdict(PipelineConfig()), **described.get("pipeline", {})}
    return {"pipeline": {k: v for k, v in json.loads(json.dumps(pipeline)).items()
                         if not k.startswith("robustness")},
            "stages": {k: v for k, v in described.get("stages", {}).items()
                       if not k.startswith("robustness-")}}


def prepare_run_dir(pipeline: PipelineConfig, stages, overwrite: bool = False):
    """Creates the run dir, or checks that an existing one was made by these settings
    (robustness settings aside: `_training_identity`)."""
    path = os.path.join(pipeline.run_dir, PIPELINE_FILE)
    wanted = describe(pipeline, stages)
    if tf.io.gfile.exists(path):
        differences = _differences(_training_identity(fileio.read_json(path)),
                                   _training_identity(wanted))
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
