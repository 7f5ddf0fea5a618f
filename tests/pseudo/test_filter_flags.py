"""The filter's flags are generated from FilterConfig, and the pipeline's filter commands
are generated from its FilterConfig: both round-trip through the binaries' parsers."""

import dataclasses
import shlex

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from nst import filter_unlabel, pipeline, report
from nst.data import schema, writers
from nst import pipeline_config as pc
from nst.pseudo import filter as filter_lib
from nst.pseudo import filter_config
from nst.testing import file_tree

BINARY_ONLY = {"shard_id", "task", "only_get_stats"}  # flags that are no FilterConfig field


def _fields():
    return {f.name: f for f in dataclasses.fields(filter_config.FilterConfig)}


def test_generated_flags_are_the_fields_with_their_defaults():
    values = flags.FlagValues()
    filter_config.define_flags(values)
    fields = _fields()
    assert list(values) == list(fields)  # one flag per field, in field order
    for name, field in fields.items():
        default = "" if field.default is dataclasses.MISSING else field.default
        flag_default = values[name].default
        if field.type is bool:
            assert flag_default in (0, 1, False, True)
            flag_default = bool(flag_default)
        assert (name, flag_default) == (name, default)
        assert type(flag_default) is type(default), name
        assert values[name].help == filter_config.HELP[name]
    assert set(filter_config.HELP) == set(fields)


def test_binary_flags_keep_the_original_spellings():
    values = flags.FlagValues()
    filter_unlabel.define_flags(values)
    assert set(values) == set(_fields()) | BINARY_ONLY
    kinds = {name: values[name].flag_type() for name in values}
    # The original's 0/1 integer flags stay integers, use_all a boolean.
    assert kinds["upsample"] == kinds["use_top"] == kinds["seed"] == "int"
    assert kinds["use_all"] == "bool" and kinds["min_threshold"] == "float"
    assert (values["num_shards"].default, values["only_use_num_shards"].default,
            values["num_image"].default, values["max_prob"].default,
            values["shard_id"].default, values["task"].default) == (128, -1, 1300, 2.0,
                                                                  "0", 0)
    values(["prog", "--output_dir=o", "--upsample=0", "--use_top=0", "--use_all"])
    config = filter_unlabel.config_from_flags(values)
    assert (config.upsample, config.use_top, config.use_all) == (False, False, True)
    with pytest.raises(flags.IllegalFlagValueError):
        values(["prog", "--seed=-1"])


def _parse(command, define):
    argv = shlex.split(command)
    values = flags.FlagValues()
    define(values)
    values(argv)
    return argv[0], values


@pytest.mark.parametrize("config", [
    filter_config.FilterConfig(input_dir="/in dir", output_dir="/out", num_shards=3),
    filter_config.FilterConfig(
        input_dir="/in", output_dir="/out", prediction_dir="/pred", info_dir="/info",
        prelim_stats_dir="/prelim", file_prefix="extra", num_shards=4, total_replicas=2,
        only_use_num_shards=2, num_label_classes=10, num_image=77, min_threshold=0.37,
        max_prob=0.95, upsample=False, use_top=False, use_all=True, seed=3,
        shuffle_buffer=1)])
def test_stage_commands_parse_back_to_the_stage_config(tmp_path, config):
    stage = pc.Stage("filter-1", "filter", 1, config.output_dir, filter_config=config)
    commands = pipeline.stage_commands(stage, str(tmp_path))
    assert len(commands) == 2 * config.num_shards + 2
    steps = []
    for command in commands:
        program, values = _parse(command, filter_unlabel.define_flags)
        assert program == "nst-filter-unlabel"
        assert filter_unlabel.config_from_flags(values) == config
        steps.append((values.only_get_stats, values.shard_id if values["shard_id"].present
                      else None))
    shards = [str(s) for s in range(config.num_shards)]
    assert steps == ([(1, s) for s in shards] + [(2, None)] + [(0, s) for s in shards]
                     + [(3, None)])
    assert config.to_flags() == shlex.split(commands[0])[1:-2]


def test_stage_commands_of_a_planned_filter_stage_round_trip(tmp_path):
    _, stages = pc.plan(["digits/noisy_student.gin"], [], {"run_dir": str(tmp_path / "run")})
    stage = next(s for s in stages if s.kind == "filter")
    for command in pipeline.stage_commands(stage, str(tmp_path / "run")):
        _, values = _parse(command, filter_unlabel.define_flags)
        assert filter_unlabel.config_from_flags(values) == stage.filter_config


def test_report_reads_the_paths_the_filter_writes():
    config = filter_config.FilterConfig(input_dir="i", output_dir="/out",
                                        prelim_stats_dir="/prelim")
    paths = filter_config.output_paths(config.output_dir, config.prelim_stats_dir)
    assert paths == {name: config.path(name) for name in filter_config.OUTPUT_FILES}
    assert filter_config.stats_root("/out") == \
        filter_config.FilterConfig(input_dir="i", output_dir="/out").stats_root


def test_the_filter_module_re_exports_the_settings():
    """`filter_lib.FilterConfig`, `filter_lib.define_flags`, ...: the very objects of
    `filter_config`, so that code written against the one-module filter keeps working."""
    for name in ("FilterConfig", "HELP", "INT_BOOL_FLAGS", "OUTPUT_FILES", "config_from_flags",
                 "define_flags", "flag_definitions", "output_path", "output_paths",
                 "stats_root"):
        assert getattr(filter_lib, name) is getattr(filter_config, name), name


def test_beam_binary_has_the_same_generated_flags(tmp_path):
    beam_lib = pytest.importorskip("nst.pseudo.beam")
    values = flags.FlagValues()
    beam_lib.define_flags(values)
    assert set(values) == set(_fields()) | BINARY_ONLY | {"beam_args"}
    config = filter_config.FilterConfig(input_dir="/in", output_dir="/out", num_shards=2,
                                        upsample=False, use_all=True, min_threshold=0.3)
    stage = pc.Stage("filter-1", "filter", 1, config.output_dir, filter_config=config)
    argv = shlex.split(pipeline.stage_commands(stage, str(tmp_path))[-1])
    assert beam_lib.split_argv(argv, values) == []
    assert filter_config.config_from_flags(values) == config


# --------------------------------------------------------------------------- run_all


K = 3
SPEC = [(0, 0.955, 40), (0, 0.855, 40), (0, 0.505, 20), (1, 0.705, 25), (1, 0.29, 5)]


def _write_inputs(directory, num_shards):
    """Pseudo-labelled records of SPEC (label, confidence, count) in num_shards files."""
    records = []
    for label, conf, count in SPEC:
        for _ in range(count):
            i = len(records)
            p = np.full(K, conf / 10, np.float32)
            p[label] = conf
            image = tf.io.encode_jpeg(np.full((2, 2, 3), i % 256, np.uint8)).numpy()
            records.append(schema.encode_pseudo_labeled(image, p, image_id=f"img-{i:04d}",
                                                        true_label=i % K))
    writers.write_shards(records, str(directory), "train", num_shards)


def _config(tmp_path, name, **kw):
    return filter_config.FilterConfig(input_dir=str(tmp_path / "in"),
                                      output_dir=str(tmp_path / name), num_label_classes=K,
                                      **kw)


def _steps_one_by_one(config):
    """The four steps as separate per-shard calls (the pipeline's former loop)."""
    for task in range(config.total_replicas):
        for shard in range(config.num_shards):
            filter_lib.write_shard_histogram(config, shard, task)
    filter_lib.reduce_histograms(config)
    for task in range(config.total_replicas):
        for shard in range(config.num_shards):
            filter_lib.select_shard(config, shard, task)
    return filter_lib.finalize_stats(config)


def test_run_all_and_the_pipeline_stage_write_the_step_by_step_files(tmp_path):
    _write_inputs(tmp_path / "in", 3)
    settings = dict(num_shards=3, num_image=60, min_threshold=0.3)
    reference = _config(tmp_path, "reference", **settings)
    final = _steps_one_by_one(reference)
    config = _config(tmp_path, "all", **settings)
    filter_lib.write_shard_histogram(config, 1, 0)  # a shard done earlier is kept
    assert filter_lib.run_all(config) == final
    assert file_tree(config.output_dir) == file_tree(reference.output_dir)
    assert filter_lib.run_all(config) == final  # everything done: nothing redone

    stage_config = _config(tmp_path, "stage", **settings)
    stage = pc.Stage("filter-1", "filter", 1, stage_config.output_dir,
                     filter_config=stage_config)
    summary = pipeline._run_filter(stage)["pseudo_labels"]
    assert file_tree(stage_config.output_dir) == file_tree(reference.output_dir)
    by_dir = report.pseudo_label_summary(reference.output_dir)
    assert {k: v for k, v in summary.items() if k != "accuracy"} == dict(
        by_dir, filter_output_dir=stage_config.output_dir,
        prelim_stats_dir=stage_config.stats_root)
    assert set(summary["accuracy"]) == {"before", "after"}
    assert report.pseudo_label_summary(stage_config) == report.pseudo_label_summary(
        stage_config.output_dir)
    with pytest.raises(ValueError, match="prelim_stats_dir"):
        report.pseudo_label_summary(stage_config, "/elsewhere")
