"""Reading shards: round trips, file listing, order, sharding and bad input."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

from nst.data import readers, schema, writers

K = 4


def _jpeg(seed):
    rng = np.random.default_rng(seed)
    return tf.io.encode_jpeg(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).numpy()


def _probs(seed):
    p = np.random.default_rng(seed).random(K).astype(np.float32)
    return p / p.sum()


def _labeled(n, start=0):
    return [schema.encode_labeled(_jpeg(start + i), (start + i) % K) for i in range(n)]


def _collect(dataset):
    return list(dataset.as_numpy_iterator())


def _located(records):
    return [(os.path.basename(r["file"].decode()), int(r["index"])) for r in records]


def _index_in_error(text):
    match = re.search(r"at record index\W+(\d+)", text)
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------- round trips


def test_labeled_round_trip_converts_one_based_labels(tmp_path):
    records = _labeled(10)
    writers.write_shards(records, str(tmp_path), "train", 3)
    out = _collect(readers.read_examples(str(tmp_path / "train*"), "labeled", K))
    assert len(out) == 10
    bounds = writers.shard_boundaries(10, 3)
    for r in out:
        shard = int(os.path.basename(r["file"].decode())[6:11])
        i = bounds[shard] + int(r["index"])  # position in the input list
        assert r["label"] == i % K and r["image"] == _jpeg(i)
        assert r["id"] == f"{os.path.basename(r['file'].decode())}:{r['index']}".encode()


def test_unlabeled_round_trip_raw_and_pseudo_labelled(tmp_path):
    raw = [schema.encode_unlabeled(_jpeg(i), image_id=f"raw-{i}") for i in range(5)]
    labelled = [schema.encode_unlabeled(_jpeg(i), probabilities=_probs(i), true_label=i % K,
                                        image_id=f"pl-{i}") for i in range(5)]
    writers.write_records(str(tmp_path / "extra-00000-of-00002"), raw)
    writers.write_records(str(tmp_path / "extra-00001-of-00002"), labelled)
    out = {r["id"].decode(): r for r in _collect(
        readers.read_examples(str(tmp_path / "extra*"), "unlabeled", K))}
    assert sorted(out) == sorted([f"raw-{i}" for i in range(5)] + [f"pl-{i}" for i in range(5)])
    for i in range(5):
        r = out[f"raw-{i}"]
        assert not r["has_pseudo_label"] and r["label"] == -1 and r["image"] == _jpeg(i)
        r = out[f"pl-{i}"]
        assert r["has_pseudo_label"] and r["label"] == np.argmax(_probs(i))
        assert r["true_label"] == i % K
        np.testing.assert_allclose(r["probabilities"], _probs(i))
        np.testing.assert_allclose(r["prob"], _probs(i).max())


def test_prediction_round_trip_keeps_record_order(tmp_path):
    path = tmp_path / writers.prediction_name(0, 1, 0)
    writers.write_records(str(path), [schema.encode_prediction(_probs(i)) for i in range(7)])
    out = _collect(readers.read_examples(str(path), "prediction", K))
    assert [int(r["index"]) for r in out] == list(range(7))
    for i, r in enumerate(out):
        np.testing.assert_allclose(r["probabilities"], _probs(i))
        assert r["classes"] == np.argmax(_probs(i))
        assert r["id"] == f"train-info-00000-of-00001-00000:{i}".encode()


def test_pseudo_labeled_round_trip(tmp_path):
    path = writers.filtered_path(str(tmp_path), 0, 0, 1)
    inputs = [(i % K, 0.25 + 0.1 * i) for i in range(6)]
    writers.write_records(path, [
        schema.encode_pseudo_labeled(_jpeg(i), _probs(i), label=label, prob=prob,
                                     true_label=(i + 1) % K)
        for i, (label, prob) in enumerate(inputs)])
    out = _collect(readers.read_examples(os.path.join(str(tmp_path), "data", "train-*"),
                                         "pseudo_labeled", K))
    for i, r in enumerate(out):
        assert r["label"] == inputs[i][0] and r["true_label"] == (i + 1) % K
        np.testing.assert_allclose(r["prob"], inputs[i][1], rtol=1e-6)
        np.testing.assert_allclose(r["probabilities"], _probs(i))
        assert r["image"] == _jpeg(i)


def test_read_records_yields_the_raw_bytes(tmp_path):
    records = _labeled(5)
    writers.write_records(str(tmp_path / "train-00000-of-00001"), records)
    out = _collect(readers.read_records(str(tmp_path / "train*")))
    assert [r["serialized"] for r in out] == records
    assert [int(r["index"]) for r in out] == list(range(5))


def test_read_records_detects_truncation_too(tmp_path):
    path = tmp_path / "extra-00000-of-00001"
    writers.write_records(str(path), _labeled(4))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="extra-00000-of-00001"):
        _collect(readers.read_records(str(path)))
    skipped = readers.SkippedRecords()
    out = _collect(readers.read_records(str(path), skip_corrupt=True, skipped=skipped))
    assert len(out) == 3 and skipped.count == 1 and skipped.first[0][1] == 3


# --------------------------------------------------------------------------- files


def test_list_files_sorts_dedupes_and_accepts_several_patterns(tmp_path):
    for name in ["train-00001-of-00002", "train-00000-of-00002", "extra-00000-of-00001",
                 ".train-00002-of-00002.tmp-abc"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "test-00000-of-00001").write_bytes(b"")
    d = str(tmp_path)
    train = [f"{d}/train-00000-of-00002", f"{d}/train-00001-of-00002"]
    assert readers.list_files(f"{d}/train*") == train  # hidden temporaries ignored
    assert readers.list_files([f"{d}/train*", f"{d}/train-00000*"]) == train
    assert readers.list_files(f"{d}/train*;{d}/extra*") == sorted(
        train + [f"{d}/extra-00000-of-00001"])
    assert readers.list_files(f"{d}/sub") == [f"{d}/sub/test-00000-of-00001"]
    with pytest.raises(FileNotFoundError, match=re.escape(f"{d}/validation*")):
        readers.list_files([f"{d}/train*", f"{d}/validation*"])
    with pytest.raises(ValueError):
        readers.list_files(" ; ")


def test_list_unlabeled_files_uses_train_and_extra_of_each_dir(tmp_path):
    for sub, name in [("a", "train-00000-of-00001"), ("a", "dev-00000-of-00001"),
                      ("b", "extra-00000-of-00002"), ("b", "extra-00001-of-00002")]:
        (tmp_path / sub).mkdir(exist_ok=True)
        (tmp_path / sub / name).write_bytes(b"")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert readers.list_unlabeled_files(f"{a};{b}") == [
        f"{a}/train-00000-of-00001", f"{b}/extra-00000-of-00002", f"{b}/extra-00001-of-00002"]
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="c'"):
        readers.list_unlabeled_files(f"{a};{tmp_path / 'c'}")


# --------------------------------------------------------------------------- order


@pytest.fixture
def eight_files(tmp_path):
    writers.write_shards(_labeled(24), str(tmp_path), "train", 8)
    return str(tmp_path / "train*")


def test_order_is_reproducible_with_a_seed_and_changes_with_another(eight_files):
    def order(**kwargs):
        return _located(_collect(readers.read_examples(eight_files, "labeled", K, **kwargs)))

    plain = order()
    assert plain == order() and len(set(plain)) == 24
    first = order(shuffle_files=True, seed=1)
    assert first == order(shuffle_files=True, seed=1)
    second = order(shuffle_files=True, seed=2)
    assert second != first and sorted(second) == sorted(first) == sorted(plain)
    assert plain != first


def test_repeat_reshuffles_files_every_epoch(eight_files):
    ds = readers.read_examples(eight_files, "labeled", K, shuffle_files=True, seed=3,
                               repeat=True, cycle_length=1)
    located = _located(_collect(ds.take(48)))
    epoch1, epoch2 = located[:24], located[24:]
    assert sorted(epoch1) == sorted(epoch2) and len(set(epoch1)) == 24
    assert epoch1 != epoch2


# --------------------------------------------------------------------------- sharding


def _context(pipeline, num=2):
    return tf.distribute.InputContext(num_input_pipelines=num, input_pipeline_id=pipeline)


def test_input_context_shards_files(eight_files):
    seen = []
    for pipeline in range(2):
        records = _collect(readers.read_examples(
            eight_files, "labeled", K, input_context=_context(pipeline),
            shuffle_files=True, seed=pipeline))
        seen.append(_located(records))
    files = [{name for name, _ in s} for s in seen]
    assert not files[0] & files[1] and len(files[0] | files[1]) == 8
    assert files[0] == {writers.shard_name("train", i, 8) for i in range(0, 8, 2)}
    assert sorted(seen[0] + seen[1]) == sorted(_located(_collect(
        readers.read_examples(eight_files, "labeled", K))))


def test_input_context_falls_back_to_record_sharding(tmp_path):
    writers.write_records(str(tmp_path / "train-00000-of-00001"), _labeled(7))
    pattern = str(tmp_path / "train*")
    seen = [_located(_collect(readers.read_examples(
        pattern, "labeled", K, input_context=_context(p), block_size=3))) for p in range(2)]
    assert [i for _, i in seen[0]] == [0, 2, 4, 6] and [i for _, i in seen[1]] == [1, 3, 5]
    with pytest.raises(ValueError, match="at least one file per input pipeline"):
        readers.read_examples(pattern, "labeled", K, input_context=_context(0),
                              shard_policy="file")
    with pytest.raises(ValueError, match="shard_policy"):
        readers.shard_files(["a"], _context(0), "rows")


# --------------------------------------------------------------------------- bad input


def _write_raw(path, records):
    """Writes arbitrary byte strings as TFRecords (bypassing the schema)."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def _expect_error(pattern, index, message, **kwargs):
    ds = readers.read_examples(pattern, "labeled", K, **kwargs)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        _collect(ds)
    text = str(error.value)
    assert os.path.basename(pattern) in text and message in text
    assert _index_in_error(text) == index
    return text


@pytest.mark.parametrize("block_size", [64, 2])
def test_missing_required_key_names_file_and_index(tmp_path, block_size):
    records = _labeled(5)
    records[3] = schema.encode_unlabeled(_jpeg(0))
    path = tmp_path / "train-00000-of-00001"
    writers.write_records(str(path), records)
    _expect_error(str(path), 3, "missing required feature image/class/label",
                  block_size=block_size)


def test_label_out_of_range_names_file_and_index(tmp_path):
    path = tmp_path / "train-00000-of-00001"
    records = _labeled(4)
    records[2] = schema.encode_labeled(_jpeg(0), K + 3)  # stored K + 4
    writers.write_records(str(path), records)
    _expect_error(str(path), 2, f"label {K + 3} (1-based on disk: {K + 4}) is outside")


@pytest.mark.parametrize("block_size", [64, 2])
def test_undecodable_record_names_file_and_index(tmp_path, block_size):
    path = tmp_path / "train-00000-of-00001"
    records = _labeled(5)
    records[1] = b"\x08\x96\x01 this is not an Example"
    _write_raw(path, records)
    _expect_error(str(path), 1, "not a parseable tf.train.Example", block_size=block_size)


def test_key_stored_with_another_type_is_a_bad_record(tmp_path):
    path = tmp_path / "train-00000-of-00001"
    wrong = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"])),
        "image/class/label": tf.train.Feature(float_list=tf.train.FloatList(value=[1.0]))}))
    _write_raw(path, _labeled(2) + [wrong.SerializeToString()])
    _expect_error(str(path), 2, "not a parseable tf.train.Example")


def test_truncated_file_names_file_and_first_lost_index(tmp_path):
    path = tmp_path / "train-00000-of-00001"
    writers.write_records(str(path), _labeled(6))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    _expect_error(str(path), 5, "broken TFRecord framing")


def test_corrupted_framing_in_the_middle_is_reported(tmp_path):
    path = tmp_path / "train-00000-of-00001"
    records = _labeled(6)
    writers.write_records(str(path), records)
    data = bytearray(path.read_bytes())
    offset = sum(len(r) + 16 for r in records[:2]) + 20  # inside record 2's payload
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    _expect_error(str(path), 2, "broken TFRecord framing")


def test_undecodable_image_is_bad_only_when_decoding_is_requested(tmp_path):
    path = tmp_path / "train-00000-of-00001"
    records = _labeled(4)
    records[2] = schema.encode_labeled(b"\xff\xd8 not a jpeg", 1)
    writers.write_records(str(path), records)
    assert len(_collect(readers.read_examples(str(path), "labeled", K))) == 4
    _expect_error(str(path), 2, "image does not decode", decode_images=True)


def test_skip_corrupt_drops_and_counts_every_bad_record(tmp_path, caplog):
    mixed = _labeled(9)
    mixed[1] = b"garbage"  # undecodable
    mixed[4] = schema.encode_unlabeled(_jpeg(0))  # missing label
    mixed[5] = schema.encode_labeled(_jpeg(0), K)  # label out of range
    _write_raw(tmp_path / "train-00000-of-00002", mixed)
    writers.write_records(str(tmp_path / "train-00001-of-00002"), _labeled(5, start=9))
    truncated = tmp_path / "train-00001-of-00002"
    truncated.write_bytes(truncated.read_bytes()[:-3])  # loses record 4

    skipped = readers.SkippedRecords()
    out = _collect(readers.read_examples(str(tmp_path / "train*"), "labeled", K,
                                         block_size=4, skip_corrupt=True, skipped=skipped))
    assert sorted(_located(out)) == sorted(
        [("train-00000-of-00002", i) for i in (0, 2, 3, 6, 7, 8)]
        + [("train-00001-of-00002", i) for i in range(4)])
    assert skipped.count == 4
    warnings = [r.getMessage() for r in caplog.records if "Skipping bad record" in r.getMessage()]
    assert len(warnings) == 4 and any("train-00001-of-00002" in w for w in warnings)
    bad = sorted((os.path.basename(f), i) for f, i, _ in skipped.first)
    assert bad == [("train-00000-of-00002", 1), ("train-00000-of-00002", 4),
                   ("train-00000-of-00002", 5), ("train-00001-of-00002", 4)]
    with pytest.raises(ValueError, match="SkippedRecords"):
        readers.read_examples(str(tmp_path / "train*"), "labeled", K, skip_corrupt=True)


def test_record_sharding_reports_each_bad_record_once(tmp_path):
    records = _labeled(6)
    records[3] = b"garbage"
    _write_raw(tmp_path / "train-00000-of-00001", records)
    skipped = readers.SkippedRecords()
    kept = []
    for pipeline in range(2):
        kept += _located(_collect(readers.read_examples(
            str(tmp_path / "train*"), "labeled", K, input_context=_context(pipeline),
            skip_corrupt=True, skipped=skipped)))
    assert sorted(i for _, i in kept) == [0, 1, 2, 4, 5]
    assert skipped.count == 1 and skipped.first[0][1] == 3
