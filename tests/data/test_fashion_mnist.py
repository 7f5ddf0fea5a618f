"""Fashion-MNIST: the IDX reader, its errors, the exporter's splits, records and manifest."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nst.data import readers, schema
from nst.data.sources import fashion_mnist, idx
from nst.models import normalization

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARDS = {"train": 2, "dev": 1, "test": 2, "extra": 3}
DEV = 5  # dev images per class in these small sets


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_round_trip(tmp_path, gzipped, fashion_idx):
    written = fashion_idx(str(tmp_path), train_per_class=3, test_per_class=2,
                                gzipped=gzipped)
    loaded = fashion_mnist.load_idx(str(tmp_path))
    for split in ("train", "test"):
        np.testing.assert_array_equal(loaded[split][0], written[split][0])
        np.testing.assert_array_equal(loaded[split][1], written[split][1])
        assert loaded[split][0].dtype == np.uint8 and loaded[split][1].dtype == np.int64


def test_idx_header_by_hand():
    data = idx.encode(np.arange(6, dtype=np.uint8).reshape(1, 2, 3))
    # magic 0x00000803, then 1, 2, 3 as big-endian uint32, then the 6 bytes.
    assert data == bytes.fromhex("00000803" "00000001" "00000002" "00000003"
                                 "000102030405")
    np.testing.assert_array_equal(idx.parse(data, "x", 3), np.arange(6).reshape(1, 2, 3))


def _write(path, data, gzipped=False):
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gzipped else data)
    return str(path)


@pytest.mark.parametrize("data,reader,message", [
    (b"\x00\x00\x08", lambda p: idx.read_images(p), "too short for an IDX header"),
    (b"\x01\x02\x08\x03" + b"\x00" * 12, lambda p: idx.read_images(p), "not an IDX file"),
    (b"\x00\x00\x0d\x03" + b"\x00" * 12, lambda p: idx.read_images(p), "element type 0x0d"),
    (idx.encode(np.zeros(4, np.uint8)), lambda p: idx.read_images(p), "1 dimensions, "
                                                                       "expected 3"),
    (idx.encode(np.zeros((2, 28, 27), np.uint8)), lambda p: idx.read_images(p, 28, 28),
     "dimension 2 is 27, expected 28"),
    (idx.encode(np.zeros((3, 28, 28), np.uint8))[:-5], lambda p: idx.read_images(p, 28, 28),
     "truncated: 2347 data bytes"),
    (idx.encode(np.zeros((3, 28, 28), np.uint8)) + b"\x00", lambda p: idx.read_images(p),
     "longer than its header says"),
    (b"\x00\x00\x08\x03\x00\x00", lambda p: idx.read_images(p), "truncated IDX header"),
    (idx.encode(np.array([0, 3, 10], np.uint8)), lambda p: idx.read_labels(p, 10),
     "label 10 at index 2 is outside"),
])
def test_idx_errors_name_the_file(tmp_path, data, reader, message):
    path = _write(tmp_path / "bad-idx", data)
    with pytest.raises(ValueError, match=message) as e:
        reader(path)
    assert path in str(e.value)


def test_damaged_gzip_and_not_gzip(tmp_path):
    full = gzip.compress(idx.encode(np.zeros((5, 28, 28), np.uint8)))
    path = _write(tmp_path / "cut.gz", full[: len(full) // 2])
    with pytest.raises(ValueError, match="damaged or truncated gzip") as e:
        idx.read_images(path)
    assert path in str(e.value)
    path = _write(tmp_path / "plain.gz", idx.encode(np.zeros((1, 28, 28), np.uint8)))
    with pytest.raises(ValueError, match="named .gz but is not a gzip file"):
        idx.read_images(path)


def test_image_and_label_counts_must_agree(tmp_path):
    images = _write(tmp_path / "i", idx.encode(np.zeros((3, 28, 28), np.uint8)))
    labels = _write(tmp_path / "l", idx.encode(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match="holds 3 images but .* 4 labels"):
        idx.read_pair(images, labels, 28, 28, 10)


def test_missing_source_names_install_command_and_flag(tmp_path, fashion_idx):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        fashion_mnist.load_idx(str(tmp_path / "nowhere"))
    assert "--source_dir" in str(e.value) and "does not exist" in str(e.value)
    fashion_idx(str(tmp_path / "partial"), 1, 1)
    os.remove(tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz .*apt-get"):
        fashion_mnist.load_idx(str(tmp_path / "partial"))


def test_real_files_when_installed():
    """The Debian package's files: counts, classes and the normalisation constants."""
    if not os.path.isdir(fashion_mnist.DEFAULT_SOURCE_DIR):
        pytest.skip("dataset-fashion-mnist is not installed")
    raw = fashion_mnist.load_idx()
    assert raw["train"][0].shape == (60000, 28, 28) and raw["test"][0].shape == (10000, 28, 28)
    assert np.bincount(raw["train"][1]).tolist() == [6000] * 10
    padded = fashion_mnist.convert_images(raw["train"][0][..., :, :])[..., 0] / 255.0
    mean, std = normalization.normalization_constants("fashion_mnist")
    assert abs(padded.mean() * 255 - mean[0]) < 0.01 and abs(padded.std() * 255 - std[0]) < 0.01


# --------------------------------------------------------------------------- exporter


def test_convert_pads_and_replicates():
    raw = np.full((1, 28, 28), 7, np.uint8)
    out = fashion_mnist.convert_images(raw)
    assert out.shape == (1, 32, 32, 3)
    assert (out[0, 2:30, 2:30] == 7).all()
    assert (out[0, :2] == 0).all() and (out[0, 30:] == 0).all()
    assert (out[0, :, :2] == 0).all() and (out[0, :, 30:] == 0).all()


@pytest.fixture(scope="module")
def source(tmp_path_factory, fashion_idx):
    directory = str(tmp_path_factory.mktemp("fashion_src"))
    return directory, fashion_idx(directory, train_per_class=20, test_per_class=3)


def _make(fake, out, **kwargs):
    kwargs = {"labels_per_class": 4, "dev_per_class": DEV, "num_shards": SHARDS, **kwargs}
    return fashion_mnist.make_fashion_mnist_dataset(out, source_dir=fake[0], **kwargs)


def _read(pattern, record_format):
    return list(readers.read_examples(pattern, record_format, 10).as_numpy_iterator())


def test_splits_counts_disjoint_and_complete(source, tmp_path):
    out = str(tmp_path / "fm")
    info = _make(source, out)
    counts = {s: v["num_records"] for s, v in info["splits"].items()}
    assert counts == {"train": 40, "dev": 50, "extra": 110, "test": 30}
    assert info["splits"]["train"]["per_class"] == [4] * 10
    assert info["splits"]["dev"]["per_class"] == [DEV] * 10
    records = {s: _read(os.path.join(out, pattern), fmt) for s, pattern, fmt in (
        ("train", "train-*", schema.LABELED), ("dev", "dev-*", schema.LABELED),
        ("test", "test-*", schema.LABELED),
        ("extra", "unlabeled/extra-*", schema.UNLABELED))}
    ids = {s: [r["id"].decode() for r in rs] for s, rs in records.items()}
    train_side = ids["train"] + ids["dev"] + ids["extra"]
    assert len(set(train_side)) == len(train_side) == 200  # disjoint, every image once
    assert set(train_side) == {f"fashion_mnist-train-{i}" for i in range(200)}
    assert ids["test"] == [f"fashion_mnist-test-{i}" for i in range(30)]  # official order
    images, labels = source[1]["train"]
    import tensorflow as tf
    for split in ("train", "extra"):
        for r in records[split][:5]:
            i = int(r["id"].decode().rsplit("-", 1)[1])
            decoded = tf.io.decode_image(r["image"], channels=3).numpy()
            np.testing.assert_array_equal(decoded, fashion_mnist.convert_images(
                images[i:i + 1])[0])  # PNG: lossless
            label = r["true_label"] if split == "extra" else r["label"]
            assert label == labels[i]
    assert os.path.isdir(os.path.join(out, "unlabeled"))


def test_deterministic_per_seed_dev_fixed(source, tmp_path):
    def files(directory):
        return {name: open(os.path.join(root, name), "rb").read()
                for root, _, names in os.walk(directory) for name in names
                if name != "dataset_info.json"}
    a, b, c = (str(tmp_path / n) for n in "abc")
    _make(source, a, seed=3)
    _make(source, b, seed=3)
    _make(source, c, seed=4)
    assert files(a) == files(b)
    dev = lambda d: sorted(r["id"] for r in _read(os.path.join(d, "dev-*"), schema.LABELED))
    train = lambda d: sorted(r["id"] for r in _read(os.path.join(d, "train-*"),
                                                    schema.LABELED))
    assert dev(a) == dev(c)          # the dev split does not move with the seed
    assert train(a) != train(c)      # the labeled draw does


def test_rerun_skips_and_other_args_refuse(source, tmp_path):
    out = str(tmp_path / "fm")
    first = _make(source, out)
    mtime = os.path.getmtime(os.path.join(out, "train-00000-of-00002"))
    assert _make(source, out) == first
    assert os.path.getmtime(os.path.join(out, "train-00000-of-00002")) == mtime
    with pytest.raises(ValueError, match="labels_per_class: 4 -> 5"):
        _make(source, out, labels_per_class=5)
    info = _make(source, out, labels_per_class=5, overwrite=True)
    assert info["splits"]["train"]["num_records"] == 50


def test_manifest_normalisation(source, tmp_path):
    info = _make(source, str(tmp_path / "fm"))
    images = fashion_mnist.convert_images(source[1]["train"][0])[..., 0] / 255.0
    assert info["normalization"] == "fashion_mnist"
    assert info["pixel_mean"] == [round(float(images.mean()), 6)] * 3
    assert info["pixel_std"] == [round(float(images.std()), 6)] * 3


@pytest.mark.parametrize("kwargs,message", [
    ({"labels_per_class": 16}, "labels_per_class=16 is too large: class 0 has 20 train "
                               "images, 5 of them go to dev, leaving 15"),
    ({"labels_per_class": 0}, "labels_per_class must be an int >= 1"),
    ({"dev_per_class": 21}, "dev_per_class=21 is too large"),
    ({"source": "http"}, "source must be one of"),
])
def test_bad_arguments(source, tmp_path, kwargs, message):
    out = tmp_path / "fm"
    with pytest.raises(ValueError, match=message):
        _make(source, str(out), **kwargs)
    assert not out.exists()  # checked before anything is written


def test_tfds_source_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=60):
        raw = fashion_mnist.load_tfds()
        info = fashion_mnist.make_fashion_mnist_dataset(
            str(tmp_path / "fm"), labels_per_class=1, dev_per_class=1, source="tfds",
            num_shards=1)
    assert raw["train"][0].shape == (60, 28, 28) and raw["train"][0].dtype == np.uint8
    assert sum(s["num_records"] for k, s in info["splits"].items() if k != "test") == 60


def test_cli(source, tmp_path):
    out = str(tmp_path / "fm")
    args = [sys.executable, os.path.join(REPO, "tools", "make_fashion_mnist.py"),
            f"--output_dir={out}", f"--source_dir={source[0]}", "--labels_per_class=2",
            f"--dev_per_class={DEV}", "--num_shards=1"]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "train": 20, "dev": 50, "extra": 130, "test": 30}
    missing = subprocess.run(args[:2] + [f"--output_dir={out}2",
                                         f"--source_dir={tmp_path / 'none'}"],
                             capture_output=True, text=True)
    assert missing.returncode != 0
    assert "apt-get install dataset-fashion-mnist" in missing.stderr
    assert "Traceback" not in missing.stderr
