"""EfficientNet architecture table: named configs, block strings, scaling rules.

Everything that decides the *shape* of an EfficientNet lives here, as data:
the per-model (width, depth, resolution, dropout) table, the seven block
argument strings of the original code, and its rounding rules. The Keras
builder (`efficientnet.py`), the name maps of the checkpoint converters
(`names.py`) and the parameter/FLOP counter (`flops.py`) all walk the same
`blocks()` list, so they cannot disagree about the architecture.
"""

import dataclasses
import math
import re
from typing import List, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """One row of the named-model table.

    Attributes:
      width: channel multiplier.
      depth: repeat multiplier.
      resolution: native input side in pixels.
      dropout: dropout rate before the classifier.
    """
    width: float
    depth: float
    resolution: int
    dropout: float


MODEL_TABLE = {
    "efficientnet-b0": ModelParams(1.0, 1.0, 224, 0.2),
    "efficientnet-b1": ModelParams(1.0, 1.1, 240, 0.2),
    "efficientnet-b2": ModelParams(1.1, 1.2, 260, 0.3),
    "efficientnet-b3": ModelParams(1.2, 1.4, 300, 0.3),
    "efficientnet-b4": ModelParams(1.4, 1.8, 380, 0.4),
    "efficientnet-b5": ModelParams(1.6, 2.2, 456, 0.4),
    "efficientnet-b6": ModelParams(1.8, 2.6, 528, 0.5),
    "efficientnet-b7": ModelParams(2.0, 3.1, 600, 0.5),
    "efficientnet-l2": ModelParams(4.3, 5.3, 800, 0.5),
}

# The paper fine-tunes L2 at 475 pixels before its final 800-pixel model;
# "efficientnet-l2-475" is the same network with that native resolution.
MODEL_ALIASES = {
    "efficientnet-l2-475": ("efficientnet-l2", 475),
    "efficientnet-l2_475": ("efficientnet-l2", 475),
}

BLOCK_STRINGS = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
)

# 32x32 inputs (SVHN, CIFAR, digits): stages 2 and 3 keep the resolution.
SMALL_IMAGE_STRIDE_ONE_STAGES = (1, 2)

STEM_FILTERS = 32
HEAD_FILTERS = 1280
DEPTH_DIVISOR = 8
BATCH_NORM_MOMENTUM = 0.99
BATCH_NORM_EPSILON = 1e-3
DEFAULT_STOCHASTIC_DEPTH_RATE = 0.2


@dataclasses.dataclass(frozen=True)
class StageArgs:
    """One decoded block string: a stage of `repeats` MBConv blocks."""
    repeats: int
    kernel_size: int
    strides: Tuple[int, int]
    expand_ratio: int
    input_filters: int
    output_filters: int
    se_ratio: Optional[float]
    id_skip: bool = True


@dataclasses.dataclass(frozen=True)
class BlockArgs:
    """One MBConv block after scaling, numbered globally.

    Attributes:
      index: global block index i in 0..N-1 (the `blocks_i` scope).
      stage: 0-based stage index (0..6).
      repeat: index of the block inside its stage.
      input_filters, output_filters: channels in and out.
      expand_ratio: 1 means no expansion conv.
      kernel_size: depthwise kernel side.
      strides: depthwise strides.
      se_filters: squeeze channels, max(1, int(input_filters * se_ratio)),
        or 0 without squeeze-excitation.
      id_skip: whether the block may use a residual connection at all.
      drop_rate: stochastic-depth drop probability, rate * index / N.
    """
    index: int
    stage: int
    repeat: int
    input_filters: int
    output_filters: int
    expand_ratio: int
    kernel_size: int
    strides: Tuple[int, int]
    se_filters: int
    id_skip: bool
    drop_rate: float

    @property
    def expanded_filters(self) -> int:
        return self.input_filters * self.expand_ratio

    @property
    def has_residual(self) -> bool:
        return (self.id_skip and self.strides == (1, 1)
                and self.input_filters == self.output_filters)


_TOKEN = re.compile(r"^([a-z]+)(.*)$")


def decode_block_string(block_string: str) -> StageArgs:
    """Decodes `r1_k3_s11_e1_i32_o16_se0.25[_noskip]` into `StageArgs`."""
    fields = {}
    id_skip = True
    for token in block_string.split("_"):
        if token == "noskip":
            id_skip = False
            continue
        match = _TOKEN.match(token)
        if not match or not match.group(2):
            raise ValueError(f"Bad token {token!r} in block string {block_string!r}")
        fields[match.group(1)] = match.group(2)
    required = {"r", "k", "s", "e", "i", "o"}
    if not required <= fields.keys():
        raise ValueError(f"Block string {block_string!r} lacks one of "
                         f"{sorted(required - fields.keys())}")
    if fields.get("c", "0") != "0":
        raise ValueError(f"Block string {block_string!r}: only conv type 0 (MBConv) exists")
    strides = fields["s"]
    if len(strides) != 2:
        raise ValueError(f"Block string {block_string!r}: strides must have two digits")
    return StageArgs(
        repeats=int(fields["r"]),
        kernel_size=int(fields["k"]),
        strides=(int(strides[0]), int(strides[1])),
        expand_ratio=int(fields["e"]),
        input_filters=int(fields["i"]),
        output_filters=int(fields["o"]),
        se_ratio=float(fields["se"]) if "se" in fields else None,
        id_skip=id_skip,
    )


def round_filters(filters: int, width: Optional[float],
                  divisor: int = DEPTH_DIVISOR) -> int:
    """Scales a channel count by `width` and rounds to a multiple of `divisor`.

    Never rounds down by more than 10%.
    """
    if not width:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: Optional[float]) -> int:
    """Scales a stage's repeat count by `depth`, rounding up."""
    if not depth:
        return repeats
    return int(math.ceil(depth * repeats))


@dataclasses.dataclass(frozen=True)
class EfficientNetConfig:
    """Everything needed to build one EfficientNet.

    Attributes:
      name: the table name (e.g. "efficientnet-b0"); also the root scope of
        original checkpoints.
      width, depth: multipliers actually used (overrides already applied).
      resolution: native input side in pixels (the model's default S).
      dropout_rate: head dropout, training only.
      stochastic_depth_rate: rate of the last block is rate*(N-1)/N.
      num_classes: K.
      small_image: the 32x32 variant (stages 2 and 3 with stride 1).
      normalization: key of `normalization.NORMALIZATION` ("imagenet",
        "svhn") or None for inputs that are already normalised.
      block_strings: the seven stage strings.
    """
    name: str
    width: float
    depth: float
    resolution: int
    dropout_rate: float
    stochastic_depth_rate: float = DEFAULT_STOCHASTIC_DEPTH_RATE
    num_classes: int = 1000
    small_image: bool = False
    normalization: Optional[str] = "imagenet"
    block_strings: Tuple[str, ...] = BLOCK_STRINGS

    def stages(self) -> List[StageArgs]:
        stages = [decode_block_string(s) for s in self.block_strings]
        if self.small_image:
            stages = [dataclasses.replace(s, strides=(1, 1))
                      if i in SMALL_IMAGE_STRIDE_ONE_STAGES else s
                      for i, s in enumerate(stages)]
        return stages

    @property
    def stem_filters(self) -> int:
        return round_filters(STEM_FILTERS, self.width)

    @property
    def head_filters(self) -> int:
        return round_filters(HEAD_FILTERS, self.width)

    def blocks(self) -> List[BlockArgs]:
        """All MBConv blocks in order, with scaled filters and drop rates."""
        plan = []
        for stage_index, stage in enumerate(self.stages()):
            filters_in = round_filters(stage.input_filters, self.width)
            filters_out = round_filters(stage.output_filters, self.width)
            for repeat in range(round_repeats(stage.repeats, self.depth)):
                first = repeat == 0
                c_in = filters_in if first else filters_out
                se_filters = (max(1, int(c_in * stage.se_ratio))
                              if stage.se_ratio and 0 < stage.se_ratio <= 1 else 0)
                plan.append(dict(
                    stage=stage_index, repeat=repeat,
                    input_filters=c_in, output_filters=filters_out,
                    expand_ratio=stage.expand_ratio,
                    kernel_size=stage.kernel_size,
                    strides=stage.strides if first else (1, 1),
                    se_filters=se_filters, id_skip=stage.id_skip))
        total = len(plan)
        return [BlockArgs(index=i, drop_rate=self.stochastic_depth_rate * i / total, **b)
                for i, b in enumerate(plan)]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["block_strings"] = list(self.block_strings)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EfficientNetConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"Unknown EfficientNet config keys: {sorted(unknown)}")
        d = dict(d)
        if "block_strings" in d:
            d["block_strings"] = tuple(d["block_strings"])
        return cls(**d)


def model_names() -> List[str]:
    """All names `get_config` accepts."""
    return list(MODEL_TABLE) + list(MODEL_ALIASES)


def get_config(model_name: str,
               num_classes: int = 1000,
               width: Optional[float] = None,
               depth: Optional[float] = None,
               resolution: Optional[int] = None,
               dropout_rate: Optional[float] = None,
               stochastic_depth_rate: Optional[float] = None,
               small_image: bool = False,
               normalization: Optional[str] = "imagenet") -> EfficientNetConfig:
    """Looks up a named config and applies overrides.

    Args:
      model_name: one of `model_names()`.
      num_classes: K, a positive integer.
      width, depth: override the table's multipliers (the original's
        `--width_coefficient`, `--depth_coefficient`).
      resolution: override the native resolution (`--input_image_size`).
      dropout_rate, stochastic_depth_rate: override the noise rates
        (`--dropout_rate`, `--stochastic_depth_rate`).
      small_image: the 32x32 variant (`--small_image_model`).
      normalization: "imagenet", "svhn" or None.

    Raises:
      ValueError: unknown model name or an out-of-range argument.
    """
    root, alias_resolution = model_name, None
    if model_name in MODEL_ALIASES:
        root, alias_resolution = MODEL_ALIASES[model_name]
    if root not in MODEL_TABLE:
        raise ValueError(f"Unknown model name {model_name!r}; known names: "
                         f"{', '.join(model_names())}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    for label, value in (("width", width), ("depth", depth)):
        if value is not None and value <= 0:
            raise ValueError(f"{label} override must be positive, got {value}")
    for label, value in (("dropout_rate", dropout_rate),
                         ("stochastic_depth_rate", stochastic_depth_rate)):
        if value is not None and not 0 <= value < 1:
            raise ValueError(f"{label} must be in [0, 1), got {value}")
    if resolution is not None and resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    params = MODEL_TABLE[root]
    if resolution is None:
        resolution = 32 if small_image else (alias_resolution or params.resolution)
    return EfficientNetConfig(
        name=root,
        width=params.width if width is None else width,
        depth=params.depth if depth is None else depth,
        resolution=resolution,
        dropout_rate=params.dropout if dropout_rate is None else dropout_rate,
        stochastic_depth_rate=(DEFAULT_STOCHASTIC_DEPTH_RATE
                               if stochastic_depth_rate is None else stochastic_depth_rate),
        num_classes=num_classes,
        small_image=small_image,
        normalization=normalization,
    )
