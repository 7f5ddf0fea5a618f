"""ExperimentConfig: flags, gin, precedence, task rules and the files written to model_dir
(spec §2.1 steps 1-6, §2.2)."""

import dataclasses
import json

import pytest
from absl import flags

from nst import config as config_lib


def parse(argv):
    """Defines every flag in a fresh FlagValues and parses `argv` (without argv[0])."""
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    flag_values(["nst-main"] + list(argv))
    return flag_values


def config_from(argv):
    flag_values = parse(argv)
    return config_lib.build_config(flag_values.gin_file, flag_values.gin_param,
                                   config_lib.explicit_flags(flag_values))


def write(path, text):
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------- flags


def test_every_field_is_a_flag_with_the_field_default():
    flag_values = parse([])
    for field in dataclasses.fields(config_lib.ExperimentConfig):
        assert field.name in flag_values, field.name
        assert flag_values[field.name].value == field.default, field.name
    assert flag_values.gin_file == [] and flag_values.gin_param == []
    # Defining twice (e.g. cli() after a test defined them) is harmless.
    config_lib.define_flags(flag_values)


def test_flag_types():
    flag_values = parse(["--nouse_cache", "--train_ratio=0.5", "--num_train_images=7",
                         "--augment_name=v1", "--dropout_rate=0.3"])
    assert flag_values.use_cache is False
    assert flag_values.train_ratio == 0.5
    assert flag_values.num_train_images == 7
    assert flag_values.augment_name == "v1"
    assert flag_values.dropout_rate == 0.3


def test_explicit_flags_are_only_those_given():
    flag_values = parse(["--train_steps=10", "--weight_decay=1e-5"])
    # weight_decay is given at its default value: still explicit.
    assert config_lib.explicit_flags(flag_values) == {"train_steps": 10, "weight_decay": 1e-5}
    assert config_lib.explicit_flags(parse([])) == {}


def test_unknown_flag_is_an_absl_error():
    with pytest.raises(flags.UnrecognizedFlagError, match="no_such_flag"):
        parse(["--no_such_flag=1"])


def test_malformed_flag_value_is_an_absl_error():
    with pytest.raises(flags.IllegalFlagValueError, match="train_steps"):
        parse(["--train_steps=many"])


# --------------------------------------------------------------------------- precedence


def test_precedence_defaults_gin_file_gin_param_explicit_flag(tmp_path):
    gin_file = write(tmp_path / "run.gin", "\n".join([
        "ExperimentConfig.train_batch_size = 128",
        "ExperimentConfig.train_steps = 500",
        "ExperimentConfig.base_learning_rate = 0.1",
        "ExperimentConfig.weight_decay = 0.5",
        "ExperimentConfig.augment_name = 'v1'",
    ]))
    config = config_from([
        f"--gin_file={gin_file}",
        "--gin_param=ExperimentConfig.train_steps = 700",
        "--gin_param=ExperimentConfig.base_learning_rate = 0.3",
        "--base_learning_rate=0.25",
        # Explicitly given at its default value: it still beats gin.
        "--weight_decay=1e-5",
    ])
    assert config.train_batch_size == 128       # gin file over the default
    assert config.augment_name == "v1"          # gin file over the default
    assert config.train_steps == 700            # gin param over gin file
    assert config.train_last_step_num == 700    # -1 -> train_steps (§2.1 step 6)
    assert config.base_learning_rate == 0.25    # explicit flag over gin param
    assert config.weight_decay == 1e-5          # explicit flag over gin file
    assert config.label_smoothing == 0.1        # untouched default
    assert config.mode == "train_and_eval"


def test_flag_left_at_default_does_not_override_gin(tmp_path):
    gin_file = write(tmp_path / "run.gin", "ExperimentConfig.train_batch_size = 64\n"
                                           "ExperimentConfig.use_cache = False\n")
    # Other flags are given, but not these two: their defaults (4096, True) must not win.
    config = config_from([f"--gin_file={gin_file}", "--train_steps=3"])
    assert config.train_batch_size == 64
    assert config.use_cache is False
    assert config.train_steps == 3


def test_later_gin_files_and_params_win(tmp_path):
    first = write(tmp_path / "a.gin", "ExperimentConfig.train_steps = 1\n"
                                      "ExperimentConfig.eval_batch_size = 16\n")
    second = write(tmp_path / "b.gin", "ExperimentConfig.train_steps = 2\n")
    config = config_from([f"--gin_file={first}", f"--gin_file={second}",
                          "--gin_param=ExperimentConfig.eval_batch_size = 32",
                          "--gin_param=ExperimentConfig.eval_batch_size = 48"])
    assert config.train_steps == 2
    assert config.eval_batch_size == 48


def test_gin_does_not_leak_between_builds():
    assert config_lib.build_config([], ["ExperimentConfig.train_steps = 5"]).train_steps == 5
    assert config_lib.build_config().train_steps == 109474


def test_gin_bindings_do_not_become_defaults_of_later_configs():
    config_lib.build_config([], ["ExperimentConfig.num_train_images = 8",
                                 "ExperimentConfig.base_learning_rate = 2.0"])
    # A config built directly afterwards (tests, tools) gets the plain defaults.
    config = config_lib.ExperimentConfig(task_name="digits")
    assert config.num_train_images is None
    assert config.base_learning_rate == 0.016


def test_unknown_gin_binding_is_an_error_naming_it():
    with pytest.raises(ValueError, match="no_such_setting"):
        config_lib.build_config([], ["ExperimentConfig.no_such_setting = 1"])
    with pytest.raises(ValueError, match="NoSuchConfigurable"):
        config_lib.build_config([], ["NoSuchConfigurable.x = 1"])


def test_unknown_gin_binding_in_a_file_is_an_error_naming_it(tmp_path):
    gin_file = write(tmp_path / "bad.gin", "ExperimentConfig.train_stepz = 5\n")
    with pytest.raises(ValueError, match="train_stepz"):
        config_from([f"--gin_file={gin_file}"])


def test_missing_gin_file_is_an_error_naming_it(tmp_path):
    missing = str(tmp_path / "missing.gin")
    with pytest.raises((IOError, OSError, ValueError), match="missing.gin"):
        config_lib.build_config([missing])


def test_unknown_override_is_an_error():
    with pytest.raises(ValueError, match="no_such_setting"):
        config_lib.build_config(overrides={"no_such_setting": 1})


# --------------------------------------------------------------------------- finalize


@pytest.mark.parametrize("task", ["svhn", "digits"])
def test_small_image_tasks_force_32px_small_model_10_classes(task):
    config = config_lib.build_config(overrides=dict(
        task_name=task, input_image_size=224, num_label_classes=1000, small_image_model=False))
    assert config.input_image_size == 32
    assert config.small_image_model is True
    assert config.num_label_classes == 10
    assert config_lib.normalization(config) == "svhn"


def test_svhn_fills_dataset_sizes_unless_given():
    config = config_lib.build_config(overrides=dict(task_name="svhn"))
    assert (config.num_train_images, config.num_eval_images, config.num_test_images) == (
        69257, 4000, 26032)
    config = config_lib.build_config(overrides=dict(task_name="svhn", num_train_images=100))
    assert config.num_train_images == 100


def test_imagenet_keeps_the_models_resolution_and_fills_its_sizes():
    config = config_lib.build_config()
    assert config.input_image_size is None and config.small_image_model is False
    assert config.num_label_classes == 1000
    assert (config.num_train_images, config.num_eval_images) == (1281167, 50000)
    assert config.num_test_images is None
    assert config_lib.normalization(config) == "imagenet"


def test_digits_counts_its_files():
    config = config_lib.build_config(overrides=dict(task_name="digits"))
    assert config.num_train_images is None  # counted from the files by the trainer


@pytest.mark.parametrize("steps,last,ratio,expected", [
    (1000, -1, 1.0, (1000, 1000)),
    (1000, -1, 0.5, (500, 500)),
    (1000, 300, 1.5, (1500, 450)),
    (1001, -1, 1 / 3, (333, 333)),    # truncated, not rounded
    (10, 7, 0.25, (2, 1)),
])
def test_train_ratio_scales_steps_and_last_step_num(steps, last, ratio, expected):
    config = config_lib.build_config(overrides=dict(
        train_steps=steps, train_last_step_num=last, train_ratio=ratio))
    assert (config.train_steps, config.train_last_step_num) == expected
    assert config.train_ratio == ratio


@pytest.mark.parametrize("overrides,match", [
    (dict(mode="predictt"), "mode"),
    (dict(mode="eval_and_train"), "mode"),
    (dict(augment_name="v2"), "augment_name"),
    (dict(unl_aug="autoaugment"), "unl_aug"),
    (dict(task_name="cifar10"), "task_name"),
    (dict(data_format="channels_first"), "data_format"),
    (dict(data_type="image"), "data_type"),
    (dict(teacher_model_name="efficientnet-b0"), "teacher_model_path"),
    (dict(train_batch_size=0), "train_batch_size"),
])
def test_invalid_values_are_errors_naming_the_flag(overrides, match):
    with pytest.raises(ValueError, match=match):
        config_lib.build_config(overrides=overrides)


def test_valid_augment_names():
    for name in (None, "", "v1"):
        assert config_lib.build_config(overrides=dict(augment_name=name)).augment_name == name


def test_invalid_value_from_gin_is_an_error_too():
    with pytest.raises(ValueError, match="mode"):
        config_lib.build_config([], ["ExperimentConfig.mode = 'bogus'"])


# --------------------------------------------------------------------------- model_dir files


def test_write_effective_config(tmp_path):
    config = config_lib.build_config(
        [], ["ExperimentConfig.train_ratio = 0.5", "ExperimentConfig.train_batch_size = 64"],
        dict(task_name="digits", train_steps=101, model_dir=str(tmp_path)))
    model_dir = tmp_path / "run"
    config_lib.write_effective_config(config, str(model_dir))

    stored = json.loads((model_dir / "FLAGS.json").read_text())
    assert set(stored) == {f.name for f in dataclasses.fields(config_lib.ExperimentConfig)}
    assert stored == dataclasses.asdict(config)
    # FLAGS.json holds the values in effect: after the task rules and train_ratio.
    assert stored["train_steps"] == 50 and stored["train_last_step_num"] == 50
    assert stored["num_label_classes"] == 10 and stored["input_image_size"] == 32
    assert stored["train_batch_size"] == 64

    # operative_config.gin binds every setting and replays to the same config,
    # although finalize() is not idempotent under train_ratio.
    gin_text = (model_dir / "operative_config.gin").read_text()
    assert "ExperimentConfig.train_batch_size = 64" in gin_text
    assert "ExperimentConfig.train_ratio = 0.5" in gin_text
    replayed = config_lib.build_config([str(model_dir / "operative_config.gin")])
    assert replayed == config


def test_operative_config_shows_the_winning_value_not_the_overridden_gin_one(tmp_path):
    config = config_lib.build_config([], ["ExperimentConfig.base_learning_rate = 0.5"],
                                     dict(base_learning_rate=0.25))
    config_lib.write_effective_config(config, str(tmp_path))
    gin_text = (tmp_path / "operative_config.gin").read_text()
    assert "ExperimentConfig.base_learning_rate = 0.25" in gin_text
    assert "= 0.5\n" not in gin_text.replace("train_ratio = 0.5", "")
    assert json.loads((tmp_path / "FLAGS.json").read_text())["base_learning_rate"] == 0.25


def test_to_json_round_trips():
    config = config_lib.build_config(overrides=dict(task_name="digits"))
    assert json.loads(config_lib.to_json(config)) == dataclasses.asdict(config)
