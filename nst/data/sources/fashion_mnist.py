"""Fashion-MNIST (Zalando Research) as a semi-supervised benchmark in nst's record formats.

70,000 grayscale 28x28 images of 10 clothing classes: 60,000 train (6,000 per class) and
the official 10,000 test. The four original IDX files (`nst.data.sources.idx`) are read
from `source_dir`, by default where Debian's `dataset-fashion-mnist` package installs them
(`apt-get install dataset-fashion-mnist`); gzip or raw, under the original names with or
without `.gz`. `source="tfds"` reads a prepared TFDS `fashion_mnist` instead (nothing is
downloaded).

Images (`convert_images`): each 28x28 image is zero-padded by 2 pixels on every side to
32x32 and its gray channel replicated to RGB, then stored as PNG. Padding rather than
resizing keeps every pixel of the data set as it is (a resize would blur the fine
textures the classes differ by) and the background is already 0, so the border is
invisible; 32x32 is the input the small-image EfficientNet is built for, as for SVHN and
the digits demo. PNG is lossless, so the model sees exactly those pixels; every reader
(`tf.io.decode_image`) takes PNG and JPEG alike.

Splits, all from the 60,000 train images, so that train + dev + extra = 60,000:

  dev    `dev_per_class` (500) per class, drawn with the fixed DEV_SEED: the same 5,000
         images whatever `seed`, so model selection is comparable across seeds;
  train  `labels_per_class` per class of the rest, drawn with `seed` (labeled);
  extra  everything else (unlabeled; 54,600 at 40 labels per class);
  test   the official 10,000 test images, in their file order.
Per class the candidates are permuted by `np.random.RandomState` (dev: DEV_SEED; train:
`seed`), then train, dev and extra are each shuffled as a whole with the `seed` stream so
that every shard mixes classes.

Layout under `output_dir` (the names `make_digits.py` writes):

  train-%05d-of-%05d, dev-…, test-…    labeled records
  unlabeled/extra-%05d-of-%05d          unlabeled records; the true label travels in
                                        `image/class/label` for diagnostics (pseudo-label
                                        accuracy), training never reads it
  dataset_info.json                     counts per split and class, arguments, and the
                                        pixel mean/std of the padded train images

Ids: `fashion_mnist-train-<i>` / `fashion_mnist-test-<i>`, i the index in the IDX file.
Normalisation: "fashion_mnist" (`nst.models.normalization`), computed from this data.
"""

import os
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from nst.data import sources
from nst.data.sources import idx

NUM_CLASSES = 10
RAW_SIZE = 28
IMAGE_SIZE = 32
NORMALIZATION = "fashion_mnist"
DEV_PER_CLASS = 500
DEV_SEED = 20171025  # fixed: the dev split is the same for every --seed
DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = ("install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
                "or point --source_dir at a directory holding the four IDX files")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SPLITS = ("train", "dev", "test", "extra")
DEFAULT_NUM_SHARDS = {"train": 2, "dev": 2, "test": 4, "extra": 8}
SOURCES = ("idx", "tfds")
_VERSION = 1  # bump when the conversion changes, so that old outputs are not reused


def find_file(source_dir: str, name: str) -> str:
    """`<source_dir>/<name>.gz` or `<source_dir>/<name>`; FileNotFoundError naming both."""
    for candidate in (f"{name}.gz", name):
        path = os.path.join(source_dir, candidate)
        if tf.io.gfile.exists(path):
            return path
    if not tf.io.gfile.isdir(source_dir):
        raise FileNotFoundError(f"Fashion-MNIST source directory {source_dir} does not "
                                f"exist: {INSTALL_HINT}")
    raise FileNotFoundError(f"{source_dir} has no {name}.gz (nor {name}): {INSTALL_HINT}")


def load_idx(source_dir: str = DEFAULT_SOURCE_DIR) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{"train"|"test": (uint8 [N, 28, 28], int64 [N])} from the IDX files."""
    paths = {split: [find_file(source_dir, name) for name in names]
             for split, names in FILES.items()}  # every file located before any is read
    return {split: idx.read_pair(images, labels, RAW_SIZE, RAW_SIZE, NUM_CLASSES)
            for split, (images, labels) in paths.items()}


def load_tfds(data_dir: Optional[str] = None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """The same arrays from a prepared TFDS `fashion_mnist` (never downloads)."""
    import tensorflow_datasets as tfds
    out = {}
    for split in FILES:
        try:
            dataset = tfds.load("fashion_mnist", split=split, data_dir=data_dir,
                                download=False, as_supervised=True)
        except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError
                ) as e:
            raise FileNotFoundError(f"TFDS fashion_mnist is not prepared in "
                                    f"{data_dir or 'the default TFDS data_dir'} ({e}); "
                                    f"use --source=idx: {INSTALL_HINT}") from None
        # Batches, not batch_size=-1: that needs a known cardinality.
        batches = list(tfds.as_numpy(dataset.batch(10_000)))
        images = np.concatenate([b[0] for b in batches]).astype(np.uint8)
        labels = np.concatenate([b[1] for b in batches])
        if images.ndim == 4:
            images = images[..., 0]
        if images.shape[1:] != (RAW_SIZE, RAW_SIZE):
            raise ValueError(f"TFDS fashion_mnist/{split}: images of shape "
                             f"{images.shape[1:]}, expected 28x28")
        out[split] = images, np.asarray(labels, np.int64)
    return out


def convert_images(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> uint8 [N, 32, 32, 3]: zero border of 2, gray to RGB."""
    pad = (IMAGE_SIZE - RAW_SIZE) // 2
    padded = np.pad(np.asarray(images, np.uint8), ((0, 0), (pad, pad), (pad, pad)))
    return np.repeat(padded[..., None], 3, axis=-1)


def encode_png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(tf.constant(image)).numpy()


def _check_count(name: str, value, minimum: int):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def split_indices(train_labels: np.ndarray, labels_per_class: int, seed: int,
                  dev_per_class: int = DEV_PER_CLASS) -> Dict[str, np.ndarray]:
    """{train, dev, extra: int64 indices into the train images} (module doc).

    Raises ValueError naming labels_per_class when it is < 1 or more than a class has
    left after its dev images (and dev_per_class when a class has fewer images).
    """
    _check_count("labels_per_class", labels_per_class, 1)
    _check_count("dev_per_class", dev_per_class, 0)
    dev_rng, rng = np.random.RandomState(DEV_SEED), np.random.RandomState(seed)
    parts = {"train": [], "dev": [], "extra": []}
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(train_labels == c)
        members = members[dev_rng.permutation(len(members))]
        if dev_per_class > len(members):
            raise ValueError(f"dev_per_class={dev_per_class} is too large: class {c} has "
                             f"{len(members)} train images")
        dev, rest = members[:dev_per_class], members[dev_per_class:]
        if labels_per_class > len(rest):
            raise ValueError(
                f"labels_per_class={labels_per_class} is too large: class {c} has "
                f"{len(members)} train images, {len(dev)} of them go to dev, leaving "
                f"{len(rest)}")
        rest = rest[rng.permutation(len(rest))]
        parts["dev"].append(dev)
        parts["train"].append(rest[:labels_per_class])
        parts["extra"].append(rest[labels_per_class:])
    return {split: rng.permutation(np.concatenate(chunks)).astype(np.int64)
            for split, chunks in parts.items()}


def load(source: str = "idx", source_dir: str = DEFAULT_SOURCE_DIR,
         tfds_data_dir: Optional[str] = None):
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    return load_idx(source_dir) if source == "idx" else load_tfds(tfds_data_dir)


def unlabeled_count(labels_per_class: int, source: str = "idx",
                    source_dir: str = DEFAULT_SOURCE_DIR,
                    tfds_data_dir: Optional[str] = None,
                    dev_per_class: int = DEV_PER_CLASS) -> int:
    """Images of the `extra` split for these arguments (reads only the train labels)."""
    if source == "idx":
        path = find_file(source_dir, FILES["train"][1])
        labels = idx.read_labels(path, NUM_CLASSES)
    else:
        labels = load_tfds(tfds_data_dir)["train"][1]
    return len(split_indices(labels, labels_per_class, 0, dev_per_class)["extra"])


def make_fashion_mnist_dataset(output_dir: str, labels_per_class: int = 40, seed: int = 0,
                               dev_per_class: int = DEV_PER_CLASS,
                               source_dir: str = DEFAULT_SOURCE_DIR, source: str = "idx",
                               tfds_data_dir: Optional[str] = None,
                               num_shards: Union[None, int, Mapping[str, int]] = None,
                               overwrite: bool = False) -> Dict:
    """Writes the Fashion-MNIST splits to `output_dir` (layout in the module doc).

    Args:
      labels_per_class: labeled training images per class (1 .. 5,500).
      seed: seed of the labeled/unlabeled split; the same arguments give byte-identical
        files.
      dev_per_class: dev images per class (drawn with the fixed DEV_SEED).
      source_dir, source, tfds_data_dir: where the raw data comes from (module doc).
      num_shards: None (DEFAULT_NUM_SHARDS), one int for every split, or a mapping
        overriding some of "train", "dev", "test", "extra".
      overwrite: replace a dataset made with other arguments (or foreign shard files).
    Returns the `dataset_info.json` content; a complete directory made with the same
    arguments is left untouched and its manifest returned.
    """
    shards = sources.resolve_num_shards(num_shards, DEFAULT_NUM_SHARDS)
    args = {"dataset": "fashion_mnist", "version": _VERSION,
            "labels_per_class": labels_per_class, "seed": seed,
            "dev_per_class": dev_per_class, "source": source, "num_shards": shards}
    raw = load(source, source_dir, tfds_data_dir)
    # Validate before touching the directory.
    indices = split_indices(raw["train"][1], labels_per_class, seed, dev_per_class)
    out = sources.split_output_dir(output_dir)
    existing = out.check(args, overwrite)
    if existing is not None:
        return existing
    out.start(args)

    train_images = convert_images(raw["train"][0])
    files, splits = sources.write_splits(
        output_dir, {s: indices[s] for s in ("train", "dev", "extra")}, shards,
        train_images, raw["train"][1], NUM_CLASSES, "fashion_mnist-train-",
        encode_image=encode_png)
    test_images, test_labels = convert_images(raw["test"][0]), raw["test"][1]
    test_files, test_split = sources.write_splits(
        output_dir, {"test": np.arange(len(test_labels))}, shards, test_images, test_labels,
        NUM_CLASSES, "fashion_mnist-test-", encode_image=encode_png)
    pixels = train_images[..., 0].astype(np.float64) / 255.0
    return out.finish({
        "args": args,
        "source": (f"IDX files in {source_dir}" if source == "idx"
                   else f"TFDS fashion_mnist ({tfds_data_dir or 'default data_dir'})"),
        "num_classes": NUM_CLASSES,
        "image_size": IMAGE_SIZE,
        "normalization": NORMALIZATION,
        # Over the 60,000 padded train images, the same value for the three channels.
        "pixel_mean": [round(float(pixels.mean()), 6)] * 3,
        "pixel_std": [round(float(pixels.std()), 6)] * 3,
        "splits": {**splits, **test_split},
        "files": files + test_files,
    })
