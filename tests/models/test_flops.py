"""Parameter and FLOP counts: against built models, Keras' shapes and the paper."""

import subprocess
import sys

import numpy as np
import pytest

from nst.models import config as config_lib
from nst.models import flops
from nst.models import table_cli
from nst.models.efficientnet import build_model


def _macs_from_built_model(model, image_size):
    """Multiply-adds read off a built model's kernels and Keras-computed shapes.

    Independent of `flops.model_cost`: spatial sizes come from the functional
    graph (Keras' own SAME-padding arithmetic), channel counts from kernels.
    """
    def side(tensor):
        return int(tensor.shape[1])

    macs = {"conv": 0, "depthwise": 0, "dense": 0}
    stem = model.get_layer("stem")
    out = side(stem.output)
    macs["conv"] += out * out * int(np.prod(stem.conv.kernel.shape))
    for block in model.block_layers:
        in_side, out_side = side(block.input), side(block.output)
        if block.expand_ratio != 1:
            macs["conv"] += in_side * in_side * int(np.prod(block.expand_conv.kernel.shape))
        k = block.depthwise_conv.kernel.shape
        macs["depthwise"] += out_side * out_side * int(k[0] * k[1] * k[2])
        if block.se_filters:
            macs["conv"] += int(np.prod(block.se_reduce.kernel.shape))
            macs["conv"] += int(np.prod(block.se_expand.kernel.shape))
        macs["conv"] += out_side * out_side * int(np.prod(block.project_conv.kernel.shape))
    head = model.get_layer("head")
    out = side(head.output)
    macs["conv"] += out * out * int(np.prod(head.conv.kernel.shape))
    macs["dense"] += int(np.prod(model.get_layer("logits").kernel.shape))
    return macs


@pytest.mark.parametrize("name,kwargs,size", [
    ("efficientnet-b0", {}, 224),
    ("efficientnet-b2", {}, 260),
    ("efficientnet-b0", dict(num_classes=10, small_image=True, width=0.25, depth=0.25), 32),
    ("efficientnet-b1", dict(num_classes=7), 97),  # odd size: SAME padding rounds up
])
def test_counts_equal_built_model(name, kwargs, size):
    model, _ = build_model(name, image_size=size, **kwargs)
    cost = flops.model_cost(model.config, image_size=size)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    non_trainable = sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
    assert cost.trainable_params == trainable
    assert cost.non_trainable_params == non_trainable
    assert cost.num_tensors == len(model.weights)
    assert cost.num_trainable_tensors == len(model.trainable_weights)
    assert cost.macs_by_kind == _macs_from_built_model(model, size)
    assert cost.flops == 2 * cost.macs == 2 * sum(cost.macs_by_kind.values())


def _mbconv(side_in, side_out, c_in, c_out, expand, kernel):
    """Hand count of one MBConv block: (conv, depthwise) multiply-adds."""
    mid = c_in * expand
    se = max(1, int(c_in * 0.25))  # SE width from the block input
    conv = (side_in * side_in * c_in * mid if expand != 1 else 0)  # 1x1 expansion
    conv += mid * se + se * mid                                     # SE reduce, expand
    conv += side_out * side_out * mid * c_out                       # 1x1 projection
    depthwise = side_out * side_out * kernel * kernel * mid
    return conv, depthwise


def test_b0_hand_count():
    """EfficientNet-B0 at 224 counted by hand from its block table (§6.2): every
    convolution, depthwise convolution and the classifier, block by block."""
    blocks = [  # (side in, side out, c_in, c_out, expand, kernel), one line per block
        (112, 112, 32, 16, 1, 3),
        (112, 56, 16, 24, 6, 3), (56, 56, 24, 24, 6, 3),
        (56, 28, 24, 40, 6, 5), (28, 28, 40, 40, 6, 5),
        (28, 14, 40, 80, 6, 3), (14, 14, 80, 80, 6, 3), (14, 14, 80, 80, 6, 3),
        (14, 14, 80, 112, 6, 5), (14, 14, 112, 112, 6, 5), (14, 14, 112, 112, 6, 5),
        (14, 7, 112, 192, 6, 5)] + [(7, 7, 192, 192, 6, 5)] * 3 + [
        (7, 7, 192, 320, 6, 3)]
    conv = 112 * 112 * (3 * 3 * 3) * 32   # stem: 3x3 stride 2, 3 -> 32 channels
    conv += 7 * 7 * 320 * 1280            # head: 1x1, 320 -> 1280
    depthwise = 0
    for block in blocks:
        c, d = _mbconv(*block)
        conv, depthwise = conv + c, depthwise + d
    cost = flops.model_cost(config_lib.get_config("efficientnet-b0"))
    assert cost.macs_by_kind == {"conv": conv, "depthwise": depthwise,
                                 "dense": 1280 * 1000}
    assert cost.macs == conv + depthwise + 1280 * 1000 == 385_814_752  # 0.39 G (paper)


# Multiply-adds printed (rounded) in the EfficientNet paper's Table 2.
PAPER_GMACS = {"efficientnet-b0": 0.39, "efficientnet-b1": 0.70, "efficientnet-b2": 1.0,
               "efficientnet-b3": 1.8, "efficientnet-b4": 4.2, "efficientnet-b5": 9.9,
               "efficientnet-b6": 19, "efficientnet-b7": 37}


@pytest.mark.parametrize("name", sorted(PAPER_GMACS))
def test_macs_close_to_paper(name):
    cost = flops.model_cost(config_lib.get_config(name))
    # The paper rounds and its counter includes a little element-wise work,
    # so allow 5%; a wrong stride or width rule is off by far more.
    assert cost.macs / 1e9 == pytest.approx(PAPER_GMACS[name], rel=0.05)


@pytest.mark.parametrize("name", sorted(table_cli.PAPER_PARAMS))
def test_params_within_one_percent_of_paper(name):
    cost = flops.model_cost(config_lib.get_config(name))
    assert cost.trainable_params == pytest.approx(table_cli.PAPER_PARAMS[name], rel=0.01)


def test_l2_sanity_counts():
    cost = flops.model_cost(config_lib.get_config("efficientnet-l2"))
    # §6.6: 1654 model tensors, 1134 trainable + 520 BN moving statistics.
    assert (cost.num_tensors, cost.num_trainable_tensors) == (1654, 1134)
    assert cost.image_size == 800


@pytest.mark.parametrize("name,total,trainable", [("efficientnet-b0", 311, 213),
                                                  ("efficientnet-b7", 1037, 711)])
def test_sanity_tensor_counts(name, total, trainable):
    cost = flops.model_cost(config_lib.get_config(name))
    assert (cost.num_tensors, cost.num_trainable_tensors) == (total, trainable)


def test_table_cli_prints_every_model():
    result = subprocess.run([sys.executable, "-m", "nst.models.table_cli"],
                            capture_output=True, text=True, check=True)
    for name in config_lib.MODEL_TABLE:
        assert f"| {name} |" in result.stdout
    assert "| efficientnet-b0 | 224 | 5,288,548 |" in result.stdout
    assert "480,309,308" in result.stdout
