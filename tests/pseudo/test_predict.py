"""`--mode=predict` (spec §3.4, §3.6, §5.12): pseudo-labelled TFRecords from a teacher.

Reference predictions come from the same model called directly on the eval view of
each decoded image, matched by image id; the teacher is a tiny random EfficientNet.
"""

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from nst import config as config_lib
from nst import main
from nst.data import preprocess, readers, schema, writers
from nst.models import saving
from nst.pseudo import filter as filter_lib
from nst.pseudo import predict
from nst.testing import two_cpu_strategy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K = 10
NUM_SHARDS = 3
PER_SHARD = 13  # batch 8: every shard ends with a partial batch


def _jpeg(rng):
    pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(pixels, quality=90).numpy()


def _records(shard, rng):
    """Raw unlabeled records; every third stores no id (the reader derives one) and
    every other one a true label."""
    out = []
    for i in range(PER_SHARD):
        image_id = None if i % 3 == 0 else f"img-{shard}-{i}"
        true_label = i % K if i % 2 == 0 else None
        out.append(schema.encode_unlabeled(_jpeg(rng), image_id=image_id,
                                           true_label=true_label))
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    for shard in range(NUM_SHARDS):
        writers.write_records(str(path / writers.shard_name("extra", shard, NUM_SHARDS)),
                              _records(shard, rng))
    return str(path)


def _config(data_dir, teacher_dir, output_dir, **overrides):
    settings = dict(task_name="digits", mode="predict", label_data_dir=data_dir,
                    predict_ckpt_path=teacher_dir, output_dir=str(output_dir),
                    num_shards=NUM_SHARDS, shard_id=f"0-{NUM_SHARDS - 1}",
                    file_prefix="extra", predict_batch_size=8)
    settings.update(overrides)
    return config_lib.finalize(config_lib.ExperimentConfig(**settings))


def _reference(teacher_dir, data_dir):
    """{id: probabilities} from the model called directly, and {id: (image, true label)}."""
    model = saving.load_model(teacher_dir)
    probs, images = {}, {}
    for record in readers.read_examples(os.path.join(data_dir, "*"), "unlabeled", K):
        image_id = record["id"].numpy().decode()
        pixels = preprocess.eval_view(preprocess.decode_image(record["image"]), 32, True)
        logits = model(pixels[None], training=False)
        probs[image_id] = tf.nn.softmax(logits)[0].numpy()
        images[image_id] = (record["image"].numpy(), int(record["true_label"]))
    return probs, images


@pytest.fixture(scope="module")
def reference(teacher_dir, data_dir):
    return _reference(teacher_dir, data_dir)


def _read(path, fmt="pseudo_labeled"):
    return [{k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in r.items()}
            for r in readers.read_examples(path, fmt, K)]


def _check_against_reference(records, reference):
    probs, images = reference
    for r in records:
        image_id = r["id"].decode()
        np.testing.assert_allclose(r["probabilities"], probs[image_id], rtol=1e-5, atol=1e-6)
        assert r["label"] == int(np.argmax(probs[image_id]))
        assert r["prob"] == pytest.approx(float(np.max(probs[image_id])), rel=1e-6)
        assert r["image"] == images[image_id][0]
        assert r["true_label"] == images[image_id][1]


# --------------------------------------------------------------------------- flags


def test_parse_shard_ids():
    assert predict.parse_shard_ids("3", 8) == [3]
    assert predict.parse_shard_ids("0,1,2", 8) == [0, 1, 2]
    assert predict.parse_shard_ids("0-3,7", 8) == [0, 1, 2, 3, 7]
    assert predict.parse_shard_ids(" 2 , 2-3", 8) == [2, 3]
    for bad in ("5-2", "x", "8", "", "0-8"):
        with pytest.raises(ValueError, match="--shard_id"):
            predict.parse_shard_ids(bad, 8)


def test_output_names(data_dir, teacher_dir, tmp_path):
    config = _config(data_dir, teacher_dir, tmp_path / "out", shard_id="1",
                     info_dir=str(tmp_path / "info"), write_train_info=True)
    [s] = predict.plan(config)
    assert os.path.basename(s.output_path) == "extra-00001-of-00003"
    assert os.path.basename(s.train_info_path) == "train-info-00001-of-00003-00000"
    assert os.path.basename(s.info_path) == "info-00001-of-00003-00000.txt"
    [s] = predict.plan(dataclasses.replace(config, total_replicas=2, worker_id=1))
    assert os.path.basename(s.output_path) == "extra-00001-of-00003-00001"
    [s] = predict.plan(dataclasses.replace(config, reassign_label=True, worker_id=0,
                                           file_prefix="train"))
    assert os.path.basename(s.input_path) == "train-0-00001-of-00003"
    assert os.path.basename(s.output_path) == "train-0-00001-of-00003"
    with pytest.raises(ValueError, match="overwrite the input"):
        predict.plan(dataclasses.replace(config, output_dir=data_dir))


# --------------------------------------------------------------------------- predict


def test_predictions_equal_the_model_and_keep_order_ids_and_images(
        data_dir, teacher_dir, reference, tmp_path):
    info_dir = tmp_path / "info"
    config = _config(data_dir, teacher_dir, tmp_path / "out", info_dir=str(info_dir),
                     write_train_info=True)
    summaries = main.run(config)
    assert [s["num_records"] for s in summaries] == [PER_SHARD] * NUM_SHARDS
    for shard in range(NUM_SHARDS):
        name = writers.shard_name("extra", shard, NUM_SHARDS)
        records = _read(str(tmp_path / "out" / name))
        source = _read(os.path.join(data_dir, name), "unlabeled")
        assert [r["id"] for r in records] == [r["id"] for r in source]  # same order
        _check_against_reference(records, reference)
        # The trainer reads the output as unlabeled data with real pseudo labels.
        unlabeled = _read(str(tmp_path / "out" / name), "unlabeled")
        assert all(r["has_pseudo_label"] for r in unlabeled)
        # The original's prediction-only layout, same order.
        info = _read(str(tmp_path / "out" / writers.prediction_name(shard, NUM_SHARDS, 0)),
                     "prediction")
        np.testing.assert_array_equal([r["probabilities"] for r in info],
                                      [r["probabilities"] for r in records])
        with open(info_dir / writers.info_name(shard, NUM_SHARDS, 0)) as f:
            assert json.load(f) == {"image_num": PER_SHARD}


def test_two_replicas_give_the_same_predictions(data_dir, teacher_dir, tmp_path):
    one = main.run(_config(data_dir, teacher_dir, tmp_path / "one", shard_id="0"))
    strategy = two_cpu_strategy()
    two = predict.run_prediction(_config(data_dir, teacher_dir, tmp_path / "two",
                                         shard_id="0"), strategy)
    a, b = _read(one[0]["output"]), _read(two[0]["output"])
    assert [r["id"] for r in a] == [r["id"] for r in b]
    np.testing.assert_allclose([r["probabilities"] for r in a],
                               [r["probabilities"] for r in b], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of the 2 replicas"):
        predict.Predictor(None, 7, strategy)


def test_shuffled_input_order_still_labels_every_image_correctly(
        data_dir, teacher_dir, reference, tmp_path):
    """Ids travel with the images: reading the same records in another order gives every
    image its own prediction."""
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    rng = np.random.default_rng(5)
    for shard in range(NUM_SHARDS):
        name = writers.shard_name("extra", shard, NUM_SHARDS)
        # Store the derived ids so that they survive the reordering.
        records = [schema.encode_unlabeled(r["image"], image_id=r["id"],
                                           true_label=r["true_label"] if r["true_label"] >= 0
                                           else None)
                   for r in _read(os.path.join(data_dir, name), "unlabeled")]
        writers.write_records(str(shuffled / name), [records[i] for i in
                                                     rng.permutation(len(records))])
    main.run(_config(str(shuffled), teacher_dir, tmp_path / "out"))
    records = _read(str(tmp_path / "out" / "*"))
    assert len(records) == NUM_SHARDS * PER_SHARD
    assert len({r["id"] for r in records}) == len(records)
    _check_against_reference(records, reference)


def test_worker_slices_cover_the_shard_once(data_dir, teacher_dir, reference, tmp_path):
    whole = main.run(_config(data_dir, teacher_dir, tmp_path / "whole", shard_id="2"))
    parts = []
    for worker in range(2):
        [summary] = main.run(_config(data_dir, teacher_dir, tmp_path / "sliced",
                                     shard_id="2", total_replicas=2, worker_id=worker,
                                     info_dir=str(tmp_path / "info")))
        assert summary["output"].endswith(f"-{worker:05d}")
        records = _read(summary["output"])
        source = _read(os.path.join(data_dir, writers.shard_name("extra", 2, NUM_SHARDS)),
                       "unlabeled")
        assert [r["id"] for r in records] == [r["id"] for r in source[worker::2]]
        parts += records
    _check_against_reference(parts, reference)
    assert sorted(r["id"] for r in parts) == sorted(r["id"] for r in _read(whole[0]["output"]))
    counts = [json.load(open(tmp_path / "info" / writers.info_name(2, NUM_SHARDS, w)))
              for w in range(2)]
    assert counts == [{"image_num": 7}, {"image_num": 6}]


def test_outputs_feed_the_filter_in_both_layouts(data_dir, teacher_dir, tmp_path):
    """Our pseudo-labelled files, and the original layout (raw shards + train-info +
    info files), give the filter the same selection."""
    out = tmp_path / "pred"
    main.run(_config(data_dir, teacher_dir, out, write_train_info=True,
                     info_dir=str(tmp_path / "info")))
    common = dict(num_shards=NUM_SHARDS, num_label_classes=K, num_image=4,
                  file_prefix="extra", seed=3)
    ours = filter_lib.FilterConfig(input_dir=str(out), output_dir=str(tmp_path / "f1"),
                                   **common)
    original = filter_lib.FilterConfig(input_dir=data_dir, prediction_dir=str(out),
                                       info_dir=str(tmp_path / "info"),
                                       output_dir=str(tmp_path / "f2"), **common)
    outputs = []
    for config in (ours, original):
        for shard in range(NUM_SHARDS):
            filter_lib.write_shard_histogram(config, shard, 0)
        filter_lib.reduce_histograms(config)
        for shard in range(NUM_SHARDS):
            filter_lib.select_shard(config, shard, 0)
        filter_lib.finalize_stats(config)
        outputs.append(collections.Counter(
            (r["id"], int(r["label"])) for r in _read(str(tmp_path / config.output_dir /
                                                          "data" / "*"))))
    assert outputs[0] == outputs[1] and sum(outputs[0].values()) > 0


# --------------------------------------------------------------------------- resume


def _bytes(directory):
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory))
            if os.path.isfile(os.path.join(directory, name))}


def test_rerun_skips_finished_shards_and_redoes_unfinished(data_dir, teacher_dir, tmp_path):
    config = _config(data_dir, teacher_dir, tmp_path / "out")
    main.run(config)
    first = _bytes(tmp_path / "out")
    done = tmp_path / "out" / writers.shard_name("extra", 0, NUM_SHARDS)
    redo = tmp_path / "out" / writers.shard_name("extra", 1, NUM_SHARDS)
    mtime = os.stat(done).st_mtime_ns
    os.remove(redo)
    summaries = main.run(config)
    assert [s["skipped"] for s in summaries] == [True, False, True]
    assert os.stat(done).st_mtime_ns == mtime
    assert _bytes(tmp_path / "out") == first


@pytest.mark.slow
def test_killed_predict_job_resumes_to_identical_output(data_dir, teacher_dir, tmp_path):
    """SIGKILL after the first shard is published; the rerun finishes the rest, and the
    output equals an uninterrupted run's byte for byte, with no leftovers. (Shards of 150
    at batch 8: were batches to run across files, the rerun would cut them differently,
    and some CPUs round the probabilities differently then.)"""
    big = tmp_path / "big"
    big.mkdir()
    rng = np.random.default_rng(7)
    num_shards = 6
    for shard in range(num_shards):
        writers.write_records(str(big / writers.shard_name("extra", shard, num_shards)),
                              [schema.encode_unlabeled(_jpeg(rng)) for _ in range(150)])

    def command(out):
        return [sys.executable, "-m", "nst.main", "--mode=predict", "--task_name=digits",
                f"--label_data_dir={big}", f"--predict_ckpt_path={teacher_dir}",
                f"--output_dir={out}", f"--num_shards={num_shards}",
                f"--shard_id=0-{num_shards - 1}", "--file_prefix=extra",
                "--predict_batch_size=8"]

    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    subprocess.run(command(tmp_path / "ref"), check=True, cwd=REPO, env=env,
                   capture_output=True)
    out = tmp_path / "killed"
    process = subprocess.Popen(command(out), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    first = out / writers.shard_name("extra", 0, num_shards)
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    published = [n for n in os.listdir(out) if n.startswith("extra-")]
    assert 1 <= len(published) < num_shards, published  # killed mid-job
    subprocess.run(command(out), check=True, cwd=REPO, env=env, capture_output=True)
    assert _bytes(out) == _bytes(tmp_path / "ref")
    assert not [n for n in os.listdir(out) if n.startswith(".")]


# --------------------------------------------------------------------------- reassign


def test_reassign_label_keeps_order_duplicates_and_ids(data_dir, teacher_dir, reference,
                                                       tmp_path):
    """A filtered file (duplicates, old labels) re-labelled by a new teacher."""
    source = _read(os.path.join(data_dir, writers.shard_name("extra", 0, NUM_SHARDS)),
                   "unlabeled")
    order = [0, 0, 3, 5, 5, 5, 2, 1]
    old = np.full(K, 1.0 / K, np.float32)
    filtered = tmp_path / "filtered"
    filtered.mkdir()
    name = writers.task_shard_name("train", 0, 0, 2)
    writers.write_records(str(filtered / name), [
        schema.encode_pseudo_labeled(
            source[i]["image"], old, image_id=source[i]["id"],
            true_label=source[i]["true_label"] if source[i]["true_label"] >= 0 else None)
        for i in order])
    config = _config(str(filtered), teacher_dir, tmp_path / "re", reassign_label=True,
                     file_prefix="train", num_shards=2, shard_id="0", worker_id=0,
                     num_sample_images=1000)
    [summary] = main.run(config)
    records = _read(str(tmp_path / "re" / name))
    assert [r["id"] for r in records] == [source[i]["id"] for i in order]
    _check_against_reference(records, reference)
    # ~1000 samples over 2 shards of 8: every record is dumped once (rate > 1).
    samples = sorted(p for p in (tmp_path / "re" / "samples").rglob("*.jpeg"))
    assert len(samples) == len(order) == summary["num_samples"]
    for r, index in zip(records, range(len(order))):
        path = (tmp_path / "re" / "samples" / str(r["label"]) /
                f"image_0_{index}_{r['prob']:.2f}.jpeg")
        assert path.read_bytes() == r["image"]  # already JPEG: unchanged
    assert not (tmp_path / "info").exists()


# --------------------------------------------------------------------------- bad input


def test_count_mismatch_with_info_file_publishes_nothing(data_dir, teacher_dir, tmp_path):
    info = tmp_path / "info"
    info.mkdir()
    (info / writers.info_name(0, NUM_SHARDS, 0)).write_text('{"image_num": 20}')
    config = _config(data_dir, teacher_dir, tmp_path / "out", shard_id="0",
                     info_dir=str(info))
    with pytest.raises(ValueError, match=r"Count mismatch.*13 predictions.*info-00000"):
        main.run(config)
    assert os.listdir(tmp_path / "out") == []


def test_class_count_of_the_model_must_match(data_dir, teacher_dir, tmp_path):
    config = dataclasses.replace(_config(data_dir, teacher_dir, tmp_path / "out"),
                                 num_label_classes=5)
    with pytest.raises(ValueError, match="predicts 10 classes but --num_label_classes is 5"):
        main.run(config)


def test_missing_inputs_are_named(data_dir, teacher_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="predict_ckpt_path"):
        main.run(_config(data_dir, str(tmp_path / "nothing"), tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="train-00000-of-00003"):
        main.run(_config(data_dir, teacher_dir, tmp_path / "out", file_prefix="train"))
    with pytest.raises(ValueError, match="--predict_ckpt_path"):
        main.run(_config(data_dir, "", tmp_path / "out"))


def test_corrupt_image_is_named_or_skipped_and_counted(teacher_dir, tmp_path):
    rng = np.random.default_rng(3)
    records = [schema.encode_unlabeled(_jpeg(rng), image_id=f"ok-{i}") for i in range(5)]
    records[3] = schema.encode_unlabeled(b"not an image", image_id="broken")
    data = tmp_path / "data"
    data.mkdir()
    writers.write_records(str(data / "extra-00000-of-00001"), records)
    config = _config(str(data), teacher_dir, tmp_path / "out", num_shards=1, shard_id="0")
    with pytest.raises(Exception, match=r"extra-00000-of-00001.*3|3.*extra-00000-of-00001"):
        main.run(config)
    assert os.listdir(tmp_path / "out") == []
    [summary] = main.run(dataclasses.replace(config, skip_corrupt=True))
    assert summary["num_records"] == 4 and summary["num_skipped"] == 1
    assert [r["id"] for r in _read(summary["output"])] == [b"ok-0", b"ok-1", b"ok-2", b"ok-4"]


def test_worker_files_feed_the_filter_with_the_same_slices(data_dir, teacher_dir, tmp_path):
    """Predict with 2 workers writes one file per worker; the filter with
    total_replicas=2 reads them as its tasks, and selects what it selects from the
    same records predicted as one file."""
    common = dict(num_shards=NUM_SHARDS, num_label_classes=K, num_image=3,
                  file_prefix="extra", seed=3)
    outputs = []
    for name, replicas in (("one", 1), ("two", 2)):
        for worker in range(replicas):
            main.run(_config(data_dir, teacher_dir, tmp_path / name, total_replicas=replicas,
                             worker_id=worker))
        config = filter_lib.FilterConfig(input_dir=str(tmp_path / name),
                                         output_dir=str(tmp_path / f"f-{name}"),
                                         total_replicas=replicas, **common)
        tasks = [(s, t) for s in range(NUM_SHARDS) for t in range(replicas)]
        for shard, task in tasks:
            filter_lib.write_shard_histogram(config, shard, task)
        filter_lib.reduce_histograms(config)
        for shard, task in tasks:
            filter_lib.select_shard(config, shard, task)
        outputs.append(collections.Counter(
            r["id"] for r in _read(os.path.join(config.output_dir, "data", "*"))))
    assert outputs[0] == outputs[1] and sum(outputs[0].values()) > 0


# --------------------------------------------------------------------------- one pipeline per job


def test_one_job_cuts_batches_at_file_ends_and_publishes_empty_slices(
        teacher_dir, tmp_path, predictor_calls):
    """Shards of 5, 0 and 11 records at batch 4: each batch holds one shard's records,
    cut every 4 from the shard's first, so a shard is batched the same way whether or not
    the shards before it ran (as on a resume); the empty shard still gets its (empty)
    output, and each output holds its own shard's ids in order."""
    rng = np.random.default_rng(5)
    data = tmp_path / "data"
    data.mkdir()
    sizes = [5, 0, 11]
    for shard, n in enumerate(sizes):
        writers.write_records(str(data / writers.shard_name("extra", shard, 3)),
                              [schema.encode_unlabeled(_jpeg(rng), image_id=f"s{shard}-{i}")
                               for i in range(n)])
    calls = predictor_calls
    config = _config(str(data), teacher_dir, tmp_path / "out", predict_batch_size=4)
    summaries = main.run(config)
    assert [s["num_records"] for s in summaries] == sizes
    for shard, (summary, n) in enumerate(zip(summaries, sizes)):
        assert [r["id"] for r in _read(summary["output"])] == [
            f"s{shard}-{i}".encode() for i in range(n)]
    assert [len(c) for c in calls] == [4, 1, 4, 4, 3]
    last = calls[2:]
    calls.clear()
    main.run(dataclasses.replace(config, output_dir=str(tmp_path / "alone"), shard_id="2"))
    assert len(calls) == len(last)
    for got, want in zip(calls, last):
        np.testing.assert_array_equal(got, want)


def test_file_batches_cut_each_file_at_multiples_of_the_size():
    # Reader batches of 4 over files a (6 rows), b (1), c (5): rows are (file, index).
    rows = [(f, i) for f, n in ((b"a", 6), (b"b", 1), (b"c", 5)) for i in range(n)]
    batches = [{"file": np.array([f for f, _ in rows[k:k + 4]]),
                "index": np.array([i for _, i in rows[k:k + 4]])}
               for k in range(0, len(rows), 4)]
    got = [(b["file"].tolist(), b["index"].tolist())
           for b in predict._file_batches(iter(batches), 3)]
    assert got == [([b"a"] * 3, [0, 1, 2]), ([b"a"] * 3, [3, 4, 5]), ([b"b"], [0]),
                   ([b"c"] * 3, [0, 1, 2]), ([b"c"] * 2, [3, 4])]


def test_a_failing_slice_keeps_the_finished_ones(data_dir, teacher_dir, tmp_path):
    info = tmp_path / "info"
    info.mkdir()
    (info / writers.info_name(1, NUM_SHARDS, 0)).write_text('{"image_num": 12}')
    config = _config(data_dir, teacher_dir, tmp_path / "out", info_dir=str(info))
    with pytest.raises(ValueError, match=r"Count mismatch for shard 1.*13 predictions"):
        main.run(config)
    assert sorted(os.listdir(tmp_path / "out")) == [writers.shard_name("extra", 0, NUM_SHARDS)]
    # The info file of the shard that was counted is written from its records.
    assert json.loads((info / writers.info_name(0, NUM_SHARDS, 0)).read_text()) == {
        "image_num": PER_SHARD}


def test_a_killed_runs_temporary_file_is_removed(data_dir, teacher_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    name = writers.shard_name("extra", 0, NUM_SHARDS)
    (out / f".{name}.tmp-{'0123abcd' * 4}").write_bytes(b"partial")  # a temporary_path name
    main.run(_config(data_dir, teacher_dir, out, shard_id="0"))
    assert os.listdir(out) == [name]


def _rows(indices):
    n = len(indices)
    return {"index": np.array(indices, np.int64), "id": [f"r{i}".encode() for i in indices],
            "true_label": np.full(n, -1), "image": [b"x"] * n}


def test_rows_missing_from_a_slice_are_an_error_unless_skipped(tmp_path):
    s = predict.Slice(0, 1, "in/extra-00000-of-00001", str(tmp_path / "out" / "o"), None, None,
                      replicas=2)
    config = config_lib.ExperimentConfig(output_dir=str(tmp_path / "out"))
    probabilities, labels = np.full((3, 2), 0.5, np.float32), np.zeros(3, np.int64)

    def write(indices, skipped):
        output = predict._SliceOutput(s, s.input_path, config)
        try:
            output.write(_rows(indices), probabilities, labels, range(len(indices)),
                         lambda *args: b"record", skipped)
            return output.finish(skipped)
        finally:
            output.abort()

    # Slice 1 of 2 holds the records 1, 3, 5, ... of the file.
    assert write([1, 3, 5], None)["num_records"] == 3
    with pytest.raises(ValueError, match=r"in/extra-00000-of-00001: record 5 came where "
                                         r"record 3 was due \(slice 1 of 2\)"):
        write([1, 5], None)
    with pytest.raises(ValueError, match="record 3 came where record 1 was due"):
        write([3, 1], None)
    with pytest.raises(ValueError, match="record 3 came where record 5 was due"):
        write([1, 3, 3], None)
    skipped = readers.SkippedRecords(keep_indices=True)
    skipped.record(s.input_path, 3, "bad image")
    skipped.record(s.input_path, 4, "bad image")  # another slice's record
    summary = write([1, 5, 7], skipped)
    assert summary["num_records"] == 3 and summary["num_skipped"] == 1
