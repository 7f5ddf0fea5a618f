"""Memory of one replica's training step.

Fixed part (bytes, variables are float32 also under mixed_bfloat16):
  parameters   4 x model.count_params() (trainable and BN moving statistics)
  gradients    4 x trainable parameters
  slots        4 x trainable parameters x SLOTS[optimizer] (TF1RMSProp: mean
               square and momentum, nst/train/optimizer.py)
  EMA          4 x model.count_params() (nst/train/ema.py averages the weights
               and the BN statistics)
  teacher      4 x the online teacher's count_params() (inference only)

Per row (one image of the B labeled + U unlabeled rows a replica sees),
`activation_bytes_per_row`. The rule, per leaf Keras layer of the model
traced in training mode at batch 1, counting each tensor once:
  Conv2D, DepthwiseConv2D, Dense  keep their input (for the kernel gradient);
  BatchNormalization              keeps its input and its output (the input
                                  for the statistics' gradient; the output is
                                  what the swish after it keeps);
  Dropout                         keeps a mask the size of its output;
  others                          nothing (pooling, residual adds, the
                                  per-sample stochastic-depth scale).
Each kept element takes the compute dtype's size (2 bytes bfloat16, 4 float32).
The SE gate's product and the swish inside the SE branch are not layers and
are not counted; `nst-size-run --check` measures how far the rule is off.
"""

import contextlib
import math

SLOTS = {"rmsprop": 2, "momentum": 1, "sgd": 0, "adam": 2}
DTYPE_BYTES = {"bfloat16": 2, "float32": 4}
# Fraction of device memory left free for the compiler's scratch space, the
# input pipeline's buffers and fragmentation.
RESERVE = 0.10


def slot_count(optimizer: str) -> int:
    if optimizer not in SLOTS:
        raise ValueError(f"--optimizer={optimizer!r}: one of {', '.join(sorted(SLOTS))}")
    return SLOTS[optimizer]


def _is_leaf(layer) -> bool:
    return not list(layer._flatten_layers(include_self=False, recursive=False))


@contextlib.contextmanager
def _recording_calls(records):
    """Records (layer, inputs, outputs) of every leaf layer call."""
    import keras
    original = keras.layers.Layer.__call__

    def call(self, *args, **kwargs):
        outputs = original(self, *args, **kwargs)
        if _is_leaf(self) and args:
            records.append((self, args[0], outputs))
        return outputs

    keras.layers.Layer.__call__ = call
    try:
        yield
    finally:
        keras.layers.Layer.__call__ = original


def kept_tensors(model, image_size: int, channels: int = 3):
    """[(layer class, tensor, what)] the backward pass keeps, each tensor once.

    Traces `model(images, training=True)` for a batch of one in a tf.function
    (no activations are computed).
    """
    import tensorflow as tf
    records = []
    spec = tf.TensorSpec([1, image_size, image_size, channels], tf.float32)
    with _recording_calls(records):
        tf.function(lambda x: model(x, training=True)).get_concrete_function(spec)
    kept, seen = [], set()

    def keep(kind, tensor, what):
        if not hasattr(tensor, "shape") or tensor.ref() in seen:
            return
        seen.add(tensor.ref())
        kept.append((kind, tensor, what))

    for layer, inputs, outputs in records:
        kind = type(layer).__name__
        if kind in ("Conv2D", "DepthwiseConv2D", "Dense"):
            keep(kind, inputs, "input")
        elif kind == "BatchNormalization":
            keep(kind, inputs, "input")
            keep(kind, outputs, "output")
        elif kind == "Dropout":
            keep(kind, outputs, "mask")
    return kept


def activation_bytes_per_row(model, image_size: int, dtype: str) -> int:
    """Bytes the backward pass keeps per image (see the module's rule)."""
    elements = sum(math.prod(t.shape[1:]) for _, t, _ in kept_tensors(model, image_size))
    return elements * DTYPE_BYTES[dtype]


def forward_peak_bytes_per_row(model, image_size: int, dtype: str) -> int:
    """An inference pass's per-image peak: the largest input + output of one layer."""
    import tensorflow as tf
    records = []
    spec = tf.TensorSpec([1, image_size, image_size, 3], tf.float32)
    with _recording_calls(records):
        tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    largest = max(math.prod(i.shape[1:]) + math.prod(o.shape[1:])
                  for _, i, o in records if hasattr(i, "shape") and hasattr(o, "shape"))
    return largest * DTYPE_BYTES[dtype]


def fixed_bytes(params: int, trainable: int, optimizer: str, teacher_params: int = 0) -> dict:
    """The batch-independent memory of one replica, by part (bytes)."""
    return {"parameters": 4 * params, "gradients": 4 * trainable,
            "slots": 4 * trainable * slot_count(optimizer), "ema": 4 * params,
            "teacher": 4 * teacher_params}


def step_bytes(fixed: dict, labeled: int, unlabeled: int, student_row: int,
               teacher_row: int = 0) -> int:
    """Total bytes of one replica's step with `labeled` + `unlabeled` rows."""
    return sum(fixed.values()) + (labeled + unlabeled) * student_row + unlabeled * teacher_row


def largest_batch(memory_bytes: int, fixed: dict, student_row: int, unlabeled_rows,
                  teacher_row: int = 0, reserve: float = RESERVE) -> int:
    """The largest labeled batch B per replica whose step fits (0 if none).

    `unlabeled_rows(B)` gives U for B (ceil(B p r), nst/data/input_pipeline.py).
    Memory grows with B, so the answer is found by doubling and bisection.
    """
    budget = memory_bytes * (1.0 - reserve)

    def fits(b):
        return step_bytes(fixed, b, unlabeled_rows(b), student_row, teacher_row) <= budget

    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low
