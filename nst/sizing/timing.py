"""Step and wall time of one replica's training step: a per-op roofline.

FLOPs alone (the old rule: 3 x forward FLOPs / peak) predicted 3 % of the
measured CPU step of the digits model: small models spend their time moving
tensors through element-wise ops, in depthwise convolutions far below the
matmul rate, and in per-op overhead. So every op of the traced forward graph
(nst/sizing/graph.py) is timed on its own. For a step of R student rows:

  op         max(FLOPs / rate of its kind, bytes / bandwidth at its size)
             kinds: matmul (Conv2D, MatMul), depthwise, reduction and
             element-wise (the last two bandwidth-bound, no FLOPs counted);
             bytes = per-row elements x R x the compute dtype's size +
             per-step elements (weights, statistics) x 4
  forward    the student's forward ops at R rows
  backward   every forward op again, with 2 x its FLOPs (the input and weight
             gradients), BACKWARD_ROW_BYTES x its per-row bytes and 2 x its
             per-step bytes (weights read, gradients written)
  update     bytes of the TF1RMSProp, EMA and L2 work per variable (UPDATE)
  teacher    an online teacher's inference-mode forward ops at U rows
  overhead   ops x the per-op overhead: forward ops x (1 + BACKWARD_OPS),
             the update's ops per variable, the teacher's forward ops
  step       (forward + backward + update + teacher) / utilisation + overhead

Under XLA (TPUs: `xla_fusion` in the device table) element-wise ops are
fused into the convolutions and reductions beside them: only matmul,
depthwise and reduction ops move bytes, and the backward moves 2 x (not
BACKWARD_ROW_BYTES x) their forward bytes.

Rates (`Rates`): an accelerator's are its table row (peak for the dtype,
depthwise at the fp32 column, its HBM bandwidth, no per-op overhead); the
CPU's are measured (nst/sizing/cpu_rates.py): matmul, depthwise forward and
backward, the element-wise bandwidth by tensor size (read from tensors that
no cache holds, as a step's activations are) and the per-op overhead. The
utilisation divides the roofline part: an accelerator's default is
DEFAULT_UTILIZATION (the paper's L2 time, docs/tpu.md); the CPU's is 1, its
rates being what it achieves.
"""

import bisect
import dataclasses
import math
from typing import Optional, Tuple

from nst.sizing import devices, graph

# The utilisation of the roofline that reconciles the paper's ~6 days per
# EfficientNet-L2 iteration on 2048 TPU v3 cores with the L2 recipe: 1.96 days at
# 100 %, so 33 % (report.l2_reconciliation; docs/tpu.md, "Checked against this CPU
# and the paper").
DEFAULT_UTILIZATION = 0.33
CPU_UTILIZATION = 1.0

# Backward / forward ratios of the traced gradient graphs (tests/test_size_run.py
# recounts them on the digits model; B0 at 224 gives the same to 0.1): TensorFlow's
# unfused gradients of batch norm and the broadcasts (Tile, Sum, Mul) move 3.6 x the
# forward's per-row bytes in 1.4 x its ops.
BACKWARD_FLOPS = 2.0
BACKWARD_ROW_BYTES = 3.6
BACKWARD_STEP_BYTES = 2.0
BACKWARD_OPS = 1.4
FUSED_BACKWARD_BYTES = 2.0

# Per-step update work: (ops per variable, element reads + writes per variable element).
UPDATE = {
    # ResourceApplyRMSProp reads w, ms, mom, g and writes w, ms, mom; plus the lr read.
    "optimizer": (2, 7),
    # shadow -= (1 - decay) * (shadow - w): a read, Sub, Mul and AssignSub per weight.
    "ema": (6, 8),
    # l2_loss of each kernel, its gradient, and the sum with the data gradient.
    "l2": (4, 6),
}

SECONDS_PER_DAY = 86400.0


@dataclasses.dataclass(frozen=True)
class Rates:
    """What one replica achieves.

    matmul, depthwise, depthwise_backward: FLOP/s.
    bandwidth: ((bytes moved by one op, bytes/s), ...) by increasing size;
      looked up log-linearly between points, clamped outside; one point = flat.
    op_seconds: fixed cost of running one op.
    fused: element-wise ops fused away (XLA).
    """
    matmul: float
    depthwise: float
    depthwise_backward: float
    bandwidth: Tuple[Tuple[float, float], ...]
    op_seconds: float = 0.0
    fused: bool = False

    def bandwidth_at(self, nbytes: float) -> float:
        sizes = [s for s, _ in self.bandwidth]
        if len(sizes) == 1 or nbytes <= sizes[0]:
            return self.bandwidth[0][1]
        if nbytes >= sizes[-1]:
            return self.bandwidth[-1][1]
        i = bisect.bisect_right(sizes, nbytes)
        (s0, b0), (s1, b1) = self.bandwidth[i - 1], self.bandwidth[i]
        f = (math.log(nbytes) - math.log(s0)) / (math.log(s1) - math.log(s0))
        return math.exp(math.log(b0) + f * (math.log(b1) - math.log(b0)))


@dataclasses.dataclass(frozen=True)
class Variables:
    """Counts of a model's variables: (variables, elements) of each group.

    trainable: what the optimizer updates; weights: all model weights (the EMA
    averages them, BN statistics included); l2: trainable non-BN variables.
    """
    trainable: int
    trainable_elements: int
    weights: int
    weight_elements: int
    l2: int
    l2_elements: int


@dataclasses.dataclass(frozen=True)
class StepTime:
    """Seconds of one step, by part (see the module's rules)."""
    forward: float
    backward: float
    update: float
    teacher: float
    overhead: float
    utilization: float

    @property
    def total(self) -> float:
        return ((self.forward + self.backward + self.update + self.teacher)
                / self.utilization + self.overhead)

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), total=self.total)


def check_utilization(utilization: float) -> float:
    if not 0 < utilization <= 1:  # also refuses NaN
        raise ValueError(f"--utilization must be in (0, 1], got {utilization}")
    return utilization


def default_utilization(device_name: str) -> float:
    return CPU_UTILIZATION if device_name == "cpu" else DEFAULT_UTILIZATION


def device_rates(device: dict, dtype: str) -> Rates:
    """The `Rates` of a `devices.get` row for `dtype` at 100 % of peak."""
    if "cpu" in device:
        c = device["cpu"]
        return Rates(matmul=c["matmul_gflops"] * 1e9, depthwise=c["depthwise_gflops"] * 1e9,
                     depthwise_backward=c["depthwise_backward_gflops"] * 1e9,
                     bandwidth=tuple((float(s), g * 1e9) for s, g in c["bandwidth"]),
                     op_seconds=c["op_overhead_us"] * 1e-6, fused=False)
    vector = device["fp32_tflops"] * 1e12
    return Rates(matmul=devices.peak_flops(device, dtype), depthwise=vector,
                 depthwise_backward=vector, bandwidth=((1.0, device["bandwidth_gbs"] * 1e9),),
                 op_seconds=device["op_overhead_us"] * 1e-6, fused=device["xla_fusion"])


def _moved(op: graph.OpWork, fused: bool) -> Tuple[int, int]:
    """(per-row, per-step) elements an op reads and writes."""
    if fused and op.kind == "elementwise":
        return 0, 0
    return op.row_elements, op.step_elements


def op_seconds(op: graph.OpWork, rows: int, rates: Rates, act_bytes: int,
               backward: bool = False) -> float:
    """Roofline time of one forward op (or of its gradient, `backward`) at `rows`."""
    row, step = _moved(op, rates.fused)
    nbytes = row * rows * act_bytes + step * 4
    if backward:
        flops = BACKWARD_FLOPS * op.flops_per_row * rows
        row_scale = FUSED_BACKWARD_BYTES if rates.fused else BACKWARD_ROW_BYTES
        moved = row_scale * row * rows * act_bytes + BACKWARD_STEP_BYTES * step * 4
    else:
        flops = op.flops_per_row * rows
        moved = nbytes
    if op.kind == "matmul":
        compute = flops / rates.matmul
    elif op.kind == "depthwise":
        compute = flops / (rates.depthwise_backward if backward else rates.depthwise)
    else:
        compute = 0.0
    # A backward op touches tensors of the forward op's size: same bandwidth.
    return max(compute, moved / rates.bandwidth_at(nbytes) if moved else 0.0)


def forward_seconds(work: graph.ForwardWork, rows: int, rates: Rates, act_bytes: int,
                    backward: bool = False) -> float:
    return sum(op_seconds(op, rows, rates, act_bytes, backward) for op in work.ops)


def update_cost(variables: Variables) -> Tuple[int, int]:
    """(ops, bytes) of the per-step optimizer, EMA and L2 work (float32 variables)."""
    groups = {"optimizer": (variables.trainable, variables.trainable_elements),
              "ema": (variables.weights, variables.weight_elements),
              "l2": (variables.l2, variables.l2_elements)}
    ops = sum(UPDATE[k][0] * n for k, (n, _) in groups.items())
    nbytes = sum(UPDATE[k][1] * e * 4 for k, (_, e) in groups.items())
    return ops, nbytes


def step_time(student: graph.ForwardWork, variables: Variables, rows: int, rates: Rates,
              dtype: str, utilization: float = 1.0,
              teacher: Optional[graph.ForwardWork] = None, teacher_rows: int = 0) -> StepTime:
    """Seconds of one replica's step with `rows` student rows (B + U).

    `student`: the training-mode forward ops; `teacher`: an online teacher's
    inference-mode forward ops, run on `teacher_rows` (U) rows.
    """
    check_utilization(utilization)
    act = {"bfloat16": 2, "float32": 4}[dtype]
    update_ops, update_bytes = update_cost(variables)
    teacher_s, teacher_ops = 0.0, 0
    if teacher is not None and teacher_rows:
        teacher_s = forward_seconds(teacher, teacher_rows, rates, act)
        teacher_ops = teacher.num_ops
    ops = student.num_ops * (1 + BACKWARD_OPS) + update_ops + teacher_ops
    # Update tensors are whole variables: the bandwidth of a model-sized copy.
    update_s = update_bytes / rates.bandwidth_at(update_bytes / max(update_ops, 1))
    return StepTime(forward=forward_seconds(student, rows, rates, act),
                    backward=forward_seconds(student, rows, rates, act, backward=True),
                    update=update_s, teacher=teacher_s, overhead=ops * rates.op_seconds,
                    utilization=utilization)


def train_flops(forward_flops_per_row: float, rows: int, teacher_forward_flops: float = 0.0,
                teacher_rows: int = 0) -> float:
    """FLOPs of one replica's step: forward + backward (2 x forward) + the teacher's forward."""
    return (1 + BACKWARD_FLOPS) * forward_flops_per_row * rows + (
        teacher_forward_flops * teacher_rows)


def days(seconds_per_step: float, steps: int) -> float:
    return seconds_per_step * steps / SECONDS_PER_DAY
