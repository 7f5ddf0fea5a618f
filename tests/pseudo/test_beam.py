"""The filter stage on Apache Beam (`nst.pseudo.beam`, DirectRunner in-process) writes the
same files as the local sharded jobs of `nst.pseudo.filter`, and names a bad input file."""

import collections
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("apache_beam")

from absl import flags  # noqa: E402

from nst import cli_errors  # noqa: E402
from nst.data import schema, writers  # noqa: E402
from nst.pseudo import beam as beam_lib  # noqa: E402
from nst.pseudo import filter as filter_lib  # noqa: E402
from nst.testing import file_tree

K = 5
# In-process, one worker: fast and deterministic enough for a unit test (the outputs do
# not depend on the worker count anyway).
DIRECT = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]

# (label, confidence, count), 60 images. With num_image=15 and min_threshold=0.3:
#   class 0  30 admitted >= 0.85 -> threshold 0.95 (20 images), x = 0.75: thinned
#   class 1  6 admitted (2 below 0.3) -> x = 2.5: duplicated
#   class 2  15 admitted at >= 0.4 -> x = 1: each kept once
#   class 3  no images
#   class 4  7 admitted, 3 of them at exactly 1.0 (bucket 100) -> x = 15/7: duplicated
SPEC = [(0, 0.955, 20), (0, 0.855, 10), (1, 0.705, 6), (1, 0.29, 2), (2, 0.655, 10),
        (2, 0.405, 5), (4, 1.0, 3), (4, 0.505, 4)]
SETTINGS = dict(num_label_classes=K, num_image=15, min_threshold=0.3, shuffle_buffer=8)

Image = collections.namedtuple("Image", "id probs jpeg true_label")


def _images():
    """SPEC's images in a fixed shuffled order (every shard mixes classes)."""
    out = []
    for label, conf, count in SPEC:
        for _ in range(count):
            i = len(out)
            probs = np.full(K, conf / 10, np.float32)  # below conf: argmax = label
            probs[label] = conf
            pixels = np.full((4, 4, 3), [i * 4 % 256, 9, 200], np.uint8)
            out.append(Image(f"img-{i:03d}", probs, tf.io.encode_jpeg(pixels).numpy(), i % K))
    return [out[i] for i in np.random.default_rng(3).permutation(len(out))]


def _write_pseudo(directory, images, num_shards):
    writers.write_shards([schema.encode_pseudo_labeled(e.jpeg, e.probs, image_id=e.id,
                                                       true_label=e.true_label)
                          for e in images], str(directory), "train", num_shards)


def _write_separate(root, images, num_shards, replicas, reverse=True):
    """Raw shards + train-info-* predictions with stored ids + info files. `reverse`
    writes the predictions in reverse image order: the select step then joins by id
    through the hash join."""
    bounds = writers.shard_boundaries(len(images), num_shards)
    os.makedirs(root / "info", exist_ok=True)
    for s in range(num_shards):
        shard = images[bounds[s]:bounds[s + 1]]
        writers.write_records(str(root / "in" / writers.shard_name("extra", s, num_shards)),
                              [schema.encode_unlabeled(e.jpeg, true_label=e.true_label,
                                                       image_id=e.id, dummy_num_classes=K)
                               for e in shard])
        for w in range(replicas):
            part = shard[w::replicas][::-1 if reverse else 1]
            writers.write_records(str(root / "pred" / writers.prediction_name(s, num_shards, w)),
                                  [schema.encode_prediction(e.probs, image_id=e.id)
                                   for e in part])
            (root / "info" / writers.info_name(s, num_shards, w)).write_text(
                json.dumps({"image_num": len(part)}))


def _run_local(config):
    """The four local steps, as the sharded `nst.filter_unlabel` jobs run them."""
    pairs = [(s, t) for s in range(config.num_shards) for t in range(config.total_replicas)]
    for s, t in pairs:
        filter_lib.write_shard_histogram(config, s, t)
    filter_lib.reduce_histograms(config)
    for s, t in pairs:
        filter_lib.select_shard(config, s, t)
    return filter_lib.finalize_stats(config)


def _records(path, canonical=False):
    """The records of a file, in order. `canonical`: re-encoded with sorted map keys, as
    protobuf's default encoding of an Example's feature map may order it differently in
    another process (the comparison should not depend on how the writer serializes)."""
    records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    if canonical:
        records = [tf.train.Example.FromString(r).SerializeToString(deterministic=True)
                   for r in records]
    return records


def _assert_same_outputs(local_dir, beam_dir, canonical=False):
    """Same file names; per data file the same multiset of records; the same JSON files.
    `canonical`: the two runs were different processes (see `_records`)."""
    local, beam = file_tree(local_dir), file_tree(beam_dir)
    assert sorted(beam) == sorted(local)
    data = [name for name in local if name.startswith("data" + os.sep)]
    assert data
    for name in data:
        got = _records(os.path.join(beam_dir, name), canonical)
        want = _records(os.path.join(local_dir, name), canonical)
        assert collections.Counter(got) == collections.Counter(want), name
        # Same per-shard code and seeds: even the record order (the shuffle) is the same.
        assert got == want, name
    for name in set(local) - set(data):  # stats, thresholds, histograms: same bytes
        assert json.loads(beam[name]) == json.loads(local[name]), name
        assert beam[name] == local[name], name
    if not canonical:
        assert beam == local


def _copies(output_dir):
    counts = collections.Counter()
    for name in os.listdir(os.path.join(output_dir, "data")):
        for record in _records(os.path.join(output_dir, "data", name)):
            counts[tf.train.Example.FromString(record).features.feature["image/id"]
                   .bytes_list.value[0].decode()] += 1
    return counts


@pytest.mark.parametrize("layout,replicas", [
    ("pseudo", 1), ("pseudo", 2),
    # ~20 s: the local and the Beam run each join 6 (shard, task) pairs by hash join.
    pytest.param("separate", 2, marks=pytest.mark.slow)])
def test_beam_writes_the_same_files_as_the_local_jobs(tmp_path, layout, replicas):
    images = _images()
    if layout == "pseudo":
        _write_pseudo(tmp_path / "in", images, 3)
        inputs = dict(input_dir=str(tmp_path / "in"))
    else:
        _write_separate(tmp_path, images, 3, replicas)
        inputs = dict(input_dir=str(tmp_path / "in"), file_prefix="extra",
                      prediction_dir=str(tmp_path / "pred"), info_dir=str(tmp_path / "info"))
    common = dict(num_shards=3, total_replicas=replicas, seed=7, **inputs, **SETTINGS)
    local = filter_lib.FilterConfig(output_dir=str(tmp_path / "local"), **common)
    beam = filter_lib.FilterConfig(output_dir=str(tmp_path / "beam"), **common)
    final = _run_local(local)
    assert beam_lib.run_beam_filter(beam, DIRECT) == final
    _assert_same_outputs(local.output_dir, beam.output_dir)
    # The data exercises thinning, duplication and an empty class.
    assert json.loads((tmp_path / "beam" / "threshold.json").read_text()) == {
        "0": [0.95, 20], "1": [0.3, 6], "2": [0.4, 15], "3": [0.3, 0], "4": [0.3, 7]}
    copies = _copies(beam.output_dir)
    groups = collections.defaultdict(set)  # (label, confidence) -> copy counts
    for e in images:
        label = int(np.argmax(e.probs))
        groups[label, round(float(e.probs[label]), 3)].add(copies[e.id])
    assert groups[0, 0.955] == {0, 1} and groups[0, 0.855] == {0}  # thinned
    assert groups[1, 0.705] <= {2, 3} and groups[1, 0.29] == {0}  # duplicated
    assert groups[2, 0.655] == groups[2, 0.405] == {1}
    assert groups[4, 1.0] | groups[4, 0.505] <= {2, 3}  # x = 2.14
    assert final["cat_count"]["3"] == 0 and final["total_cnt"] == sum(copies.values())


def test_beam_resumes_finished_shards_and_refuses_stale_thresholds(tmp_path):
    _write_pseudo(tmp_path / "in", _images(), 3)
    config = filter_lib.FilterConfig(input_dir=str(tmp_path / "in"),
                                     output_dir=str(tmp_path / "out"), num_shards=3, **SETTINGS)
    first = beam_lib.run_beam_filter(config, DIRECT)
    before = file_tree(config.output_dir)
    mtime = os.path.getmtime(config.data_path(1, 0))
    os.remove(config.stats_path(2, 0))  # as if killed before shard 2's stats were written
    assert beam_lib.run_beam_filter(config, DIRECT) == first
    assert file_tree(config.output_dir) == before
    assert os.path.getmtime(config.data_path(1, 0)) == mtime  # finished: not rewritten
    changed = filter_lib.FilterConfig(input_dir=str(tmp_path / "in"),
                                      output_dir=str(tmp_path / "out"), num_shards=3,
                                      **dict(SETTINGS, num_image=16))
    with pytest.raises(Exception, match="threshold.json was computed with other settings"):
        beam_lib.run_beam_filter(changed, DIRECT)


def test_beam_fails_naming_a_corrupt_shard(tmp_path):
    _write_pseudo(tmp_path / "in", _images(), 3)
    bad = str(tmp_path / "in" / "train-00001-of-00003")
    writers.write_records(bad, [b"not an example"])
    config = filter_lib.FilterConfig(input_dir=str(tmp_path / "in"),
                                     output_dir=str(tmp_path / "out"), num_shards=3, **SETTINGS)
    with pytest.raises(Exception, match=f"Record 0 of {re.escape(bad)} is not a "
                                        f"pseudo-labelled record"):
        beam_lib.run_beam_filter(config, DIRECT)
    assert not (tmp_path / "out" / "threshold.json").exists()


def test_beam_fails_naming_a_mismatched_shard(tmp_path):
    _write_separate(tmp_path, _images(), 3, 1, reverse=False)
    pred = str(tmp_path / "pred" / writers.prediction_name(2, 3, 0))
    writers.write_records(pred, [r.numpy() for r in tf.data.TFRecordDataset(pred)][:-1])
    config = filter_lib.FilterConfig(
        input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), num_shards=3,
        file_prefix="extra", prediction_dir=str(tmp_path / "pred"), **SETTINGS)
    # Without info files pass 1 cannot tell; the join of pass 2 names both files.
    with pytest.raises(Exception, match=r"extra-00002-of-00003 holds 20 images but "
                                        rf"{re.escape(pred)} holds 19 predictions"):
        beam_lib.run_beam_filter(config, DIRECT)
    assert not os.path.exists(config.data_path(2, 0))
    assert not os.path.exists(config.path("final_stats.json"))


def test_command_line_passes_runner_options_through(tmp_path):
    values = flags.FlagValues()
    beam_lib.define_flags(values)
    rest = beam_lib.split_argv(
        ["prog", "--num_shards=3", "--runner=DataflowRunner", "--project", "p",
         "--beam_args=--region=europe-west4 '--labels=a b'", "--num_image=9"], values)
    assert rest == ["--runner=DataflowRunner", "--project", "p", "--region=europe-west4",
                    "--labels=a b"]
    assert values.num_shards == 3 and values.num_image == 9
    assert beam_lib.pipeline_options_from(rest).get_all_options()["project"] == "p"


# The runner options of the command lines in docs/pseudo_labels.md.
DOCUMENTED_OPTIONS = [
    "--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing",
    "--runner=DataflowRunner", "--project=PROJECT", "--region=us-central1",
    "--temp_location=gs://BUCKET/tmp", "--setup_file=./setup.py",
    "--requirements_file=worker-requirements.txt", "--max_num_workers=64",
    "--runner=FlinkRunner", "--flink_master=http://flink-host:8081", "--parallelism=16",
    "--environment_type=DOCKER", "--sdk_container_image=REGISTRY/nst-beam:latest",
    "--environment_config=REGISTRY/nst-beam:latest", "--runner=SparkRunner",
    "--spark_master_url=spark://spark-host:7077", "--spark_submit_uber_jar",
    "--spark_rest_url=http://spark-host:6066", "--project", "p"]


def test_command_line_passes_documented_runner_options_through():
    values = flags.FlagValues()
    beam_lib.define_flags(values)
    assert beam_lib.unknown_options(DOCUMENTED_OPTIONS) == []
    assert beam_lib.split_argv(["prog", "--num_shards=3"] + DOCUMENTED_OPTIONS,
                               values) == DOCUMENTED_OPTIONS


def test_command_line_refuses_unknown_flags_naming_them(tmp_path, capsys):
    values = flags.FlagValues()
    beam_lib.define_flags(values)
    out = tmp_path / "out"
    argv = ["prog", f"--input_dir={tmp_path / 'in'}", f"--output_dir={out}", "--num_shard=4",
            "--runner=DirectRunner", "--direct_num_workers=2"]
    # The binary's parser (cli_errors.parser around _parse_flags): one 'error:' line, exit 1.
    parse = cli_errors.parser(lambda words: beam_lib._parse_flags(words, values))
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: Unknown command line flag")
    assert "--num_shard=4 (did you mean --num_shards?)" in err[0]
    assert not out.exists()
    # Every unknown word is named, also single-dash ones and misspelt Beam options; a word
    # in --beam_args goes to Beam as it is.
    named = (r"flags --num_shard \(did you mean --num_shards\?\), -x=1, "
             r"--runnr=DirectRunner \(did you mean --runner\?\)")
    with pytest.raises(flags.Error, match=named):
        beam_lib.split_argv(["prog", "--num_shard", "4", "-x=1", "--runnr=DirectRunner",
                             "--region=r"], values)
    assert beam_lib.split_argv(["prog", "--region=r", "--beam_args=--job_server_only=1"],
                               values) == ["--region=r", "--job_server_only=1"]


def _run_binary(args):
    return subprocess.run([sys.executable, "-m", "nst.pseudo.beam"] + args,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # ~30 s: three interpreters importing TensorFlow and Beam
def test_binary_end_to_end(tmp_path):
    _write_pseudo(tmp_path / "in", _images(), 3)
    local = filter_lib.FilterConfig(input_dir=str(tmp_path / "in"),
                                    output_dir=str(tmp_path / "local"), num_shards=3,
                                    **SETTINGS)
    _run_local(local)
    args = [f"--input_dir={tmp_path / 'in'}", f"--output_dir={tmp_path / 'beam'}",
            "--num_shards=3", f"--num_label_classes={K}", "--num_image=15",
            "--min_threshold=0.3", "--shuffle_buffer=8", "--runner=DirectRunner",
            "--beam_args=--direct_num_workers=1 --direct_running_mode=in_memory"]
    result = _run_binary(args)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_outputs(local.output_dir, str(tmp_path / "beam"), canonical=True)
    # A user error: exit status 1 and the message, no traceback.
    result = _run_binary(["--num_shards=3", f"--output_dir={tmp_path / 'none'}",
                          f"--input_dir={tmp_path / 'missing'}"] + DIRECT)
    assert result.returncode == 1
    assert f"Input shard {tmp_path / 'missing'}" in result.stderr
    # A misspelt flag: exit status 1 before any work, one line naming it.
    result = _run_binary(["--num_shard=3", f"--output_dir={tmp_path / 'typo'}",
                          f"--input_dir={tmp_path / 'in'}"] + DIRECT)
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if "--num_shard=3" in line] == [
        "error: Unknown command line flag --num_shard=3 (did you mean "
        "--num_shards?): neither a flag of this tool nor a Beam pipeline option (options "
        "that only a runner's job server knows go in --beam_args, which is passed on "
        "unchecked) (--helpshort lists the flags)"]
    assert not (tmp_path / "typo").exists()
