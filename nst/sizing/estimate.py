"""One job on one device: the numbers `nst-size-run` prints."""

import dataclasses
import functools

from nst.sizing import devices, memory, recipe, timing
from nst.models import flops


@functools.lru_cache(maxsize=None)
def _model_numbers(config, image_size):
    """(count_params, trainable, float32 activation bytes/row, float32 forward peak/row)."""
    import keras
    from nst.models.efficientnet import build_model
    model, _ = build_model(config, image_size=image_size)
    trainable = sum(_size(v) for v in model.trainable_variables)
    numbers = (model.count_params(), trainable,
               memory.activation_bytes_per_row(model, image_size, "float32"),
               memory.forward_peak_bytes_per_row(model, image_size, "float32"))
    del model
    keras.backend.clear_session()
    return numbers


def _size(variable):
    n = 1
    for d in variable.shape:
        n *= int(d)
    return n


@dataclasses.dataclass
class Estimate:
    job: str
    device: str
    num_replicas: int
    labeled: int
    unlabeled: int
    fixed: dict
    student_row_bytes: int
    teacher_row_bytes: int
    step_bytes: int
    memory_bytes: int
    largest_batch: int
    step_flops: float
    step_seconds: float
    steps: int
    utilization: float

    @property
    def fits(self) -> bool:
        return self.labeled <= self.largest_batch

    @property
    def days(self) -> float:
        return timing.days(self.step_seconds, self.steps)


def estimate(job: recipe.Job, device_name: str, num_replicas: int,
             utilization: float = timing.DEFAULT_UTILIZATION, cpu_gflops: float = None,
             reserve: float = memory.RESERVE, labeled: int = None) -> Estimate:
    """Memory, largest batch and time of `job` on `num_replicas` x `device_name`.

    `labeled` overrides the per-replica labeled batch (else the job's global
    batch / num_replicas).
    """
    if num_replicas < 1:
        raise ValueError(f"--num_replicas must be >= 1, got {num_replicas}")
    device = devices.get(device_name, cpu_gflops)
    scale = memory.DTYPE_BYTES[job.dtype] / 4
    params, trainable, act, _ = _model_numbers(job.student, job.image_size)
    teacher_params = teacher_row = 0
    teacher_flops = 0.0
    if job.teacher is not None:
        teacher_params, _, _, peak = _model_numbers(job.teacher, job.teacher_image_size)
        teacher_row = int(peak * scale)
        teacher_flops = flops.model_cost(job.teacher, job.teacher_image_size).flops
    fixed = memory.fixed_bytes(params, trainable, job.optimizer, teacher_params)
    student_row = int(act * scale)
    b = labeled if labeled is not None else job.per_replica(num_replicas)
    u = job.unlabeled_rows(b)
    largest = memory.largest_batch(device["memory_bytes"], fixed, student_row,
                                   job.unlabeled_rows, teacher_row, reserve)
    step_flops = timing.train_flops(flops.model_cost(job.student, job.image_size).flops,
                                    b + u, teacher_flops, u)
    seconds = timing.step_seconds(step_flops, devices.peak_flops(device, job.dtype),
                                  utilization)
    return Estimate(job=job.name, device=device_name, num_replicas=num_replicas, labeled=b,
                    unlabeled=u, fixed=fixed, student_row_bytes=student_row,
                    teacher_row_bytes=teacher_row,
                    step_bytes=memory.step_bytes(fixed, b, u, student_row, teacher_row),
                    memory_bytes=device["memory_bytes"], largest_batch=largest,
                    step_flops=step_flops, step_seconds=seconds, steps=job.steps,
                    utilization=utilization)
