"""Step and wall time from FLOPs.

A training step costs forward + backward, the backward about twice the
forward (a gradient for the activations and one for the weights per
layer): 3 x forward FLOPs per student row. An online teacher adds one
forward pass per unlabeled row at its own resolution. Forward FLOPs are
nst/models/flops.py's (convolutions and classifier; element-wise work is
left out). Time = FLOPs / (peak x utilisation).
"""

# The utilisation that reconciles the paper's ~6 days per EfficientNet-L2 iteration
# on 2048 TPU v3 cores with the L2 recipe's FLOPs (docs/tpu.md, "Sizing a run").
DEFAULT_UTILIZATION = 0.10

SECONDS_PER_DAY = 86400.0


def train_flops(forward_flops_per_row: float, rows: int, teacher_forward_flops: float = 0.0,
                teacher_rows: int = 0) -> float:
    """FLOPs of one replica's step."""
    return 3.0 * forward_flops_per_row * rows + teacher_forward_flops * teacher_rows


def step_seconds(step_flops: float, peak_flops: float, utilization: float) -> float:
    if not 0 < utilization <= 1:
        raise ValueError(f"--utilization must be in (0, 1], got {utilization}")
    return step_flops / (peak_flops * utilization)


def days(seconds_per_step: float, steps: int) -> float:
    return seconds_per_step * steps / SECONDS_PER_DAY
