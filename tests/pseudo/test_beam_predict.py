"""The pseudo-labelling stage as one Beam job (`nst.pseudo.beam_predict`) equals local
`--mode=predict` + the four filter steps: same pseudo-labelled records, same filtered
records (as multisets) and the same statistics JSON, with one and with two workers."""

import collections
import dataclasses
import os
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("apache_beam")

from absl import flags  # noqa: E402

from nst import config as config_lib  # noqa: E402
from nst import main  # noqa: E402
from nst.data import schema, writers  # noqa: E402
from nst.pseudo import beam_predict  # noqa: E402
from nst.pseudo import filter as filter_lib  # noqa: E402
from nst.testing import file_tree  # noqa: E402

K = 10
NUM_SHARDS = 3
SIZES = [13, 0, 9]  # batch 8: partial batches, and a shard of no record
ONE = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]
TWO = ["--runner=DirectRunner", "--direct_num_workers=2",
       "--direct_running_mode=multi_processing"]


def _jpeg(rng):
    return tf.io.encode_jpeg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).numpy()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Raw unlabeled shards; every third record stores no id, every other a true label."""
    path = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    for shard, n in enumerate(SIZES):
        writers.write_records(str(path / writers.shard_name("extra", shard, NUM_SHARDS)), [
            schema.encode_unlabeled(_jpeg(rng), image_id=None if i % 3 == 0 else f"i{shard}-{i}",
                                    true_label=i % K if i % 2 == 0 else None)
            for i in range(n)])
    return str(path)


def _configs(data_dir, teacher_dir, root, **overrides):
    settings = dict(task_name="digits", mode="predict", label_data_dir=data_dir,
                    predict_ckpt_path=teacher_dir, output_dir=os.path.join(root, "pred"),
                    info_dir=os.path.join(root, "pred", "info"), num_shards=NUM_SHARDS,
                    shard_id=f"0-{NUM_SHARDS - 1}", file_prefix="extra",
                    predict_batch_size=8, seed=3)
    settings.update(overrides)
    config = config_lib.finalize(config_lib.ExperimentConfig(**settings))
    f = filter_lib.FilterConfig(input_dir=config.output_dir,
                                output_dir=os.path.join(root, "filtered"),
                                file_prefix="extra", num_shards=NUM_SHARDS,
                                num_label_classes=K, num_image=3, min_threshold=0.05,
                                seed=3, shuffle_buffer=4)
    return config, f


def _records(path):
    # Canonical bytes: the map order of an Example's features may differ by process.
    return [tf.train.Example.FromString(r.numpy()).SerializeToString(deterministic=True)
            for r in tf.data.TFRecordDataset(path)]


@pytest.fixture(scope="module")
def local(data_dir, teacher_dir, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("local"))
    config, f = _configs(data_dir, teacher_dir, root)
    main.run(config)
    final = filter_lib.run_all(f)
    return root, final


@pytest.mark.parametrize("workers", [
    pytest.param(ONE, id="1-worker"),
    # Two worker processes, each importing TensorFlow and loading the teacher.
    pytest.param(TWO, id="2-workers", marks=pytest.mark.slow)])
def test_beam_job_equals_local_predict_and_filter(data_dir, teacher_dir, local, tmp_path,
                                                  workers):
    local_root, local_final = local
    config, f = _configs(data_dir, teacher_dir, str(tmp_path))
    assert beam_predict.run_pseudo_label_beam(config, f, workers) == local_final
    want, got = file_tree(local_root), file_tree(str(tmp_path))
    assert sorted(got) == sorted(want)
    records = [n for n in want if "extra-" in n or n.startswith(os.path.join("filtered", "data"))]
    assert len(records) == NUM_SHARDS + 2  # no data file for the empty shard
    for name in records:
        a, b = _records(os.path.join(local_root, name)), _records(str(tmp_path / name))
        assert collections.Counter(a) == collections.Counter(b), name
        if "extra-" in name:
            assert a == b, name  # pseudo-labelled records: file order too
    for name in set(want) - set(records):  # statistics, thresholds, info files
        assert got[name] == want[name], name
    assert local_final["total_cnt"] > 0
    if workers is ONE:  # a finished job's outputs stay; a rerun publishes the same
        mtime = os.path.getmtime(os.path.join(config.output_dir, "extra-00000-of-00003"))
        os.remove(f.stats_path(2, 0))
        os.remove(os.path.join(config.output_dir, "extra-00002-of-00003"))
        assert beam_predict.run_pseudo_label_beam(config, f, ONE) == local_final
        assert file_tree(str(tmp_path)) == got
        assert os.path.getmtime(os.path.join(config.output_dir,
                                             "extra-00000-of-00003")) == mtime


def test_the_teacher_sees_the_batches_of_local_predict(data_dir, teacher_dir, tmp_path,
                                                       predictor_calls):
    """Each model call gets the same images as in `--mode=predict`: batches of one
    shard cut every predict_batch_size from its first record (on some CPUs other cuts
    change the last bits of the probabilities)."""
    config, f = _configs(data_dir, teacher_dir, str(tmp_path / "local"))
    main.run(config)
    local = [c.tobytes() for c in predictor_calls]
    assert [len(c) for c in predictor_calls] == [8, 5, 8, 1]  # SIZES = 13, 0, 9
    predictor_calls.clear()
    config, f = _configs(data_dir, teacher_dir, str(tmp_path / "beam"))
    beam_predict.run_pseudo_label_beam(config, f, ONE)
    assert sorted(c.tobytes() for c in predictor_calls) == sorted(local)


def test_bad_input_is_named_before_any_work(data_dir, teacher_dir, tmp_path):
    config, f = _configs(data_dir, teacher_dir, str(tmp_path))
    cases = [
        (dict(predict_ckpt_path=str(tmp_path / "none")), FileNotFoundError,
         "No checkpoint at --predict_ckpt_path"),
        (dict(num_label_classes=5), ValueError, "predicts 10 classes but --num_label_classes is 5"),
        (dict(file_prefix="train"), FileNotFoundError,
         "Input shard .*train-00000-of-00003 does not exist"),
        (dict(total_replicas=2), ValueError, "--total_replicas is not supported")]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            beam_predict.run_pseudo_label_beam(dataclasses.replace(config, **change), f, ONE)
    info = tmp_path / "pred" / "info"
    info.mkdir(parents=True)
    (info / writers.info_name(2, NUM_SHARDS, 0)).write_text('{"image_num": 4}')
    with pytest.raises(ValueError, match=r"extra-00002-of-00003 holds 9 records but the "
                                         r"info file .*info-00002-of-00003-00000.txt says 4"):
        beam_predict.run_pseudo_label_beam(config, f, ONE)
    assert not [n for n in os.listdir(tmp_path / "pred") if n.startswith("extra")]
    assert not (tmp_path / "filtered").exists()


def test_command_line_shares_flags_and_refuses_unknown_ones(tmp_path):
    values = flags.FlagValues()
    beam_predict.define_flags(values)
    rest = beam_predict.beam_lib.split_argv(
        ["prog", "--task_name=digits", "--num_shards=3", "--num_image=9", "--seed=4",
         f"--output_dir={tmp_path / 'p'}", f"--filter_output_dir={tmp_path / 'f'}",
         "--label_data_dir=/x", "--predict_ckpt_path=/t", "--runner=DirectRunner"], values)
    assert rest == ["--runner=DirectRunner"]
    config, f = beam_predict.configs_from_flags(values)
    assert (config.mode, config.shard_id, config.num_shards) == ("predict", "0-2", 3)
    assert (f.input_dir, f.output_dir) == (str(tmp_path / "p"), str(tmp_path / "f"))
    assert (f.num_shards, f.num_image, f.seed, f.num_label_classes) == (3, 9, 4, 10)
    with pytest.raises(flags.Error, match=r"--num_imag=3 \(did you mean --num_image\?\)"):
        beam_predict.beam_lib.split_argv(["prog", "--num_imag=3"], values)


# --------------------------------------------------------------------------- in the loop


def test_plan_with_the_beam_runner_has_one_pseudo_label_stage(tmp_path):
    from nst import pipeline
    from nst import pipeline_config as pc
    run = str(tmp_path / "run")
    _, stages = pc.plan(["digits/noisy_student.gin"],
                        ["PipelineConfig.pseudo_label_runner = 'beam'",
                         "PipelineConfig.pseudo_label_beam_args = '--direct_num_workers=1'"],
                        {"run_dir": run})
    assert [s.name for s in stages] == ["data", "teacher", "pseudo-label-1", "student-1",
                                        "pseudo-label-2", "student-2"]
    s = {st.name: st for st in stages}
    job = s["pseudo-label-1"]
    assert job.settings.output_dir == os.path.join(run, "iteration_1", "predictions")
    assert job.filter_config.input_dir == job.settings.output_dir
    # The student finds the filtered data where it does with the local stages.
    assert s["student-1"].settings.unlabel_data_dir == os.path.join(
        job.filter_config.output_dir, "data") == os.path.join(job.directory, "data")
    pipeline.write_stage_configs(stages, run)
    [command] = pipeline.stage_commands(job, run)
    values = flags.FlagValues()
    beam_predict.define_flags(values)
    words = command.split()
    assert words[0] == "nst-pseudo-label-beam" and words[-1] == "--direct_num_workers=1"
    assert beam_predict.beam_lib.split_argv(words, values) == ["--direct_num_workers=1"]
    config, f = beam_predict.configs_from_flags(values)  # the command means this stage
    assert f == job.filter_config
    assert config == config_lib.finalize(job.settings)
    with pytest.raises(ValueError, match=r"pseudo_label_runner = 'spark' \(set in gin\) "
                                         r"must be one of 'local', 'beam'"):
        pc.plan(["digits/noisy_student.gin"],
                ["PipelineConfig.pseudo_label_runner = 'spark'"], {"run_dir": run})


def test_pipeline_stage_runs_the_job_and_a_finished_one_is_skipped(
        data_dir, teacher_dir, local, tmp_path):
    from nst import pipeline
    from nst import pipeline_config as pc
    local_root, local_final = local
    config, f = _configs(data_dir, teacher_dir, str(tmp_path))
    stage = pc.Stage("pseudo-label-1", "pseudo_label", 1, f.output_dir,
                     settings=dataclasses.replace(config, mode="predict"), filter_config=f,
                     beam_args=" ".join(ONE))
    pipeline.write_stage_configs([stage], str(tmp_path))
    summary = pipeline.run_stage(stage, str(tmp_path))
    assert stage.is_done()
    assert summary["pseudo_labels"]["total_after"] == local_final["total_cnt"]
    got = file_tree(f.output_dir)
    want = file_tree(os.path.join(local_root, "filtered"))
    assert sorted(got) == sorted(list(want) + ["stage_done.json"])
    assert got[os.path.join("stats", "final_stats.json")] == \
        want[os.path.join("stats", "final_stats.json")]
    # A rerun of the loop skips the finished job: nothing is rewritten.
    before = {n: os.path.getmtime(os.path.join(f.output_dir, n)) for n in got}
    with mock.patch.object(beam_predict, "run_pseudo_label_beam",
                           side_effect=AssertionError("reran a finished job")):
        pipeline.run(pc.PipelineConfig(run_dir=str(tmp_path)), [stage])
    assert {n: os.path.getmtime(os.path.join(f.output_dir, n)) for n in got} == before


# The runner options of the nst-pseudo-label-beam command lines in docs/pseudo_labels.md.
DOCUMENTED_OPTIONS = [
    "--runner=DataflowRunner", "--project=PROJECT", "--region=us-central1",
    "--temp_location=gs://BUCKET/tmp", "--experiments=use_runner_v2",
    "--sdk_container_image=REGISTRY/nst-beam-gpu:latest", "--machine_type=g2-standard-8",
    "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;"
    "install-nvidia-driver", "--max_num_workers=32", "--runner=FlinkRunner",
    "--flink_master=http://flink-host:8081", "--parallelism=16", "--environment_type=DOCKER",
    "--runner=SparkRunner", "--spark_master_url=spark://spark-host:7077"]


def test_documented_runner_options_are_beam_options():
    assert beam_predict.beam_lib.unknown_options(DOCUMENTED_OPTIONS) == []
