"""One job on one device: the numbers `nst-size-run` prints."""

import dataclasses
import functools

from nst.sizing import devices, graph, memory, recipe, timing


@dataclasses.dataclass(frozen=True)
class ModelNumbers:
    """What the estimate needs of one model at one resolution (float32, per row).

    params: count_params(); activation_row: what a training step keeps per image;
    forward_peak_row: an inference pass's per-image peak; train_work / infer_work:
    the forward graph's ops in training / inference mode; variables: counts.
    """
    params: int
    activation_row: int
    forward_peak_row: int
    train_work: graph.ForwardWork
    infer_work: graph.ForwardWork
    variables: timing.Variables

    @property
    def trainable(self) -> int:
        return self.variables.trainable_elements


def numbers_of(model, image_size: int) -> ModelNumbers:
    """`ModelNumbers` of a built Keras model (traces it; computes no activations)."""
    from nst.train.objective import is_batch_norm_variable
    trainable = model.trainable_variables
    l2 = [v for v in trainable if not is_batch_norm_variable(v)]
    variables = timing.Variables(
        trainable=len(trainable), trainable_elements=sum(_size(v) for v in trainable),
        weights=len(model.weights), weight_elements=sum(_size(v) for v in model.weights),
        l2=len(l2), l2_elements=sum(_size(v) for v in l2))
    return ModelNumbers(
        params=model.count_params(),
        activation_row=memory.activation_bytes_per_row(model, image_size, "float32"),
        forward_peak_row=memory.forward_peak_bytes_per_row(model, image_size, "float32"),
        train_work=graph.forward_work(model, image_size, training=True),
        infer_work=graph.forward_work(model, image_size, training=False),
        variables=variables)


@functools.lru_cache(maxsize=None)
def model_numbers(config, image_size) -> ModelNumbers:
    """`numbers_of` the model `config` builds at `image_size` (cached)."""
    import keras
    from nst.models.efficientnet import build_model
    model, _ = build_model(config, image_size=image_size)
    numbers = numbers_of(model, image_size)
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
    step_parts: dict
    steps: int
    utilization: float

    @property
    def fits(self) -> bool:
        return self.labeled <= self.largest_batch

    @property
    def days(self) -> float:
        return timing.days(self.step_seconds, self.steps)


def estimate(job: recipe.Job, device_name: str, num_replicas: int,
             utilization: float = None, cpu_rates: dict = None,
             reserve: float = memory.RESERVE, labeled: int = None) -> Estimate:
    """Memory, largest batch and time of `job` on `num_replicas` x `device_name`.

    `utilization`: of the roofline (nst/sizing/timing.py); default: the
    device's (`timing.default_utilization`). `cpu_rates`: measured rates of
    this CPU for --device=cpu (else devices.CPU_RECORDED). `labeled`
    overrides the per-replica labeled batch (else the job's global batch /
    num_replicas).
    """
    if num_replicas < 1:
        raise ValueError(f"--num_replicas must be >= 1, got {num_replicas}")
    device = devices.get(device_name, cpu_rates)
    if utilization is None:
        utilization = timing.default_utilization(device_name)
    timing.check_utilization(utilization)
    scale = memory.DTYPE_BYTES[job.dtype] / 4
    student = model_numbers(job.student, job.image_size)
    teacher = None
    teacher_params = teacher_row = 0
    teacher_flops = 0.0
    if job.teacher is not None:
        teacher = model_numbers(job.teacher, job.teacher_image_size)
        teacher_params = teacher.params
        teacher_row = int(teacher.forward_peak_row * scale)
        teacher_flops = teacher.infer_work.flops_per_row()
    fixed = memory.fixed_bytes(student.params, student.trainable, job.optimizer,
                               teacher_params)
    student_row = int(student.activation_row * scale)
    b = labeled if labeled is not None else job.per_replica(num_replicas)
    u = job.unlabeled_rows(b)
    largest = memory.largest_batch(device["memory_bytes"], fixed, student_row,
                                   job.unlabeled_rows, teacher_row, reserve)
    step_flops = timing.train_flops(student.train_work.flops_per_row(), b + u,
                                    teacher_flops, u)
    step = timing.step_time(student.train_work, student.variables, b + u,
                            timing.device_rates(device, job.dtype), job.dtype, utilization,
                            teacher.infer_work if teacher else None, u)
    return Estimate(job=job.name, device=device_name, num_replicas=num_replicas, labeled=b,
                    unlabeled=u, fixed=fixed, student_row_bytes=student_row,
                    teacher_row_bytes=teacher_row,
                    step_bytes=memory.step_bytes(fixed, b, u, student_row, teacher_row),
                    memory_bytes=device["memory_bytes"], largest_batch=largest,
                    step_flops=step_flops, step_seconds=step.total,
                    step_parts=step.as_dict(), steps=job.steps, utilization=utilization)
