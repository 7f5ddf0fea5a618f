"""proc_svhn on small fake .mat files: splits, names, labels, pixels, no network, CLI."""

import io
import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import scipy.io
import tensorflow as tf

from nst.data import readers, schema, writers
from nst.data.sources import svhn

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = {"train": 50, "test": 30, "extra": 40}
DEV = 10
SHARDS = {"train": 4, "dev": 2, "test": 3, "extra": 4}
SOURCE_SPLITS = ("train", "test", "extra")


def _fake_split(split, n):
    """X uint8 [32, 32, 3, n] with smooth, JPEG-friendly content; y [n, 1] in 1..10."""
    rng = np.random.RandomState(SOURCE_SPLITS.index(split))
    yy, xx = np.mgrid[0:32, 0:32]
    base = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1)  # [32, 32, 3], 0..124
    shift = rng.randint(0, 100, size=n)  # per image, keeps every value <= 224
    images = (base[..., None] + shift).astype(np.uint8)
    labels = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # includes 10
    return images, labels


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("raw")
    for split, n in SIZES.items():
        images, labels = _fake_split(split, n)
        scipy.io.savemat(str(directory / svhn.mat_name(split)), {"X": images, "y": labels})
    return str(directory)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    calls = []

    def refuse(url, *args, **kwargs):
        calls.append(url)
        raise AssertionError(f"network access attempted: {url}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)
    return calls


def _proc(raw_dir, out, **kwargs):
    kwargs.setdefault("dev_size", DEV)
    kwargs.setdefault("num_shards", SHARDS)
    return svhn.proc_svhn(raw_dir, str(out), **kwargs)


@pytest.fixture(scope="module")
def processed(raw_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("proc")
    return str(out), svhn.proc_svhn(raw_dir, str(out), dev_size=DEV, num_shards=SHARDS,
                                    download_missing=False)


def _examples(path):
    """Raw tf.train.Example dicts of one file, in order."""
    out = []
    for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
        example = tf.train.Example.FromString(serialized)
        out.append(example.features.feature)
    return out


def _split_examples(directory, prefix, num_shards):
    examples, counts = [], []
    for shard in range(num_shards):
        shard_examples = _examples(os.path.join(directory, writers.shard_name(
            prefix, shard, num_shards)))
        counts.append(len(shard_examples))
        examples += shard_examples
    return examples, counts


def _ids(examples):
    return [e[schema.ID_KEY].bytes_list.value[0].decode() for e in examples]


def test_original_constants_and_plan():
    assert svhn.NUM_SHARDS == {"train": 128, "dev": 64, "test": 64, "extra": 128}
    assert svhn.DEV_SIZE == 4000
    plan = svhn.split_indices(73257, 26032, 531131)
    assert {k: len(v[1]) for k, v in plan.items()} == {
        "train": 69257, "dev": 4000, "test": 26032, "extra": 531131}
    # The original: np.random.seed(0); shuffle(train indices); shuffle(extra indices).
    np.random.seed(0)
    train_perm = np.arange(73257)
    np.random.shuffle(train_perm)
    extra_perm = np.arange(531131)
    np.random.shuffle(extra_perm)
    np.testing.assert_array_equal(plan["dev"][1], train_perm[:4000])
    np.testing.assert_array_equal(plan["train"][1], train_perm[4000:])
    np.testing.assert_array_equal(plan["extra"][1], extra_perm)
    full = svhn.split_indices(73257, 26032, 531131, full_train_data=True)
    np.testing.assert_array_equal(full["train"][1], train_perm)
    assert full["dev"][0] == full["test"][0] == "test"
    np.testing.assert_array_equal(full["dev"][1], np.arange(26032))


def test_names_counts_and_shard_boundaries(processed, no_network):
    out, info = processed
    assert sorted(os.listdir(out)) == sorted(
        ["dataset_info.json", "unlabeled"]
        + [writers.shard_name(s, i, SHARDS[s]) for s in ("train", "dev", "test")
           for i in range(SHARDS[s])])
    assert sorted(os.listdir(os.path.join(out, "unlabeled"))) == [
        writers.shard_name("extra", i, 4) for i in range(4)]
    expected = {"train": SIZES["train"] - DEV, "dev": DEV, "test": SIZES["test"],
                "extra": SIZES["extra"]}
    for split, n in expected.items():
        directory = os.path.join(out, "unlabeled") if split == "extra" else out
        _, counts = _split_examples(directory, split, SHARDS[split])
        assert counts == np.diff(writers.shard_boundaries(n, SHARDS[split])).tolist()
        assert info["splits"][split]["num_records"] == n
    assert not no_network


def test_dev_train_split_labels_and_order(processed, raw_dir):
    out, info = processed
    perm = np.random.RandomState(0).permutation(SIZES["train"])
    train, _ = _split_examples(out, "train", SHARDS["train"])
    dev, _ = _split_examples(out, "dev", SHARDS["dev"])
    test, _ = _split_examples(out, "test", SHARDS["test"])
    assert _ids(dev) == [f"svhn-train-{i}" for i in perm[:DEV]]
    assert _ids(train) == [f"svhn-train-{i}" for i in perm[DEV:]]
    assert not set(_ids(dev)) & set(_ids(train))
    assert _ids(test) == [f"svhn-test-{i}" for i in range(SIZES["test"])]
    for source, examples in (("train", train), ("train", dev), ("test", test)):
        _, y = _fake_split(source, SIZES[source])
        for e, image_id in zip(examples, _ids(examples)):
            raw_label = int(y[int(image_id.rsplit("-", 1)[1]), 0])  # 1..10, 10 = digit 0
            stored = e[schema.CLASS_LABEL_KEY].int64_list.value[0]
            assert stored == raw_label % 10 + 1  # 10 -> 0 -> stored 1
            assert set(e.keys()) == {schema.IMAGE_KEY, schema.CLASS_LABEL_KEY, schema.ID_KEY}
    # The parsed view: 0-based digits.
    parsed = list(readers.read_examples(os.path.join(out, "test-*"), "svhn", 10)
                  .as_numpy_iterator())
    _, y = _fake_split("test", SIZES["test"])
    assert [int(r["label"]) for r in parsed] == (y[:, 0] % 10).tolist()
    assert info["splits"]["test"]["per_class"] == [3] * 10


def test_extra_is_shuffled_unlabeled_with_dummy_fields(processed):
    out, _ = processed
    rng = np.random.RandomState(0)
    rng.permutation(SIZES["train"])
    extra_perm = rng.permutation(SIZES["extra"])
    extra, _ = _split_examples(os.path.join(out, "unlabeled"), "extra", SHARDS["extra"])
    assert _ids(extra) == [f"svhn-extra-{i}" for i in extra_perm]
    _, y = _fake_split("extra", SIZES["extra"])
    for e, i in zip(extra, extra_perm):
        assert list(e[schema.PROBABILITIES_KEY].float_list.value) == [0.0] * 10
        assert list(e[schema.LABEL_KEY].int64_list.value) == [0]
        assert list(e[schema.PROB_KEY].float_list.value) == [0.0]
        assert e[schema.CLASS_LABEL_KEY].int64_list.value[0] == y[i, 0] % 10 + 1
    parsed = list(readers.read_examples(os.path.join(out, "unlabeled", "extra*"),
                                        "unlabeled", 10).as_numpy_iterator())
    assert len(parsed) == SIZES["extra"]
    assert not any(r["has_pseudo_label"] for r in parsed)


def test_images_are_jpeg_q100_of_the_originals(processed):
    out, _ = processed
    images, _ = _fake_split("train", SIZES["train"])
    dev, _ = _split_examples(out, "dev", SHARDS["dev"])
    for e, image_id in zip(dev, _ids(dev)):
        original = images[..., int(image_id.rsplit("-", 1)[1])]  # [32, 32, 3]
        encoded = e[schema.IMAGE_KEY].bytes_list.value[0]
        # Byte-identical to re-encoding the original at quality 100 ...
        assert encoded == tf.io.encode_jpeg(original, format="rgb", quality=100).numpy()
        # ... and, JPEG being lossy, close to it after decoding.
        decoded = tf.io.decode_jpeg(encoded).numpy().astype(int)
        assert np.abs(decoded - original).mean() < 3


def test_deterministic(processed, raw_dir, tmp_path):
    out, info = processed
    again = tmp_path / "again"
    assert _proc(raw_dir, again) == info
    for entry in info["files"]:
        with open(os.path.join(out, entry["file"]), "rb") as a, \
                open(os.path.join(again, entry["file"]), "rb") as b:
            assert a.read() == b.read()


def test_rerun_skips_without_loading(processed, raw_dir, monkeypatch):
    out, info = processed

    def no_loading(path):
        raise AssertionError("a complete output was redone")

    monkeypatch.setattr(svhn, "load_mat", no_loading)
    assert _proc(raw_dir, out, download_missing=False) == info


def test_full_train_data(raw_dir, tmp_path):
    out = tmp_path / "full"
    info = _proc(raw_dir, out, full_train_data=True)
    names = sorted(os.listdir(out))
    assert names == sorted(
        ["dataset_info.json", "unlabeled"]
        + [writers.shard_name(f"{s}_full", i, SHARDS[s]) for s in ("train", "dev", "test")
           for i in range(SHARDS[s])])
    assert sorted(os.listdir(out / "unlabeled")) == [
        writers.shard_name("extra_full", i, 4) for i in range(4)]
    train, _ = _split_examples(str(out), "train_full", SHARDS["train"])
    assert _ids(train) == [f"svhn-train-{i}"
                           for i in np.random.RandomState(0).permutation(SIZES["train"])]
    dev, _ = _split_examples(str(out), "dev_full", SHARDS["dev"])
    test, _ = _split_examples(str(out), "test_full", SHARDS["test"])
    assert _ids(dev) == _ids(test) == [f"svhn-test-{i}" for i in range(SIZES["test"])]
    assert info["splits"]["train"]["num_records"] == SIZES["train"]
    # In a one-mode directory `train*` reads exactly the train split.
    assert [os.path.basename(f) for f in readers.list_files(str(out / "train*"))] == [
        writers.shard_name("train_full", i, 4) for i in range(4)]


def test_modes_never_share_a_directory(raw_dir, tmp_path):
    out = tmp_path / "mixed"
    _proc(raw_dir, out)
    with pytest.raises(ValueError, match="full_train_data"):
        _proc(raw_dir, out, full_train_data=True)
    assert not any("_full" in name for name in os.listdir(out))
    _proc(raw_dir, out, full_train_data=True, overwrite=True)
    names = os.listdir(out) + os.listdir(out / "unlabeled")
    assert all("_full" in n for n in names if n not in ("dataset_info.json", "unlabeled"))
    # Foreign shards without a manifest (e.g. the original's own output) are refused too.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "train_full-00000-of-00128").write_bytes(b"x")
    with pytest.raises(ValueError, match="no dataset_info.json"):
        _proc(raw_dir, foreign)


def test_missing_file_without_download(raw_dir, tmp_path, no_network):
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(FileNotFoundError, match="test_32x32.mat"):
        svhn.find_or_download(str(raw), "test", download_missing=False)
    with pytest.raises(FileNotFoundError, match="download=False"):
        _proc(str(raw), tmp_path / "out", download_missing=False)
    assert not no_network
    assert not (tmp_path / "out").exists()


def test_download_goes_through_a_temporary_name(raw_dir, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    (raw / svhn.DOWNLOAD_SUBDIR).mkdir(parents=True)
    # The original's location is searched too: train and extra are found there.
    for split in ("train", "extra"):
        os.link(os.path.join(raw_dir, svhn.mat_name(split)),
                raw / svhn.DOWNLOAD_SUBDIR / svhn.mat_name(split))
    with open(os.path.join(raw_dir, svhn.mat_name("test")), "rb") as f:
        payload = f.read()
    requested = []

    def fake_urlopen(url, *args, **kwargs):
        requested.append(url)
        assert os.listdir(raw) == [svhn.DOWNLOAD_SUBDIR]  # nothing final before the data
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    info = _proc(str(raw), tmp_path / "out")
    assert requested == ["http://ufldl.stanford.edu/housenumbers/test_32x32.mat"]
    assert sorted(os.listdir(raw)) == [svhn.DOWNLOAD_SUBDIR, "test_32x32.mat"]  # no temp left
    assert info["splits"]["test"]["num_records"] == SIZES["test"]


def test_failed_download_leaves_no_file(tmp_path, monkeypatch):
    class Broken(io.BytesIO):
        def read(self, *args):
            raise OSError("connection reset")

    monkeypatch.setattr(urllib.request, "urlopen", lambda url: Broken())
    with pytest.raises(OSError, match="connection reset"):
        svhn.find_or_download(str(tmp_path), "extra")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content,message", [
    ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0], [1]])}, "1..10"),
    ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[11], [1]])}, "1..10"),
    ({"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.array([[1], [1]])}, "32, 32, 3"),
    ({"X": np.zeros((32, 32, 3, 2), np.float32), "y": np.array([[1], [1]])}, "uint8"),
    ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1]])}, "2 images but 1"),
    ({"images": np.zeros((32, 32, 3, 2), np.uint8)}, "keys 'X' and 'y'"),
])
def test_bad_mat_files(tmp_path, content, message):
    path = str(tmp_path / "bad.mat")
    scipy.io.savemat(path, content)
    with pytest.raises(ValueError, match=message):
        svhn.load_mat(path)


def test_bad_dev_size(raw_dir, tmp_path):
    with pytest.raises(ValueError, match="dev_size"):
        _proc(raw_dir, tmp_path / "o", dev_size=SIZES["train"])


def test_cli(raw_dir, tmp_path):
    out = tmp_path / "cli"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "proc_svhn.py"), "--task_name=svhn",
         f"--raw_data_dir={raw_dir}", f"--output_dir={out}", "--dev_size=5",
         "--num_shards=train=2,dev=1,test=1,extra=2", "--nodownload"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "train": 45, "dev": 5, "test": 30, "extra": 40}
    assert sorted(os.listdir(out)) == [
        "dataset_info.json", "dev-00000-of-00001", "test-00000-of-00001",
        "train-00000-of-00002", "train-00001-of-00002", "unlabeled"]
