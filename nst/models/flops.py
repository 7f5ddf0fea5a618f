"""Parameter and FLOP counts of an EfficientNet, computed from its config.

The count walks the same `EfficientNetConfig.blocks()` list as the Keras
builder, so it needs no model build: the whole table, EfficientNet-L2 at
800 pixels included, is instant. Tests check it against built models.

FLOPs here are those of the convolutions and the classifier
(multiply-adds x 2); element-wise work (batch norm, swish, the SE pooling and
gating, residual adds) is left out, as in the EfficientNet paper's "FLOPs",
which are multiply-adds (B0: 0.39B at 224 pixels).
"""

import dataclasses
import math
from typing import Optional

from nst.models import config as config_lib


@dataclasses.dataclass(frozen=True)
class ModelCost:
    """Size and forward cost of one model at one resolution.

    Attributes:
      name: config name.
      image_size: input side in pixels.
      trainable_params: kernels, biases, BN gamma/beta.
      non_trainable_params: BN moving means and variances.
      num_tensors: model variables (trainable and BN moving statistics).
      num_trainable_tensors: of which trainable.
      macs: multiply-adds of one forward pass for one image.
      macs_by_kind: the same split into "conv" (dense 2-D convolutions,
        including the 1x1 ones), "depthwise" and "dense" (the classifier).
    """
    name: str
    image_size: int
    trainable_params: int
    non_trainable_params: int
    num_tensors: int
    num_trainable_tensors: int
    macs: int
    macs_by_kind: dict = dataclasses.field(default_factory=dict)

    @property
    def flops(self) -> int:
        return 2 * self.macs


class _Counter:
    def __init__(self):
        self.trainable = 0
        self.non_trainable = 0
        self.tensors = 0
        self.trainable_tensors = 0
        self.macs = {"conv": 0, "depthwise": 0, "dense": 0}

    def conv(self, out_side, kernel, c_in, c_out, bias=False, kind="conv"):
        self.trainable += kernel * kernel * c_in * c_out + (c_out if bias else 0)
        self.tensors += 2 if bias else 1
        self.trainable_tensors += 2 if bias else 1
        self.macs[kind] += out_side * out_side * kernel * kernel * c_in * c_out

    def depthwise(self, out_side, kernel, channels):
        self.trainable += kernel * kernel * channels
        self.tensors += 1
        self.trainable_tensors += 1
        self.macs["depthwise"] += out_side * out_side * kernel * kernel * channels

    def batch_norm(self, channels):
        self.trainable += 2 * channels
        self.non_trainable += 2 * channels
        self.tensors += 4
        self.trainable_tensors += 2


def _same_out(side, stride):
    return int(math.ceil(side / stride))


def model_cost(config: config_lib.EfficientNetConfig,
               image_size: Optional[int] = None) -> ModelCost:
    """Counts parameters and multiply-adds of `config` at `image_size`.

    Args:
      config: the architecture.
      image_size: input side; defaults to `config.resolution`.
    """
    side = image_size or config.resolution
    count = _Counter()
    side = _same_out(side, 2)
    count.conv(side, 3, 3, config.stem_filters)
    count.batch_norm(config.stem_filters)
    for block in config.blocks():
        mid = block.expanded_filters
        if block.expand_ratio != 1:
            count.conv(side, 1, block.input_filters, mid)
            count.batch_norm(mid)
        side = _same_out(side, block.strides[0])
        count.depthwise(side, block.kernel_size, mid)
        count.batch_norm(mid)
        if block.se_filters:
            count.conv(1, 1, mid, block.se_filters, bias=True)
            count.conv(1, 1, block.se_filters, mid, bias=True)
        count.conv(side, 1, mid, block.output_filters)
        count.batch_norm(block.output_filters)
    last = config.blocks()[-1].output_filters
    count.conv(side, 1, last, config.head_filters)
    count.batch_norm(config.head_filters)
    count.conv(1, 1, config.head_filters, config.num_classes, bias=True, kind="dense")
    return ModelCost(name=config.name, image_size=image_size or config.resolution,
                     trainable_params=count.trainable,
                     non_trainable_params=count.non_trainable,
                     num_tensors=count.tensors,
                     num_trainable_tensors=count.trainable_tensors, macs=sum(count.macs.values()),
                     macs_by_kind=dict(count.macs))
