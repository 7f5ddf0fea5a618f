"""The EfficientNet table, block strings and rounding rules against §6 of the spec.

The expected values below are typed in from the spec's tables (or worked out
by hand in the comments), never derived from `nst.models.config` itself, so a
wrong constant or rounding rule in the library cannot also fix the test.
"""

import dataclasses
import math

import pytest

from nst.models import config as config_lib
from nst.models.config import (decode_block_string, get_config, round_filters,
                               round_repeats)

# §6.1: width, depth, resolution, dropout, blocks, stem ch, head ch.
SPEC_MODEL_TABLE = {
    "efficientnet-b0": (1.0, 1.0, 224, 0.2, 16, 32, 1280),
    "efficientnet-b1": (1.0, 1.1, 240, 0.2, 23, 32, 1280),
    "efficientnet-b2": (1.1, 1.2, 260, 0.3, 23, 32, 1408),
    "efficientnet-b3": (1.2, 1.4, 300, 0.3, 26, 40, 1536),
    "efficientnet-b4": (1.4, 1.8, 380, 0.4, 32, 48, 1792),
    "efficientnet-b5": (1.6, 2.2, 456, 0.4, 39, 48, 2048),
    "efficientnet-b6": (1.8, 2.6, 528, 0.5, 45, 56, 2304),
    "efficientnet-b7": (2.0, 3.1, 600, 0.5, 55, 64, 2560),
    "efficientnet-l2": (4.3, 5.3, 800, 0.5, 88, 136, 5504),
}

# §6.3: (in, out, repeats) of the seven stages.
SPEC_STAGES = {
    "efficientnet-b0": [(32, 16, 1), (16, 24, 2), (24, 40, 2), (40, 80, 3),
                        (80, 112, 3), (112, 192, 4), (192, 320, 1)],
    "efficientnet-b1": [(32, 16, 2), (16, 24, 3), (24, 40, 3), (40, 80, 4),
                        (80, 112, 4), (112, 192, 5), (192, 320, 2)],
    "efficientnet-b2": [(32, 16, 2), (16, 24, 3), (24, 48, 3), (48, 88, 4),
                        (88, 120, 4), (120, 208, 5), (208, 352, 2)],
    "efficientnet-b3": [(40, 24, 2), (24, 32, 3), (32, 48, 3), (48, 96, 5),
                        (96, 136, 5), (136, 232, 6), (232, 384, 2)],
    "efficientnet-b4": [(48, 24, 2), (24, 32, 4), (32, 56, 4), (56, 112, 6),
                        (112, 160, 6), (160, 272, 8), (272, 448, 2)],
    "efficientnet-b5": [(48, 24, 3), (24, 40, 5), (40, 64, 5), (64, 128, 7),
                        (128, 176, 7), (176, 304, 9), (304, 512, 3)],
    "efficientnet-b6": [(56, 32, 3), (32, 40, 6), (40, 72, 6), (72, 144, 8),
                        (144, 200, 8), (200, 344, 11), (344, 576, 3)],
    "efficientnet-b7": [(64, 32, 4), (32, 48, 7), (48, 80, 7), (80, 160, 10),
                        (160, 224, 10), (224, 384, 13), (384, 640, 4)],
    "efficientnet-l2": [(136, 72, 6), (72, 104, 11), (104, 176, 11), (176, 344, 16),
                        (344, 480, 16), (480, 824, 22), (824, 1376, 6)],
}

# §6.2: kernel, stride, expand ratio of each stage (independent of the model).
SPEC_STAGE_SHAPE = [(3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6)]

ALL_MODELS = list(SPEC_MODEL_TABLE)


def _stages_from_blocks(blocks):
    """Regroups the flat block list into [(in, out, repeats)] per stage."""
    stages = {}
    for b in blocks:
        if b.repeat == 0:
            stages[b.stage] = [b.input_filters, b.output_filters, 0]
        stages[b.stage][2] += 1
    return [tuple(stages[s]) for s in sorted(stages)]


# --- the model table ---------------------------------------------------------

@pytest.mark.parametrize("name", ALL_MODELS)
def test_stage_table_matches_spec(name):
    assert _stages_from_blocks(get_config(name).blocks()) == SPEC_STAGES[name]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_table_row_matches_spec(name):
    width, depth, resolution, dropout, n_blocks, stem, head = SPEC_MODEL_TABLE[name]
    cfg = get_config(name)
    assert (cfg.name, cfg.width, cfg.depth, cfg.resolution, cfg.dropout_rate) == (
        name, width, depth, resolution, dropout)
    assert len(cfg.blocks()) == n_blocks
    assert cfg.stem_filters == stem
    assert cfg.head_filters == head
    assert cfg.stochastic_depth_rate == 0.2
    assert cfg.num_classes == 1000
    assert config_lib.BATCH_NORM_MOMENTUM == 0.99
    assert config_lib.BATCH_NORM_EPSILON == 1e-3


@pytest.mark.parametrize("name", ALL_MODELS)
def test_block_wiring_inside_stages(name):
    """Blocks are numbered 0..N-1; only a stage's first block changes stride/filters."""
    blocks = get_config(name).blocks()
    assert [b.index for b in blocks] == list(range(len(blocks)))
    previous_out = SPEC_MODEL_TABLE[name][5]  # the stem feeds block 0
    for b in blocks:
        kernel, stride, expand = SPEC_STAGE_SHAPE[b.stage]
        assert b.input_filters == previous_out, "each block consumes its predecessor's output"
        assert b.kernel_size == kernel and b.expand_ratio == expand
        assert b.strides == ((stride, stride) if b.repeat == 0 else (1, 1))
        if b.repeat > 0:
            assert b.input_filters == b.output_filters
        # SE width follows the block *input*, not the expanded width (§10 item 8).
        assert b.se_filters == max(1, int(b.input_filters * 0.25))
        assert b.expanded_filters == b.input_filters * expand
        previous_out = b.output_filters
    stages = [b.stage for b in blocks]
    assert stages == sorted(stages) and set(stages) == set(range(7))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_residual_rule(name):
    """Residual iff stride 1 and in == out; in the table models that excludes
    every first block of a stage and includes every later one."""
    for b in get_config(name).blocks():
        assert b.has_residual == (b.repeat > 0)
        assert b.has_residual == (b.strides == (1, 1) and b.input_filters == b.output_filters)


# --- rounding ------------------------------------------------------------------

@pytest.mark.parametrize("filters, width, expected", [
    (32, 1.0, 32),
    (32, 1.1, 32),     # 35.2 -> floor(39.2/8)*8 = 32, and 32 >= 0.9*35.2
    (16, 1.1, 16),     # 17.6 -> 16
    (40, 1.1, 48),     # 44 -> floor(48/8)*8 = 48
    (80, 1.1, 88),     # 88 exactly
    (1280, 1.1, 1408),
    (32, 1.2, 40),     # 38.4 -> floor(42.4/8)*8 = 40
    (32, 4.3, 136),    # 137.6 -> 136 (L2 stem)
    (1280, 4.3, 5504),
    (320, 4.3, 1376),  # 1376 exactly
    (16, 0.25, 8),     # 4 -> 0, clamped to the minimum depth 8
    (12, 1.0, 16),     # 12 -> floor(16/8)*8 = 16: ties round up
    (11, 1.0, 16),     # 11 -> 8 < 9.9 = 0.9*11, so 8 + 8 = 16
    (19, 1.0, 24),     # 19 -> 16 < 17.1, so 24
    (20, 1.0, 24),     # 20 -> floor(24/8)*8 = 24 directly
    (199, 0.1, 24),    # 19.9 -> 16 < 17.91, so 24
    (36, 1.0, 40),     # 36 -> 40 (ties round up)
    (35, 1.0, 32),     # 35 -> 32 >= 31.5: no correction
])
def test_round_filters(filters, width, expected):
    assert round_filters(filters, width) == expected


def test_round_filters_add_eight_rule_is_what_changes_the_result():
    # Without the correction these would round down by more than 10%.
    for filters in (11, 19):
        plain = max(8, math.floor((filters + 4) / 8) * 8)
        assert plain < 0.9 * filters
        assert round_filters(filters, 1.0) == plain + 8


@pytest.mark.parametrize("width", [None, 0, 0.0])
def test_round_filters_falsy_width_is_identity(width):
    assert round_filters(37, width) == 37


@pytest.mark.parametrize("repeats, depth, expected", [
    (1, 1.0, 1), (3, 1.1, 4), (2, 1.2, 3), (1, 3.1, 4), (4, 3.1, 13),
    (4, 5.3, 22), (1, 5.3, 6), (3, 1.8, 6), (2, 0.25, 1), (3, 0.5, 2),
    (5, None, 5), (5, 0, 5),
])
def test_round_repeats(repeats, depth, expected):
    assert round_repeats(repeats, depth) == expected


# --- block strings ---------------------------------------------------------------

def test_decode_block_string():
    assert decode_block_string("r1_k3_s11_e1_i32_o16_se0.25") == config_lib.StageArgs(
        repeats=1, kernel_size=3, strides=(1, 1), expand_ratio=1, input_filters=32,
        output_filters=16, se_ratio=0.25, id_skip=True)
    assert decode_block_string("r4_k5_s22_e6_i112_o192_se0.25") == config_lib.StageArgs(
        4, 5, (2, 2), 6, 112, 192, 0.25, True)
    # Asymmetric strides keep their order (height, width).
    assert decode_block_string("r1_k3_s12_e6_i8_o8").strides == (1, 2)


def test_decode_noskip_and_optional_fields():
    args = decode_block_string("r2_k5_s22_e6_i24_o40_se0.25_noskip")
    assert args.id_skip is False and args.repeats == 2 and args.output_filters == 40
    assert decode_block_string("r1_k3_s11_e6_i16_o16").se_ratio is None
    assert decode_block_string("r1_k3_s11_e6_i16_o16_se0.25_c0").se_ratio == 0.25


@pytest.mark.parametrize("bad", [
    "",
    "r1_k3_s1_e1_i32_o16_se0.25",      # one stride digit
    "r1_k3_s222_e1_i32_o16_se0.25",    # three stride digits
    "r1_k3_s11_e1_i32_se0.25",         # no output filters
    "k3_s11_e1_i32_o16_se0.25",        # no repeats
    "r1_k3_s11_e1_i32_o16_se0.25_c1",  # only conv type 0 exists
    "r1_k3_s11_e1_i32_o16_foo",        # token without a value
    "r1_kx_s11_e1_i32_o16",            # non-numeric value
    "r1__k3_s11_e1_i32_o16",           # empty token
    "r1_k3_s11_e1_i32_o16_9",          # token without a key
])
def test_decode_bad_block_strings_raise(bad):
    with pytest.raises(ValueError):
        decode_block_string(bad)


def test_the_seven_stage_strings_are_the_originals():
    assert config_lib.BLOCK_STRINGS == (
        "r1_k3_s11_e1_i32_o16_se0.25",
        "r2_k3_s22_e6_i16_o24_se0.25",
        "r2_k5_s22_e6_i24_o40_se0.25",
        "r3_k3_s22_e6_i40_o80_se0.25",
        "r3_k5_s11_e6_i80_o112_se0.25",
        "r4_k5_s22_e6_i112_o192_se0.25",
        "r1_k3_s11_e6_i192_o320_se0.25",
    )


def test_noskip_disables_every_residual():
    cfg = dataclasses.replace(
        get_config("efficientnet-b0"),
        block_strings=tuple(s + "_noskip" for s in config_lib.BLOCK_STRINGS))
    blocks = cfg.blocks()
    assert len(blocks) == 16
    assert not any(b.has_residual for b in blocks)
    assert not any(b.id_skip for b in blocks)


def test_no_se_ratio_means_no_squeeze_excitation():
    cfg = dataclasses.replace(
        get_config("efficientnet-b0"),
        block_strings=tuple(s.replace("_se0.25", "") for s in config_lib.BLOCK_STRINGS))
    assert all(b.se_filters == 0 for b in cfg.blocks())


# --- small-image variant -----------------------------------------------------------

def test_small_image_strides():
    normal = [s.strides for s in get_config("efficientnet-b0").stages()]
    small = [s.strides for s in get_config("efficientnet-b0", small_image=True).stages()]
    assert normal == [(1, 1), (2, 2), (2, 2), (2, 2), (1, 1), (2, 2), (1, 1)]
    # Stages 2 and 3 (1-based) keep the resolution; everything else unchanged.
    assert small == [(1, 1), (1, 1), (1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]


def test_small_image_changes_only_strides_and_resolution():
    normal = get_config("efficientnet-b0")
    small = get_config("efficientnet-b0", small_image=True)
    assert small.resolution == 32 and small.small_image
    assert _stages_from_blocks(small.blocks()) == SPEC_STAGES["efficientnet-b0"]
    strided = [b.index for b in small.blocks() if b.strides != (1, 1)]
    assert strided == [5, 11]  # first blocks of stages 4 and 6
    for a, b in zip(normal.blocks(), small.blocks()):
        assert dataclasses.replace(a, strides=(1, 1)) == dataclasses.replace(b, strides=(1, 1))
    # Explicit resolution still wins.
    assert get_config("efficientnet-b0", small_image=True, resolution=40).resolution == 40


# --- stochastic depth schedule ---------------------------------------------------------

def test_b0_drop_rates_are_rate_times_index_over_n():
    blocks = get_config("efficientnet-b0").blocks()
    expected = [0.2 * i / 16 for i in range(16)]
    assert [b.drop_rate for b in blocks] == pytest.approx(expected, abs=1e-12)
    assert blocks[0].drop_rate == 0.0
    assert blocks[-1].drop_rate == pytest.approx(0.1875)  # rate * (N-1)/N
    assert blocks[8].drop_rate == pytest.approx(0.1)


def test_drop_rates_follow_the_override_and_the_global_index():
    blocks = get_config("efficientnet-b3", stochastic_depth_rate=0.5).blocks()
    assert [b.drop_rate for b in blocks] == pytest.approx([0.5 * i / 26 for i in range(26)])
    assert all(b.drop_rate == 0 for b in get_config("efficientnet-b0",
                                                      stochastic_depth_rate=0.0).blocks())


# --- names, aliases and overrides ---------------------------------------------------------

@pytest.mark.parametrize("alias", ["efficientnet-l2-475", "efficientnet-l2_475"])
def test_l2_475_alias(alias):
    cfg = get_config(alias)
    assert cfg.name == "efficientnet-l2"
    assert cfg.resolution == 475
    assert (cfg.width, cfg.depth, cfg.dropout_rate) == (4.3, 5.3, 0.5)
    assert len(cfg.blocks()) == 88
    assert get_config(alias, resolution=512).resolution == 512
    assert alias in config_lib.model_names()


def test_model_names_cover_the_table():
    assert set(ALL_MODELS) <= set(config_lib.model_names())
    for name in config_lib.model_names():
        get_config(name)


def test_overrides():
    cfg = get_config("efficientnet-b0", width=0.5, depth=2.0, resolution=128,
                     dropout_rate=0.0, stochastic_depth_rate=0.1, num_classes=10)
    assert (cfg.width, cfg.depth, cfg.resolution, cfg.dropout_rate,
            cfg.stochastic_depth_rate, cfg.num_classes) == (0.5, 2.0, 128, 0.0, 0.1, 10)
    # width 0.5: 32 -> 16, 16 -> 8, 24 -> 16 (12 rounds up), 40 -> 24 (20 rounds up),
    # 80 -> 40, 112 -> 56, 192 -> 96, 320 -> 160, 1280 -> 640; depth 2 doubles repeats.
    assert _stages_from_blocks(cfg.blocks()) == [
        (16, 8, 2), (8, 16, 4), (16, 24, 4), (24, 40, 6), (40, 56, 6), (56, 96, 8), (96, 160, 2)]
    assert cfg.stem_filters == 16 and cfg.head_filters == 640
    assert [b.drop_rate for b in cfg.blocks()] == pytest.approx([0.1 * i / 32 for i in range(32)])


def test_normalization_setting_is_kept():
    assert get_config("efficientnet-b0").normalization == "imagenet"
    assert get_config("efficientnet-b0", normalization="svhn").normalization == "svhn"
    assert get_config("efficientnet-b0", normalization=None).normalization is None


def test_config_dict_round_trip():
    cfg = get_config("efficientnet-b2", num_classes=7, small_image=True, dropout_rate=0.1)
    d = cfg.to_dict()
    assert config_lib.EfficientNetConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="bogus"):
        config_lib.EfficientNetConfig.from_dict({**d, "bogus": 1})


# --- bad input -----------------------------------------------------------------------------------

def test_unknown_model_name_lists_known_names():
    with pytest.raises(ValueError) as info:
        get_config("efficientnet-b9")
    message = str(info.value)
    assert "efficientnet-b9" in message
    for name in ALL_MODELS + ["efficientnet-l2-475"]:
        assert name in message


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, "10", True, None, 10.0])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        get_config("efficientnet-b0", num_classes=num_classes)


@pytest.mark.parametrize("kwargs", [
    dict(width=0), dict(width=-1.0), dict(depth=0), dict(depth=-0.5),
    dict(dropout_rate=-0.1), dict(dropout_rate=1.0), dict(dropout_rate=1.5),
    dict(stochastic_depth_rate=-0.01), dict(stochastic_depth_rate=1.0),
    dict(resolution=0), dict(resolution=-32),
])
def test_out_of_range_overrides_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        get_config("efficientnet-b0", **kwargs)


def test_boundary_rates_are_accepted():
    cfg = get_config("efficientnet-b0", dropout_rate=0.0, stochastic_depth_rate=0.0)
    assert cfg.dropout_rate == 0.0 and cfg.stochastic_depth_rate == 0.0
    cfg = get_config("efficientnet-b0", dropout_rate=0.99, stochastic_depth_rate=0.99)
    assert cfg.dropout_rate == 0.99
