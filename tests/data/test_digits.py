"""The offline digits demo dataset: splits, records, manifest, re-runs, bad input, CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from nst.data import readers, sources, writers
from nst.data.sources import digits
from nst.testing import file_tree

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_SHARDS = {"train": 2, "dev": 1, "test": 2, "extra": 3}


@pytest.fixture(scope="module")
def images_and_labels():
    return digits.load_digits_images()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("digits"))
    return out, digits.make_digits_dataset(out, num_shards=SMALL_SHARDS)


def _read(pattern, record_format):
    dataset = readers.read_examples(pattern, record_format, digits.NUM_CLASSES)
    return list(dataset.as_numpy_iterator())


def test_convert_images_scales_resizes_and_replicates():
    raw = np.zeros((2, 8, 8))
    raw[0] = 16.0                        # full ink everywhere -> 255
    raw[1, :, 4:] = 8.0                  # half ink on the right half
    images = digits.convert_images(raw)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert (images[0] == 255).all()
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # gray -> RGB
    assert (images[1, :, :14] == 0).all() and (images[1, :, 18:] == 128).all()
    assert 0 < images[1, 0, 16, 0] < 128  # bilinear: a smooth edge, not a 4x4 block


def test_layout_names_and_counts(made):
    out, info = made
    names = sorted(os.listdir(out))
    assert names == ["dataset_info.json", "dev-00000-of-00001", "test-00000-of-00002",
                     "test-00001-of-00002", "train-00000-of-00002", "train-00001-of-00002",
                     "unlabeled"]
    assert sorted(os.listdir(os.path.join(out, "unlabeled"))) == [
        writers.shard_name("extra", i, 3) for i in range(3)]
    with open(os.path.join(out, "dataset_info.json")) as f:
        assert json.load(f) == info
    splits = info["splits"]
    assert info["complete"] and info["num_classes"] == 10 and info["image_size"] == 32
    assert info["normalization"] == "svhn"
    assert splits["train"]["per_class"] == [10] * 10 and splits["train"]["num_records"] == 100
    assert sum(s["num_records"] for s in splits.values()) == 1797
    raw_counts = np.bincount(digits.load_raw_digits()[1])
    total_per_class = np.sum([s["per_class"] for s in splits.values()], axis=0)
    np.testing.assert_array_equal(total_per_class, raw_counts)
    # Stratified: each class holds out round(fraction * n_c), half up.
    np.testing.assert_array_equal(splits["test"]["per_class"],
                                  (0.3 * raw_counts + 0.5).astype(int))
    np.testing.assert_array_equal(splits["dev"]["per_class"],
                                  (0.1 * raw_counts + 0.5).astype(int))
    # Shards follow the original's linspace boundaries.
    for entry in info["files"]:
        count = sum(1 for _ in tf.data.TFRecordDataset(os.path.join(out, entry["file"])))
        assert count == entry["num_records"]
    test_bounds = writers.shard_boundaries(splits["test"]["num_records"], 2)
    assert [e["num_records"] for e in info["files"] if e["file"].startswith("test")] == \
        np.diff(test_bounds).tolist()


def test_records_round_trip(made, images_and_labels):
    out, info = made
    images, labels = images_and_labels
    seen = {}
    for split in ("train", "dev", "test"):
        records = _read(os.path.join(out, f"{split}-*"), "labeled")
        assert len(records) == info["splits"][split]["num_records"]
        for r in records:
            index = int(r["id"].decode().removeprefix("digits-"))
            assert r["label"] == labels[index]
            seen.setdefault(index, split)
        counts = np.bincount([r["label"] for r in records], minlength=10).tolist()
        assert counts == info["splits"][split]["per_class"]
    extra = _read(os.path.join(out, "unlabeled", "extra-*"), "unlabeled")
    assert len(extra) == info["splits"]["extra"]["num_records"]
    for r in extra:
        index = int(r["id"].decode().removeprefix("digits-"))
        assert r["true_label"] == labels[index]
        assert not r["has_pseudo_label"] and r["label"] == -1
        assert index not in seen  # splits are disjoint ...
        seen[index] = "extra"
    assert sorted(seen) == list(range(1797))  # ... and cover every image once
    # Pixels: exactly the JPEG q100 bytes of the converted image; JPEG is lossy, so the
    # decoded pixels are only close to it.
    for r in extra[:20]:
        index = int(r["id"].decode().removeprefix("digits-"))
        assert r["image"] == sources.encode_jpeg(images[index])
        decoded = tf.io.decode_jpeg(r["image"]).numpy().astype(int)
        assert decoded.shape == (32, 32, 3)
        assert np.abs(decoded - images[index]).max() <= 32
        assert np.abs(decoded - images[index]).mean() < 4


def test_deterministic_and_seed_dependent(made, tmp_path):
    out, _ = made
    again = str(tmp_path / "again")
    digits.make_digits_dataset(again, num_shards=SMALL_SHARDS)
    assert file_tree(out) == file_tree(again)
    other = digits.split_indices(digits.load_raw_digits()[1], 10, 0.3, 0.1, seed=1)
    same = digits.split_indices(digits.load_raw_digits()[1], 10, 0.3, 0.1, seed=0)
    assert not np.array_equal(other["train"], same["train"])


def test_rerun_skips_and_conflicts(tmp_path, monkeypatch):
    out = str(tmp_path / "d")
    info = digits.make_digits_dataset(out, num_shards=1)
    before = file_tree(out)
    mtimes = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in before}

    def no_writes(*args, **kwargs):
        raise AssertionError("a complete dataset was rewritten")

    with monkeypatch.context() as m:
        m.setattr(writers, "write_records", no_writes)
        assert digits.make_digits_dataset(out, num_shards=1) == info
    assert {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in before} == mtimes

    with pytest.raises(ValueError, match="labels_per_class: 10 -> 5"):
        digits.make_digits_dataset(out, labels_per_class=5, num_shards=1)
    assert file_tree(out) == before  # the refused run changed nothing

    new = digits.make_digits_dataset(out, labels_per_class=5, num_shards=2, overwrite=True)
    assert new["splits"]["train"]["per_class"] == [5] * 10
    names = sorted(os.listdir(out))
    assert "train-00000-of-00001" not in names  # stale shards of the old layout are gone
    assert "train-00001-of-00002" in names


def test_interrupted_run_is_redone_and_lost_file_rewritten(tmp_path):
    out = str(tmp_path / "d")
    info = digits.make_digits_dataset(out, num_shards=1)
    os.remove(os.path.join(out, "unlabeled", "extra-00000-of-00001"))
    assert digits.make_digits_dataset(out, num_shards=1) == info
    assert os.path.exists(os.path.join(out, "unlabeled", "extra-00000-of-00001"))
    # An interrupted run leaves `complete: false`; the same arguments simply redo it.
    with open(os.path.join(out, "dataset_info.json"), "w") as f:
        json.dump({"args": info["args"], "complete": False}, f)
    assert digits.make_digits_dataset(out, num_shards=1) == info


def test_foreign_shards_are_not_touched(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "train-00000-of-01024").write_bytes(b"someone else's data")
    with pytest.raises(ValueError, match="no dataset_info.json"):
        digits.make_digits_dataset(str(out))
    assert (out / "train-00000-of-01024").read_bytes() == b"someone else's data"


@pytest.mark.parametrize("kwargs,argument", [
    ({"labels_per_class": 120}, "labels_per_class"),
    ({"labels_per_class": 0}, "labels_per_class"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"test_fraction": 0.0}, "test_fraction"),
    ({"dev_fraction": -0.1}, "dev_fraction"),
    ({"test_fraction": 0.6, "dev_fraction": 0.4}, "test_fraction \\+ dev_fraction"),
    ({"num_shards": {"train": 0}}, "num_shards"),
    ({"num_shards": {"validation": 2}}, "num_shards"),
])
def test_bad_arguments_name_the_argument(tmp_path, kwargs, argument):
    out = tmp_path / "d"
    with pytest.raises(ValueError, match=argument):
        digits.make_digits_dataset(str(out), **kwargs)
    assert not out.exists()  # validated before anything is written


def test_cli(tmp_path):
    out = str(tmp_path / "cli")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "make_digits.py"), f"--output_dir={out}",
         "--labels_per_class=3", "--num_shards=1", "--seed=7"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["train"] == 30 and sum(counts.values()) == 1797
    with open(os.path.join(out, "dataset_info.json")) as f:
        info = json.load(f)
    assert info["args"]["seed"] == 7 and info["args"]["labels_per_class"] == 3
