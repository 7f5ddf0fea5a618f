"""Shard names (§3.7), shard boundaries (§3.2) and atomic writing."""

import os

import numpy as np
import pytest
import tensorflow as tf

from nst.data import schema, writers


def _records(n, start=0):
    return [schema.encode_labeled(b"img", (start + i) % 10) for i in range(n)]


def _read(path):
    return [r.numpy() for r in tf.data.TFRecordDataset(path)]


def test_original_name_patterns():
    assert writers.shard_name("train", 3, 128) == "train-00003-of-00128"
    assert writers.shard_name("extra", 0, 128) == "extra-00000-of-00128"
    assert writers.prediction_name(17, 128, 2) == "train-info-00017-of-00128-00002"
    assert writers.info_name(17, 128, 2) == "info-00017-of-00128-00002.txt"
    assert writers.task_shard_name("train", 0, 17, 128) == "train-0-00017-of-00128"
    assert writers.filtered_path("/out", 1, 5, 64) == os.path.join(
        "/out", "data", "train-1-00005-of-00064")
    assert writers.filtered_path("gs://bucket/out", 0, 1, 2) == \
        "gs://bucket/out/data/train-0-00001-of-00002"


def test_shard_boundaries_follow_truncated_linspace():
    assert writers.shard_boundaries(10, 3) == [0, 3, 6, 10]
    assert writers.shard_boundaries(2, 4) == [0, 0, 1, 1, 2]
    svhn = writers.shard_boundaries(69257, 128)  # SVHN train split (§3.2)
    assert svhn == np.linspace(0, 69257, 129).astype(int).tolist()
    assert svhn[0] == 0 and svhn[-1] == 69257 and len(svhn) == 129
    with pytest.raises(ValueError):
        writers.shard_boundaries(10, 0)


def test_write_shards_splits_in_order_with_original_names(tmp_path):
    records = _records(10)
    paths = writers.write_shards(records, str(tmp_path), "dev", 3)
    assert [os.path.basename(p) for p in paths] == [
        "dev-00000-of-00003", "dev-00001-of-00003", "dev-00002-of-00003"]
    assert [len(_read(p)) for p in paths] == [3, 3, 4]
    assert sum((_read(p) for p in paths), []) == records
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)


def test_shard_writer_accepts_examples_and_creates_directories(tmp_path):
    path = str(tmp_path / "out" / "data" / writers.task_shard_name("train", 0, 0, 1))
    example = tf.train.Example.FromString(_records(1)[0])
    with writers.ShardWriter(path) as writer:
        writer.write(example)
        writer.write(_records(1, start=1)[0])
    assert writer.num_records == 2
    assert _read(path) == [example.SerializeToString(deterministic=True),
                           _records(1, start=1)[0]]


def test_temporary_file_is_hidden_and_in_the_same_directory(tmp_path):
    path = str(tmp_path / "train-00000-of-00001")
    with writers.ShardWriter(path) as writer:
        writer.write(_records(1)[0])
        names = os.listdir(tmp_path)
        assert not os.path.exists(path)
        assert len(names) == 1 and names[0].startswith(".train-00000-of-00001.tmp-")
    assert os.listdir(tmp_path) == ["train-00000-of-00001"]



def test_remove_temporaries_deletes_only_the_paths_own_leftovers(tmp_path):
    path = str(tmp_path / "extra-00000-of-00002")
    mine = [writers.temporary_path(path) for _ in range(2)]
    other = writers.temporary_path(str(tmp_path / "extra-00001-of-00002"))
    for f in mine + [other, path]:
        open(f, "wb").close()
    assert writers.remove_temporaries(path) == 2
    assert sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(other), "extra-00000-of-00002"])
    assert writers.remove_temporaries(path) == 0


def test_failure_inside_the_writer_leaves_no_final_and_no_temporary_file(tmp_path):
    path = str(tmp_path / "train-00000-of-00001")
    with pytest.raises(RuntimeError, match="boom"):
        with writers.ShardWriter(path) as writer:
            for i, record in enumerate(_records(5)):
                if i == 3:
                    raise RuntimeError("boom")
                writer.write(record)
    assert os.listdir(tmp_path) == []


def test_failed_write_does_not_clobber_an_existing_file(tmp_path):
    path = str(tmp_path / "train-info-00000-of-00001-00000")
    old = _records(2)
    writers.write_records(path, old)

    def failing():
        yield _records(1, start=5)[0]
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        writers.write_records(path, failing())
    assert _read(path) == old
    assert os.listdir(tmp_path) == ["train-info-00000-of-00001-00000"]
    new = _records(3, start=7)
    assert writers.write_records(path, new) == 3  # a successful write replaces it
    assert _read(path) == new


def test_overwrite_false_refuses_an_existing_file(tmp_path):
    path = str(tmp_path / "extra-00000-of-00001")
    writers.write_records(path, _records(1))
    with pytest.raises(FileExistsError):
        writers.write_records(path, _records(2), overwrite=False)
    assert len(_read(path)) == 1 and len(os.listdir(tmp_path)) == 1


def test_writer_must_be_open(tmp_path):
    writer = writers.ShardWriter(str(tmp_path / "x"))
    with pytest.raises(RuntimeError):
        writer.write(b"")
    writer.close()  # closing an unopened writer is a no-op
    assert os.listdir(tmp_path) == []
