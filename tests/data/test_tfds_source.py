"""TFDS bridge, offline with tfds.testing.mock_data: features, records, direct reading."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from nst.data import readers, sources, writers
from nst.data.sources import tfds_source

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 12


@pytest.fixture
def mocked():
    with tfds.testing.mock_data(num_examples=N):
        yield


def _read(pattern, record_format="labeled", num_classes=10):
    return list(readers.read_examples(pattern, record_format, num_classes)
                .as_numpy_iterator())


@pytest.mark.parametrize("name,size", [("mnist", 28), ("cifar10", 32)])
def test_labeled_records_round_trip(mocked, tmp_path, name, size):
    out = str(tmp_path)
    result = tfds_source.tfds_to_records(name, "train", out, num_shards=3)
    assert result["num_records"] == N and result["num_classes"] == 10
    assert result["pattern"] == "train-*" and sum(result["per_class"]) == N
    assert [os.path.basename(f) for f in result["files"]] == [
        writers.shard_name("train", i, 3) for i in range(3)]
    records = _read(os.path.join(out, "train-*"))
    assert len(records) == N
    # Same order and content as TFDS itself (decoded: the grayscale mnist becomes RGB).
    reference = list(tfds.load(name, split="train", read_config=tfds.ReadConfig(
        add_tfds_id=True)).as_numpy_iterator())
    assert [r["id"].decode() for r in records] == [e["tfds_id"].decode() for e in reference]
    for record, example in zip(records, reference):
        assert record["label"] == example["label"] and 0 <= record["label"] < 10
        decoded = tf.io.decode_jpeg(record["image"]).numpy()
        assert decoded.shape == (size, size, 3)
        # Exactly the JPEG q100 bytes of the RGB image (mock images are noise, on which
        # JPEG's 4:2:0 chroma subsampling is far from lossless, so compare bytes).
        rgb = np.ascontiguousarray(np.broadcast_to(example["image"], (size, size, 3)))
        assert record["image"] == sources.encode_jpeg(rgb)
        if name == "mnist":
            np.testing.assert_array_equal(decoded[..., 0], decoded[..., 2])
    assert np.bincount([r["label"] for r in records], minlength=10).tolist() == \
        result["per_class"]


def test_direct_source_matches_records(mocked, tmp_path):
    out = str(tmp_path)
    tfds_source.tfds_to_records("cifar10", "test", out, id_key="id")
    direct = tfds_source.tfds_source("cifar10", "test", id_key="id")
    assert direct.element_spec == {
        "image": tf.TensorSpec([], tf.string), "label": tf.TensorSpec([], tf.int32),
        "id": tf.TensorSpec([], tf.string)}
    direct = list(direct.as_numpy_iterator())
    records = _read(os.path.join(out, "test-*"))
    assert len(direct) == len(records) == N
    for d, r in zip(direct, records):
        assert (d["image"], d["label"], d["id"]) == (r["image"], r["label"], r["id"])
    reference = list(tfds.load("cifar10", split="test").as_numpy_iterator())
    assert [d["id"] for d in direct] == [e["id"] for e in reference]  # cifar10's own ids


def test_index_ids_slicing_and_resize(mocked):
    examples = list(tfds_source.tfds_source("mnist", "train[:50%]", id_key=None,
                                            image_size=32).as_numpy_iterator())
    assert [e["id"].decode() for e in examples] == [
        f"mnist/train[:50%]/{i}" for i in range(len(examples))]
    assert tf.io.decode_jpeg(examples[0]["image"]).shape == (32, 32, 3)


def test_unlabeled_records(mocked, tmp_path):
    out = str(tmp_path / "unlabeled")
    result = tfds_source.tfds_to_records("mnist", "test", out, kind="unlabeled",
                                         image_size=32, dummy_pseudo_labels=True)
    assert result["pattern"] == "extra-*" and result["record_format"] == "unlabeled"
    records = list(readers.read_examples(readers.list_unlabeled_files(out), "unlabeled", 10)
                   .as_numpy_iterator())
    assert len(records) == N
    labels = [int(e["label"]) for e in tfds.load("mnist", split="test").as_numpy_iterator()]
    assert [int(r["true_label"]) for r in records] == labels
    assert not any(r["has_pseudo_label"] for r in records)
    assert tf.io.decode_jpeg(records[0]["image"]).shape == (32, 32, 3)
    # Without a label feature: raw images only.
    raw = tfds_source.tfds_to_records("mnist", "test", str(tmp_path / "raw"), kind="unlabeled",
                                      label_key=None)
    assert raw["num_classes"] is None and raw["per_class"] is None
    records = _read(os.path.join(tmp_path, "raw", "extra-*"), "unlabeled")
    assert [int(r["true_label"]) for r in records] == [-1] * N


def test_existing_shards_need_overwrite(mocked, tmp_path):
    out = str(tmp_path)
    tfds_source.tfds_to_records("mnist", "train", out, num_shards=3)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tfds_source.tfds_to_records("mnist", "train", out, num_shards=2)
    tfds_source.tfds_to_records("mnist", "train", out, num_shards=2, overwrite=True)
    assert sorted(os.listdir(out)) == [writers.shard_name("train", i, 2) for i in range(2)]


@pytest.mark.parametrize("kwargs,message", [
    ({"image_key": "picture"}, "image_key='picture' is not an Image"),
    ({"label_key": "image"}, "label_key='image' is not a ClassLabel"),
    ({"id_key": "label"}, "id_key='label' is not a string"),
])
def test_unusable_features_are_named(mocked, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        tfds_source.tfds_to_records("mnist", "train", str(tmp_path), **kwargs)
    assert "'mnist'" in str(error.value) and "ClassLabel(" in str(error.value)  # features
    assert os.listdir(tmp_path) == []


def test_bad_arguments(mocked, tmp_path):
    with pytest.raises(ValueError, match="kind"):
        tfds_source.tfds_to_records("mnist", "train", str(tmp_path), kind="pseudo")
    with pytest.raises(ValueError, match="label_key"):
        tfds_source.tfds_to_records("mnist", "train", str(tmp_path), label_key=None)
    with pytest.raises(ValueError, match="num_shards"):
        tfds_source.tfds_to_records("mnist", "train", str(tmp_path), num_shards=0)


def test_default_prefix():
    assert tfds_source.default_prefix("train[:90%]", "labeled") == "train"
    assert tfds_source.default_prefix("validation", "labeled") == "validation"
    assert tfds_source.default_prefix("train", "unlabeled") == "extra"


def test_cli(tmp_path):
    out = str(tmp_path / "cli")
    script = os.path.join(REPO, "tools", "tfds_to_records.py")
    code = (
        "import runpy, sys\n"
        "import tensorflow_datasets as tfds\n"
        f"sys.argv = [{script!r}, '--dataset=cifar10', '--split=test', "
        f"'--output_dir={out}', '--num_shards=2', '--prefix=dev']\n"
        f"with tfds.testing.mock_data(num_examples={N}):\n"
        f"    runpy.run_path({script!r}, run_name='__main__')\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "num_records": N, "num_classes": 10, "pattern": "dev-*"}
    assert sorted(os.listdir(out)) == ["dev-00000-of-00002", "dev-00001-of-00002"]
