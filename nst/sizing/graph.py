"""The work of a model's forward pass, op by op, read from its traced graph.

`forward_work(model, image_size)` traces `model(images)` for a batch of
unknown size in a tf.function (no activations are computed) and turns every
op of the graph into an `OpWork`: its FLOPs per row and the elements it
reads and writes, split into the per-row part (tensors with the batch
dimension) and the per-step part (weights, per-channel statistics).
The graph is walked rather than the Keras layers because much of a small
model's time is in ops that are not layers: the swish (a sigmoid and a
product), the SE gate's product, the batch-norm moments and the residual
adds.

Rules per op:
  Conv2D      FLOPs = 2 x output elements x kh x kw x input channels
  Depthwise   FLOPs = 2 x output elements x kh x kw  (kind "depthwise")
  MatMul      FLOPs = 2 x output elements x inner dimension
  others      no FLOPs counted (element-wise work and reductions are
              bandwidth-bound); reductions (Mean, Sum, ...) are marked as such
  elements    every input and output is read or written once; ops that only
              alias a buffer (variable reads, reshapes) move nothing
  ops         every op counts once for the per-op overhead except those the
              graph optimiser removes or that do not run as kernels
              (constants, placeholders, identities, no-ops)
"""

import dataclasses
import math
from typing import Tuple

# Not kernels at run time: grappler folds or forwards them.
FREE = frozenset({"Const", "Placeholder", "NoOp", "Identity", "IdentityN",
                  "StopGradient"})
# Kernels that alias their input instead of copying it.
NO_COPY = frozenset({"ReadVariableOp", "VarHandleOp", "Reshape", "Squeeze",
                     "ExpandDims", "Shape", "ShapeN", "Size", "Rank", "StridedSlice",
                     "Pack"})
MATMUL = frozenset({"Conv2D", "MatMul", "BatchMatMulV2"})
DEPTHWISE = frozenset({"DepthwiseConv2dNative"})
# Reductions read a whole tensor even when XLA fuses the element-wise ops around them.
REDUCTION = frozenset({"Mean", "Sum", "Max", "Min", "Prod"})


@dataclasses.dataclass(frozen=True)
class OpWork:
    """One op of a forward pass.

    kind: "matmul" (Conv2D, MatMul), "depthwise", "reduction" or "elementwise".
    flops_per_row: FLOPs for one image.
    row_elements: elements read + written per image (tensors with a batch dim).
    step_elements: elements read + written once per step (weights, statistics).
    """
    type: str
    kind: str
    flops_per_row: float = 0.0
    row_elements: int = 0
    step_elements: int = 0


@dataclasses.dataclass(frozen=True)
class ForwardWork:
    """All ops of one forward pass (training or inference mode)."""
    ops: Tuple[OpWork, ...]

    @property
    def num_ops(self) -> int:
        return len(self.ops)

    def flops_per_row(self, kind: str = None) -> float:
        return sum(o.flops_per_row for o in self.ops if kind in (None, o.kind))

    @property
    def row_elements(self) -> int:
        return sum(o.row_elements for o in self.ops)


def _has_batch(shape) -> bool:
    return shape.rank is not None and shape.rank > 0 and shape[0] is None


def _elements(shape, per_row: bool) -> int:
    dims = shape[1:] if per_row else shape
    if any(d is None for d in dims):
        raise ValueError(f"an unknown dimension besides the batch: {shape}")
    return math.prod(dims)


def _conv_flops(op) -> float:
    """FLOPs per row of a convolution or matmul (static shapes but the batch)."""
    out = op.outputs[0].shape
    if op.type == "DepthwiseConv2dNative":
        kh, kw = op.inputs[1].shape[:2]
        return 2.0 * _elements(out, True) * kh * kw
    if op.type == "Conv2D":
        kh, kw, c_in = op.inputs[1].shape[:3]
        return 2.0 * _elements(out, True) * kh * kw * c_in
    # MatMul [B, k] x [k, n]. Contracting over the batch (a weight gradient,
    # [k, B] x [B, n]) costs 2 k n per row.
    transpose_a = op.get_attr("transpose_a") if op.type == "MatMul" else False
    inner = op.inputs[0].shape[0 if transpose_a else -1]
    if inner is None:
        return 2.0 * _elements(out, False)
    return 2.0 * _elements(out, _has_batch(out)) * inner


def op_work(op) -> OpWork:
    """The `OpWork` of one graph op (see the module's rules)."""
    kind = ("matmul" if op.type in MATMUL else
            "depthwise" if op.type in DEPTHWISE else
            "reduction" if op.type in REDUCTION else "elementwise")
    flops = _conv_flops(op) if kind in ("matmul", "depthwise") else 0.0
    row = step = 0
    if op.type not in NO_COPY:
        for tensor in list(op.inputs) + list(op.outputs):
            if tensor.dtype.name == "resource":
                continue
            if _has_batch(tensor.shape):
                row += _elements(tensor.shape, True)
            else:
                step += _elements(tensor.shape, False)
    return OpWork(type=op.type, kind=kind, flops_per_row=flops, row_elements=row,
                  step_elements=step)


def graph_work(graph) -> ForwardWork:
    """`OpWork` of every op of a traced graph that runs as a kernel."""
    return ForwardWork(tuple(op_work(op) for op in graph.get_operations()
                             if op.type not in FREE))


def forward_work(model, image_size: int, training: bool = True,
                 channels: int = 3) -> ForwardWork:
    """The ops of `model(images, training=training)` at `image_size` pixels."""
    import tensorflow as tf
    spec = tf.TensorSpec([None, image_size, image_size, channels], tf.float32)
    concrete = tf.function(lambda x: model(x, training=training)).get_concrete_function(spec)
    return graph_work(concrete.graph)
