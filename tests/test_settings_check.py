"""Every setting of ExperimentConfig, PipelineConfig and FilterConfig is checked for type
(from its annotation) and range when the configuration is finalised, whatever set it:
an absl flag, a gin file or a --gin_param (nst.settings_check)."""

import dataclasses
from typing import List, Optional, Tuple

import numpy as np
import pytest
from absl import flags

from nst import config as config_lib
from nst import pipeline_config as pc
from nst import settings_check
from nst.pseudo import filter_config
from nst.settings_check import Range, SettingError


def write(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def from_flags(argv):
    """build_config as nst-main calls it, from `argv` (flags without argv[0])."""
    values = flags.FlagValues()
    config_lib.define_flags(values)
    values(["nst-main"] + list(argv))
    return config_lib.build_config(values.gin_file, values.gin_param,
                                   config_lib.explicit_flags(values))


def plan(tmp_path, *params, **overrides):
    return pc.plan([pc.DEFAULT_GIN_FILE], list(params),
                   dict({"run_dir": str(tmp_path / "run")}, **overrides), check_data=False)


# --------------------------------------------------------------------------- the checker


@dataclasses.dataclass
class Example:
    flag: bool = False
    count: int = 1
    rate: float = 0.5
    name: str = "x"
    size: Optional[int] = None
    pair: Tuple[int, str] = (1, "a")
    sizes: Tuple[int, ...] = ()
    names: List[str] = dataclasses.field(default_factory=list)


@pytest.mark.parametrize("field,value", [
    ("flag", True), ("count", 3), ("count", np.int64(3)), ("rate", 2), ("rate", 0.25),
    ("rate", np.float32(0.5)), ("name", ""), ("size", None), ("size", 7),
    ("pair", (2, "b")), ("pair", [2, "b"]), ("sizes", (1, 2, 3)), ("names", ["a", "b"])])
def test_values_of_the_annotated_type_pass(field, value):
    settings_check.check_values(Example, {field: value})


@pytest.mark.parametrize("field,value,message", [
    ("flag", 1, "Example.flag = 1 must be True or False, not an int."),
    ("count", True, "Example.count = True must be an integer, not a bool."),
    ("count", 2.0, "Example.count = 2.0 must be an integer, not a float."),
    ("rate", False, "Example.rate = False must be a number, not a bool."),
    ("rate", "0.5", "Example.rate = '0.5' must be a number, not a str."),
    ("name", None, "Example.name = None must be a string, not a NoneType."),
    ("size", "7", "Example.size = '7' must be an integer or None, not a str."),
    ("pair", (1, 2), "Example.pair = (1, 2) must be a tuple whose items are each a string"),
    ("pair", (1,), "Example.pair = (1,) must be a tuple of 2 items"),
    ("sizes", 3, "Example.sizes = 3 must be a tuple, not an int."),
    ("names", ["a", 1], "Example.names = ['a', 1] must be a list whose items are each a "
                        "string")])
def test_a_value_of_another_type_is_refused_naming_setting_and_value(field, value, message):
    with pytest.raises(SettingError) as error:
        settings_check.check_values(Example, {field: value})
    assert str(error.value).startswith(message)


def test_ranges_and_their_descriptions():
    assert str(Range(1)) == ">= 1" and 1 in Range(1) and 0 not in Range(1)
    assert str(Range(0, 1)) == "in [0, 1]" and 1 in Range(0, 1)
    assert str(Range(0, 1, high_open=True)) == "in [0, 1)" and 1 not in Range(0, 1,
                                                                              high_open=True)
    assert str(Range(0, low_open=True)) == "> 0" and 0 not in Range(0, low_open=True)
    assert str(Range(high=1)) == "<= 1" and -5 in Range(high=1)
    temperature = Range(0, low_open=True, also=(-1,))
    assert str(temperature) == "-1 or > 0"
    assert -1 in temperature and 0.5 in temperature and 0 not in temperature
    assert float("nan") not in Range(0)
    assert Range(0, 1).flag_bounds() == {"lower_bound": 0, "upper_bound": 1}
    with pytest.raises(ValueError):
        temperature.flag_bounds()


def test_the_message_names_where_and_the_source():
    with pytest.raises(SettingError, match=r"^student 2: Example.count = 0 \(set in gin\) "
                                           r"must be >= 1\.$"):
        settings_check.check_values(Example, {"count": 0}, {"count": Range(1)},
                                    sources={"count": "set in gin"}, where="student 2: ")


@pytest.mark.parametrize("cls,ranges", [
    (config_lib.ExperimentConfig, config_lib.RANGES),
    (pc.PipelineConfig, pc.RANGES),
    (filter_config.FilterConfig, filter_config.RANGES)])
def test_every_range_names_a_number_field_and_the_defaults_pass(cls, ranges):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(ranges) <= set(fields)
    defaults = {name: f.default for name, f in fields.items()
                if f.default is not dataclasses.MISSING}
    settings_check.check_values(cls, defaults, ranges)


# --------------------------------------------------------------------------- ExperimentConfig


def test_a_wrong_type_from_a_gin_file_names_setting_value_and_gin(tmp_path):
    """Before the check this was a TypeError ('>' between str and int) in the trainer."""
    gin_file = write(tmp_path / "run.gin", "ExperimentConfig.unlabel_ratio = 'two'")
    with pytest.raises(SettingError, match=r"^ExperimentConfig.unlabel_ratio = 'two' \(set "
                                           r"in gin\) must be a number, not a str\.$"):
        config_lib.build_config([gin_file])


def test_a_wrong_type_from_a_gin_param_names_setting_value_and_gin():
    with pytest.raises(SettingError, match=r"ExperimentConfig.use_cache = 1 \(set in gin\) "
                                           r"must be True or False, not an int"):
        config_lib.build_config([], ["ExperimentConfig.use_cache = 1"])
    with pytest.raises(SettingError, match=r"ExperimentConfig.num_eval_images = '100' \(set "
                                           r"in gin\) must be an integer or None"):
        config_lib.build_config([], ["ExperimentConfig.num_eval_images = '100'"])


def test_a_wrong_type_from_a_flag_is_absls_error_naming_flag_and_value():
    with pytest.raises(flags.IllegalFlagValueError, match=r"--unlabel_ratio=two"):
        from_flags(["--unlabel_ratio=two"])


@pytest.mark.parametrize("argv,message", [
    (["--train_batch_size=0"], r"ExperimentConfig.train_batch_size = 0 \(set by "
                               r"--train_batch_size\) must be >= 1\."),
    (["--label_smoothing=1.5"], r"ExperimentConfig.label_smoothing = 1.5 \(set by "
                                r"--label_smoothing\) must be in \[0, 1\]\."),
    (["--gin_param=ExperimentConfig.teacher_softmax_temp = 0.0"],
     r"ExperimentConfig.teacher_softmax_temp = 0.0 \(set in gin\) must be -1 or > 0\."),
    (["--gin_param=ExperimentConfig.dropout_rate = 1.0"],
     r"ExperimentConfig.dropout_rate = 1.0 \(set in gin\) must be in \[0, 1\)\."),
    (["--label_data_sample_prob=0"], r"label_data_sample_prob = 0.0 \(set by "
                                     r"--label_data_sample_prob\) must be in \(0, 1\]\."),
])
def test_an_out_of_range_value_names_the_allowed_range(argv, message):
    with pytest.raises(SettingError, match=message):
        from_flags(argv)


def test_an_int_is_a_float_setting_and_valid_values_are_unchanged():
    config = config_lib.build_config([], ["ExperimentConfig.unlabel_ratio = 2",
                                          "ExperimentConfig.num_eval_images = None"])
    assert config.unlabel_ratio == 2 and config.num_eval_images == 50000
    assert config == config_lib.build_config([], ["ExperimentConfig.unlabel_ratio = 2"])


def test_a_config_built_in_python_is_checked_too():
    with pytest.raises(SettingError, match=r"^ExperimentConfig.train_steps = '10' must be"):
        config_lib.finalize(config_lib.ExperimentConfig(train_steps="10"))


# --------------------------------------------------------------------------- PipelineConfig


def test_pipeline_settings_from_gin_files_params_and_flags(tmp_path):
    gin_file = write(tmp_path / "extra.gin", "PipelineConfig.num_iterations = 'two'")
    with pytest.raises(SettingError, match=r"PipelineConfig.num_iterations = 'two' \(set in "
                                           r"gin\) must be an integer, not a str"):
        pc.plan([pc.DEFAULT_GIN_FILE, gin_file], [], {"run_dir": str(tmp_path / "run")},
                check_data=False)
    with pytest.raises(SettingError, match=r"PipelineConfig.min_threshold = 1.5 \(set in gin"
                                           r"\) must be in \[0, 1\]\."):
        plan(tmp_path, "PipelineConfig.min_threshold = 1.5")
    with pytest.raises(SettingError, match=r"PipelineConfig.num_iterations = 0 \(set in gin"
                                           r"\) must be >= 1\."):
        plan(tmp_path, "PipelineConfig.num_iterations = 0")
    with pytest.raises(SettingError, match=r"PipelineConfig.seed = -1 \(set by --seed\) must "
                                           r"be >= 0\."):
        plan(tmp_path, seed=-1)
    with pytest.raises(SettingError, match=r"PipelineConfig.online_teacher = 'yes' \(set by "
                                           r"--online_teacher\) must be True or False"):
        plan(tmp_path, online_teacher="yes")


def test_stage_settings_name_their_stage(tmp_path):
    with pytest.raises(SettingError, match=r"^student 2: ExperimentConfig.unlabel_ratio = "
                                           r"'two' \(set in gin\) must be a number"):
        plan(tmp_path, "student/iteration_2/ExperimentConfig.unlabel_ratio = 'two'")
    with pytest.raises(SettingError, match=r"^teacher: ExperimentConfig.train_steps = 0 \(set "
                                           r"in gin\) must be >= 1\."):
        plan(tmp_path, "teacher/ExperimentConfig.train_steps = 0")
    with pytest.raises(SettingError, match=r"^student 1: ExperimentConfig.label_smoothing"):
        plan(tmp_path, "student/ExperimentConfig.label_smoothing = -0.1")
    # Fine-tuning settings count only when there is a fine-tuning stage.
    plan(tmp_path, "finetune/ExperimentConfig.train_steps = 0")
    with pytest.raises(SettingError, match=r"^finetune: ExperimentConfig.train_steps = 0"):
        plan(tmp_path, "finetune/ExperimentConfig.train_steps = 0", "PipelineConfig.finetune "
             "= True")


# --------------------------------------------------------------------------- FilterConfig


def test_filter_settings_are_checked_by_the_config():
    with pytest.raises(SettingError, match=r"^FilterConfig.num_shards = '3' must be an "
                                           r"integer, not a str\.$"):
        filter_config.FilterConfig(input_dir="i", output_dir="o", num_shards="3")
    with pytest.raises(SettingError, match=r"^FilterConfig.num_image = 0 must be >= 1\.$"):
        filter_config.FilterConfig(input_dir="i", output_dir="o", num_image=0)
    with pytest.raises(SettingError, match=r"^FilterConfig.upsample = 1 must be True or "
                                           r"False, not an int\.$"):
        filter_config.FilterConfig(input_dir="i", output_dir="o", upsample=1)


@pytest.mark.parametrize("flag,message", [
    ("--num_shards=three", r"--num_shards=three: invalid literal"),
    ("--num_shards=0", r"--num_shards=0: 0 is not a positive integer"),
    ("--min_threshold=1.5", r"--min_threshold=1.5: 1.5 is not a number in the range \[0, 1\]"),
    ("--upsample=2", r"--upsample=2: 2 is not an integer in the range \[0, 1\]"),
    ("--seed=-1", r"--seed=-1"),
])
def test_filter_flags_carry_the_same_ranges(flag, message):
    values = flags.FlagValues()
    filter_config.define_flags(values)
    with pytest.raises(flags.IllegalFlagValueError, match=message):
        values(["nst-filter-unlabel", "--output_dir=o", flag])
