"""SVHN `.mat` files -> the TFRecords of the original `proc_svhn.py` (spec §2.5, §3.2, §8.1).

Input: `train_32x32.mat`, `test_32x32.mat`, `extra_32x32.mat` in `raw_data_dir` (or in its
`downloaded_data/` subfolder, where the original put them). Each holds `X` uint8
[32, 32, 3, N] and `y` [N, 1] with labels 1..10, where 10 means the digit 0. Files that
exist are used as they are: nothing is downloaded (the original re-downloaded every time).
Missing files are fetched from `URL_TEMPLATE` with urllib into a temporary name, then
renamed, unless `download=False` (then FileNotFoundError).

Splits (`split_indices`), exactly as the original:
  rng = np.random.RandomState(seed)            # seed 0, i.e. np.random.seed(0)
  train_order = rng.permutation(N_train)       # first draw of the stream
  extra_order = rng.permutation(N_extra)       # second draw of the same stream
  dev   = train_order[:dev_size]               # 4,000
  train = train_order[dev_size:]               # 69,257
  test  = 0..N_test-1 in file order            # 26,032
  extra = extra_order                          # 531,131 (unlabeled)
With `full_train_data`: train = train_order (all 73,257), and dev := test (the dev files
are a copy of the test files, as in the original, so that `dev*` still exists).

Output under `output_dir` (shard boundaries = `writers.shard_boundaries`, names §3.2):
  train-%05d-of-00128, dev-%05d-of-00064, test-%05d-of-00064   labeled: image/encoded (JPEG
      q100), image/class/label = digit + 1 (the raw 10 is digit 0, stored as 1)
  unlabeled/extra-%05d-of-00128   + the original's dummy pseudo-label fields
      (probabilities = [0]*10, label = 0, prob = 0); image/class/label = true digit + 1
  dataset_info.json               counts per split and class, arguments (nst addition)
Every record also carries `image/id` = `svhn-<train|test|extra>-<index in the .mat file>`.
With `full_train_data` every name gets `_full`: `train_full-…`, `dev_full-…`, `test_full-…`,
`unlabeled/extra_full-…`.

The `train_full*` / `train*` clash of the original (§11): the reader pattern `train*` matches
`train_full-…` too, so a directory holding both modes would be read twice. Fix: one output
directory holds ONE mode. Writing one mode where the other's shards exist raises ValueError
(with overwrite=True the other mode's shards are deleted first). The patterns are then
unambiguous: `<output_dir>/train*` reads exactly the train split of whichever mode is there;
the strict patterns `train-*` / `train_full-*` may be passed as well.
"""

import urllib.request
from typing import Dict, Mapping, Tuple, Union

import numpy as np
import tensorflow as tf
from absl import logging

from nst import fileio
from nst.data import schema
from nst.data import sources

NUM_CLASSES = 10
SOURCE_SPLITS = ("train", "test", "extra")
URL_TEMPLATE = "http://ufldl.stanford.edu/housenumbers/{split}_32x32.mat"
DOWNLOAD_SUBDIR = "downloaded_data"  # the original's location inside raw_data_dir
DEV_SIZE = 4000
NUM_SHARDS = {"train": 128, "dev": 64, "test": 64, "extra": 128}
SPLITS = ("train", "dev", "test", "extra")
NORMALIZATION = "svhn"


def mat_name(split: str) -> str:
    return f"{split}_32x32.mat"


# --------------------------------------------------------------------------- raw files


def download(url: str, path: str):
    """Fetches `url` into `path` via a temporary name and a rename (no partial file)."""
    tmp = fileio.temporary_path(path)
    logging.info("Downloading %s to %s", url, path)
    try:
        with urllib.request.urlopen(url) as response, tf.io.gfile.GFile(tmp, "wb") as f:
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)


def find_or_download(raw_data_dir: str, split: str, download_missing: bool = True,
                     url_template: str = URL_TEMPLATE) -> str:
    """Path of `<split>_32x32.mat`: an existing file in `raw_data_dir` or its
    `downloaded_data/` is used as is; otherwise it is downloaded to `raw_data_dir`."""
    name = mat_name(split)
    candidates = [fileio.join(raw_data_dir, name),
                  fileio.join(raw_data_dir, DOWNLOAD_SUBDIR, name)]
    for path in candidates:
        if tf.io.gfile.exists(path):
            return path
    url = url_template.format(split=split)
    if not download_missing:
        raise FileNotFoundError(f"{name} is in neither {candidates[0]} nor {candidates[1]} "
                                f"and download=False; fetch it from {url}")
    tf.io.gfile.makedirs(raw_data_dir)
    download(url, candidates[0])
    return candidates[0]


def load_mat(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """-> (images uint8 [32, 32, 3, N] as stored, labels int64 [N] digits 0..9).

    The images stay in the file's layout (image i is `images[..., i]`): transposing the
    1.6 GB `extra` array would double the memory; shards are transposed one at a time.
    """
    try:
        import scipy.io
    except ImportError as e:
        raise ImportError("Reading SVHN .mat files needs scipy (pip install scipy)") from e
    with tf.io.gfile.GFile(path, "rb") as f:
        data = scipy.io.loadmat(f)
    if "X" not in data or "y" not in data:
        raise ValueError(f"{path}: expected keys 'X' and 'y', found "
                         f"{sorted(k for k in data if not k.startswith('__'))}")
    images, labels = data["X"], np.asarray(data["y"]).reshape(-1).astype(np.int64)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise ValueError(f"{path}: X must be uint8 [32, 32, 3, N], got {images.dtype} "
                         f"{images.shape}")
    if labels.shape[0] != images.shape[3]:
        raise ValueError(f"{path}: {images.shape[3]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise ValueError(f"{path}: labels must be 1..10 (10 = digit 0), got "
                         f"{labels.min()}..{labels.max()}")
    return images, labels % 10  # 10 -> 0, 1..9 unchanged


# --------------------------------------------------------------------------- splits


def split_indices(num_train: int, num_test: int, num_extra: int, *,
                  dev_size: int = DEV_SIZE, full_train_data: bool = False,
                  seed: int = 0) -> Dict[str, Tuple[str, np.ndarray]]:
    """-> {output split: (source split, int64 indices into that source's .mat)}.

    See the module doc for the exact procedure (identical to the original for seed 0).
    """
    rng = np.random.RandomState(seed)
    train_order = rng.permutation(num_train)
    extra_order = rng.permutation(num_extra)
    test_order = np.arange(num_test)
    if full_train_data:
        return {"train": ("train", train_order), "dev": ("test", test_order),
                "test": ("test", test_order), "extra": ("extra", extra_order)}
    if not 0 < dev_size < num_train:
        raise ValueError(f"dev_size must be in (0, {num_train}) for {num_train} training "
                         f"images, got {dev_size}")
    return {"train": ("train", train_order[dev_size:]),
            "dev": ("train", train_order[:dev_size]),
            "test": ("test", test_order), "extra": ("extra", extra_order)}


def _records(split: str, source: str, indices: np.ndarray, images: np.ndarray,
             labels: np.ndarray):
    """records(start, stop) for `sources.write_split`."""

    def records(start, stop):
        chosen = indices[start:stop]
        shard_images = np.transpose(images[..., chosen], (3, 0, 1, 2))  # [n, 32, 32, 3]
        for i, image in zip(chosen, shard_images):
            jpeg, label, image_id = sources.encode_jpeg(image), int(labels[i]), \
                f"svhn-{source}-{i}"
            if split == "extra":
                yield schema.encode_unlabeled(jpeg, true_label=label, image_id=image_id,
                                              dummy_num_classes=NUM_CLASSES)
            else:
                yield schema.encode_labeled(jpeg, label, image_id=image_id,
                                            num_classes=NUM_CLASSES)
    return records


def file_prefix(split: str, full_train_data: bool) -> str:
    """`train` / `train_full` etc.: the original's file name prefix of a split."""
    return f"{split}_full" if full_train_data else split


def proc_svhn(raw_data_dir: str, output_dir: str, *, full_train_data: bool = False,
              dev_size: int = DEV_SIZE,
              num_shards: Union[None, int, Mapping[str, int]] = None,
              download_missing: bool = True, url_template: str = URL_TEMPLATE, seed: int = 0,
              overwrite: bool = False) -> Dict:
    """Converts SVHN to TFRecords (module doc); returns the `dataset_info.json` content.

    Args:
      raw_data_dir: where the three .mat files are (or get downloaded to).
      output_dir: TFRecord root; the extra split goes to `<output_dir>/unlabeled/`.
      full_train_data: keep all training images, dev := test, `_full` names.
      dev_size: dev images taken from the shuffled train split (ignored when full).
      num_shards: None (NUM_SHARDS: 128/64/64/128), one int, or a mapping overriding
        some of "train", "dev", "test", "extra".
      download_missing: fetch missing .mat files (never touches existing ones).
      seed: NumPy seed of the shuffles (0 as the original).
      overwrite: replace output made with other arguments (incl. the other mode).
    A complete `output_dir` made with the same arguments is left untouched.
    """
    shards = sources.resolve_num_shards(num_shards, NUM_SHARDS)
    args = {"dataset": "svhn", "full_train_data": full_train_data,
            "dev_size": None if full_train_data else dev_size, "num_shards": shards,
            "seed": seed}
    bases = [file_prefix(s, full) for s in ("train", "dev", "test") for full in (False, True)]
    out = sources.OutputDir(output_dir, [
        ("", sources.shard_file_regex(bases)),
        (sources.UNLABELED_DIR, sources.shard_file_regex(["extra", "extra_full"]))])
    existing = out.check(args, overwrite)  # before the slow loading
    if existing is not None:
        return existing

    data = {split: load_mat(find_or_download(raw_data_dir, split, download_missing,
                                             url_template))
            for split in SOURCE_SPLITS}
    plan = split_indices(len(data["train"][1]), len(data["test"][1]),
                         len(data["extra"][1]), dev_size=dev_size,
                         full_train_data=full_train_data, seed=seed)
    out.start(args)  # only now that the inputs are known to be good

    files, splits = [], {}
    for split in SPLITS:
        source, indices = plan[split]
        images, labels = data[source]
        prefix = file_prefix(split, full_train_data)
        subdir = sources.UNLABELED_DIR if split == "extra" else ""
        directory = fileio.join(output_dir, subdir) if subdir else output_dir
        logging.info("Writing %d %s images to %s/%s-*", len(indices), split, directory,
                     prefix)
        written = sources.write_split(directory, prefix, len(indices), shards[split],
                                      _records(split, source, indices, images, labels))
        files += [dict(entry, file=fileio.join(subdir, entry["file"]) if subdir
                       else entry["file"]) for entry in written]
        splits[split] = {
            "num_records": len(indices),
            "num_shards": shards[split],
            "source": source,
            "pattern": f"{subdir + '/' if subdir else ''}{prefix}-*",
            "record_format": "unlabeled" if split == "extra" else "labeled",
            "per_class": sources.class_counts(labels[indices], NUM_CLASSES),
        }
    return out.finish({
        "args": args,
        "source": "SVHN cropped digits (.mat)",
        "num_classes": NUM_CLASSES,
        "image_size": 32,
        "normalization": NORMALIZATION,
        "splits": splits,
        "files": files,
    })
