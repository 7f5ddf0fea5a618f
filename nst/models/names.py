"""Variable name maps: nst paths <-> original TF1 names <-> keras.applications.

nst variables have Keras paths such as `blocks_3/expand_bn/gamma`. The
original code (§6.6 of the spec) names the same tensor
`<model_name>/blocks_3/tpu_batch_normalization/gamma`: TF1 numbered layers
of one type by creation order inside a scope, so the suffix of a conv or BN
depends on whether the block has an expansion conv. `keras.applications`
names it `block2b_expand_bn/gamma` (stage number, repeat letter).

Both maps are rules over the config's block list, not hand-written tables.
"""

from typing import Dict

from nst.models import config as config_lib

EMA_SUFFIX = "/ExponentialMovingAverage"

# Sub-layer role -> TF1 layer scope, for blocks with and without expansion.
_ORIGINAL_BLOCK_SCOPES = {
    True: {  # expand_ratio != 1
        "expand_conv": "conv2d",
        "expand_bn": "tpu_batch_normalization",
        "depthwise_conv": "depthwise_conv2d",
        "depthwise_bn": "tpu_batch_normalization_1",
        "se_reduce": "se/conv2d",
        "se_expand": "se/conv2d_1",
        "project_conv": "conv2d_1",
        "project_bn": "tpu_batch_normalization_2",
    },
    False: {  # expand_ratio == 1
        "depthwise_conv": "depthwise_conv2d",
        "depthwise_bn": "tpu_batch_normalization",
        "se_reduce": "se/conv2d",
        "se_expand": "se/conv2d_1",
        "project_conv": "conv2d",
        "project_bn": "tpu_batch_normalization_1",
    },
}

_ORIGINAL_TOP_SCOPES = {
    "stem/conv": "stem/conv2d",
    "stem/bn": "stem/tpu_batch_normalization",
    "head/conv": "head/conv2d",
    "head/bn": "head/tpu_batch_normalization",
    "logits": "head/dense",
}

_KERAS_BLOCK_SUFFIXES = {
    "expand_conv": "expand_conv",
    "expand_bn": "expand_bn",
    "depthwise_conv": "dwconv",
    "depthwise_bn": "bn",
    "se_reduce": "se_reduce",
    "se_expand": "se_expand",
    "project_conv": "project_conv",
    "project_bn": "project_bn",
}

_KERAS_TOP_LAYERS = {
    "stem/conv": "stem_conv",
    "stem/bn": "stem_bn",
    "head/conv": "top_conv",
    "head/bn": "top_bn",
    "logits": "predictions",
}


def _split(path):
    """'blocks_3/expand_bn/gamma' -> ('blocks_3', 'expand_bn', 'gamma')."""
    parts = path.split("/")
    return parts[0], "/".join(parts[1:-1]), parts[-1]


def _block_index(layer_name):
    if not layer_name.startswith("blocks_"):
        return None
    return int(layer_name[len("blocks_"):])


def original_names(model) -> Dict[str, str]:
    """Maps each model variable path to its original name under the root scope.

    Args:
      model: an `EfficientNet`.

    Returns:
      {nst path: original suffix}, e.g. 'blocks_0/depthwise_conv/kernel' ->
      'blocks_0/depthwise_conv2d/depthwise_kernel'. Prefix the root scope
      (the model name, e.g. 'efficientnet-b0/') to get checkpoint keys.
    """
    blocks = {b.index: b for b in model.config.blocks()}
    mapping = {}
    for variable in model.weights:
        layer, role, leaf = _split(variable.path)
        index = _block_index(layer)
        if index is not None:
            scopes = _ORIGINAL_BLOCK_SCOPES[blocks[index].expand_ratio != 1]
            scope = f"{layer}/{scopes[role]}"
            if role == "depthwise_conv":
                leaf = "depthwise_kernel"
        else:
            key = f"{layer}/{role}" if role else layer
            if key not in _ORIGINAL_TOP_SCOPES:
                raise ValueError(f"No original name for variable {variable.path}")
            scope = _ORIGINAL_TOP_SCOPES[key]
        mapping[variable.path] = f"{scope}/{leaf}"
    return mapping


def keras_block_prefix(block: config_lib.BlockArgs) -> str:
    """keras.applications layer prefix, e.g. stage 1 repeat 1 -> 'block2b'."""
    if block.repeat >= 26:
        raise ValueError("keras.applications names only 26 repeats per stage")
    return f"block{block.stage + 1}{chr(ord('a') + block.repeat)}"


def keras_applications_names(model) -> Dict[str, str]:
    """Maps each model variable path to its `keras.applications` variable path."""
    blocks = {b.index: b for b in model.config.blocks()}
    mapping = {}
    for variable in model.weights:
        layer, role, leaf = _split(variable.path)
        index = _block_index(layer)
        if index is not None:
            name = f"{keras_block_prefix(blocks[index])}_{_KERAS_BLOCK_SUFFIXES[role]}"
        else:
            key = f"{layer}/{role}" if role else layer
            if key not in _KERAS_TOP_LAYERS:
                raise ValueError(f"No keras.applications name for variable {variable.path}")
            name = _KERAS_TOP_LAYERS[key]
        mapping[variable.path] = f"{name}/{leaf}"
    return mapping
