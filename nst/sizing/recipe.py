"""What a run trains: models, rows per replica, dtype and steps of each stage.

A `Job` is one training stage as the estimate needs it. `from_model` makes
one from --model_name/--image_size; `from_gin` reads a recipe with the
project's own machinery — `nst.pipeline_config.plan` for loop recipes
(`PipelineConfig.*`: every teacher, student and fine-tuning stage),
`nst.config.build_config` for single-job recipes — so defaults, scopes,
includes and `finalize`'s task rules are exactly those of a real run.
"""

import dataclasses

from typing import List, Optional

from nst.data.input_pipeline import unlabeled_batch_size
from nst.models import config as model_config

# Every stage of nst trains with TF1RMSProp (nst/train/loop.py).
OPTIMIZER = "rmsprop"


@dataclasses.dataclass
class Job:
    """One training stage.

    global_batch: the global labeled batch (--train_batch_size); per replica it is
    split evenly. unlabel_ratio x label_data_sample_prob gives U per replica.
    teacher: the online teacher's config and resolution, or None.
    """
    name: str
    student: model_config.EfficientNetConfig
    image_size: int
    global_batch: int
    unlabel_ratio: float = 0.0
    label_data_sample_prob: float = 1.0
    dtype: str = "float32"
    steps: int = 0
    teacher: Optional[model_config.EfficientNetConfig] = None
    teacher_image_size: Optional[int] = None
    optimizer: str = OPTIMIZER

    def per_replica(self, num_replicas: int) -> int:
        if self.global_batch % num_replicas:
            raise ValueError(f"{self.name}: --train_batch_size={self.global_batch} does not "
                             f"split evenly over --num_replicas={num_replicas}")
        return self.global_batch // num_replicas

    def unlabeled_rows(self, labeled: int) -> int:
        if self.unlabel_ratio <= 0 or labeled < 1:
            return 0
        return unlabeled_batch_size(labeled, self.unlabel_ratio, self.label_data_sample_prob)


def _config(name, num_classes, settings=None, image_size=None, small=False):
    s = settings
    try:
        return model_config.get_config(
            name, num_classes, width=s.width_coefficient if s else None,
            depth=s.depth_coefficient if s else None, resolution=image_size,
            dropout_rate=s.dropout_rate if s else None,
            stochastic_depth_rate=s.stochastic_depth_rate if s else None,
            small_image=small)
    except (KeyError, ValueError) as e:
        raise ValueError(f"--model_name={name!r}: {e}") from e


def from_model(name: str, image_size: Optional[int], batch: int, dtype: str,
               unlabel_ratio: float = 0.0, steps: int = 0, num_classes: int = 1000,
               small_image: bool = False) -> Job:
    if name not in model_config.model_names():
        raise ValueError(f"--model_name={name!r} is not a model; known: "
                         f"{', '.join(model_config.model_names())}")
    if image_size is not None and image_size <= 0:
        raise ValueError(f"--image_size must be > 0, got {image_size}")
    config = _config(name, num_classes, image_size=image_size, small=small_image)
    return Job(name=name, student=config, image_size=image_size or config.resolution,
               global_batch=batch, unlabel_ratio=unlabel_ratio, dtype=dtype, steps=steps)


def _job(name, settings, teacher_settings=None) -> Job:
    from nst import config as config_lib
    s = config_lib.finalize(dataclasses.replace(settings, mode="train"))
    student = _config(s.model_name, s.num_label_classes, s, s.input_image_size,
                      s.small_image_model)
    teacher = teacher_size = None
    if s.teacher_model_name and s.unlabel_ratio > 0:
        t = teacher_settings
        teacher = _config(s.teacher_model_name, s.num_label_classes,
                          None if t is None else config_lib.finalize(
                              dataclasses.replace(t, mode="train")),
                          s.teacher_image_size, s.small_image_model)
        teacher_size = s.teacher_image_size or teacher.resolution
    return Job(name=name, student=student,
               image_size=s.input_image_size or student.resolution,
               global_batch=s.train_batch_size, unlabel_ratio=s.unlabel_ratio,
               label_data_sample_prob=s.label_data_sample_prob,
               dtype="bfloat16" if s.use_bfloat16 else "float32",
               steps=min(s.train_steps, s.train_last_step_num), teacher=teacher,
               teacher_image_size=teacher_size)


def from_gin(gin_file: str, gin_params: List[str] = ()) -> List[Job]:
    """The training stages of a recipe, in order."""
    from nst import config as config_lib
    from nst import pipeline_config, recipes
    import tensorflow as tf
    try:
        path = recipes.resolve_gin_file(gin_file)
    except FileNotFoundError as e:
        raise ValueError(f"--gin_file: {e}") from e
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    if "PipelineConfig." not in text:
        # A student recipe names its teacher's checkpoint on the command line; the
        # estimate needs only the teacher's architecture.
        settings = config_lib.build_config([path], list(gin_params),
                                           {"teacher_model_path": "(not needed)"})
        return [_job(gin_file, settings)]
    _, stages = pipeline_config.plan([path], list(gin_params), check_data=False)
    jobs, previous = [], None
    for stage in stages:
        if stage.kind == "train":
            jobs.append(_job(stage.name, stage.settings, previous))
            previous = stage.settings
    return jobs


def rows(job: Job, num_replicas: int):
    """(B, U) per replica."""
    labeled = job.per_replica(num_replicas)
    return labeled, job.unlabeled_rows(labeled)


