"""The offline demo dataset: scikit-learn's bundled handwritten digits, laid out like SVHN.

`sklearn.datasets.load_digits` ships 1,797 real 8x8 grayscale digits (values 0..16, 10
classes, about 180 per class) inside the package, so this works on a fresh machine
without any download. Each image becomes a 32x32x3 uint8 image (`convert_images`):

  1. scale 0..16 -> 0..255 (x * 255 / 16);
  2. resize 8 -> 32 with `tf.image.resize(method="bilinear")` (half-pixel centres, no
     antialiasing), which gives smooth strokes instead of 4x4 blocks;
  3. round half to even (`np.round`), clip to 0..255, cast to uint8 (every value above is
     a short binary fraction, so the float32 arithmetic is exact and the rounding stable);
  4. replicate the gray channel to RGB;
and is stored as a JPEG at quality 100, as `proc_svhn.py` stores SVHN.

Splits (`split_indices`), all drawn from one `np.random.RandomState(seed)`: for each class
in order 0..9 its indices are permuted; the first round(test_fraction * n_c) go to `test`,
the next round(dev_fraction * n_c) to `dev`, the next `labels_per_class` to the labeled
`train` split and the rest to the unlabeled `extra` split (rounding is half up). Each split
is then shuffled as a whole (same stream, in the order train, dev, test, extra) so that
every shard mixes classes.

Layout under `output_dir` (names of the original, spec §3.7):

  train-%05d-of-%05d             labeled, exactly labels_per_class images per class
  dev-%05d-of-%05d               labeled, stratified held-out (model selection)
  test-%05d-of-%05d              labeled, stratified held-out
  unlabeled/extra-%05d-of-%05d   unlabeled: the original's dummy pseudo-label fields
                                 (K = 10) plus the true label in image/class/label
                                 (diagnostics only)
  dataset_info.json              counts per split and class, arguments, normalisation

Every record has `image/id` = `digits-<index into load_digits>`.
Normalisation: use "svhn". Neither constant set matches these digits (mean 0.31, std 0.32
of 255 after conversion, recorded as `pixel_mean`/`pixel_std`), but the demo stands in for
the SVHN recipe (32x32 digits, small-image model) and the SVHN constants are nearly equal
across channels, as a gray image is; ImageNet's would add a colour bias.
"""

from typing import Dict, Mapping, Union

import numpy as np
import tensorflow as tf

from nst.data import sources

NUM_CLASSES = 10
IMAGE_SIZE = 32
NORMALIZATION = "svhn"
ID_PREFIX = "digits-"
SPLITS = ("train", "dev", "test", "extra")
# Two shards per labeled split so that two input pipelines can shard by file.
DEFAULT_NUM_SHARDS = {"train": 2, "dev": 2, "test": 2, "extra": 4}
_VERSION = 1  # bump when the conversion changes, so that old outputs are not reused


def load_raw_digits():
    """-> (images float64 [1797, 8, 8] in 0..16, labels int64 [1797] in 0..9)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("The digits demo dataset needs scikit-learn "
                          "(pip install scikit-learn); it downloads nothing.") from e
    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def convert_images(images: np.ndarray, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """float [N, 8, 8] in 0..16 -> uint8 [N, image_size, image_size, 3] (see module doc)."""
    scaled = np.asarray(images, np.float32)[..., None] * (255.0 / 16.0)
    resized = tf.image.resize(scaled, [image_size, image_size], method="bilinear").numpy()
    gray = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    return np.repeat(gray, 3, axis=-1)


def load_digits_images():
    """-> (images uint8 [1797, 32, 32, 3], labels int64 [1797]), index i = `digits-<i>`."""
    images, labels = load_raw_digits()
    return convert_images(images), labels


def _check_fraction(name: str, value: float):
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


def split_indices(labels: np.ndarray, labels_per_class: int, test_fraction: float,
                  dev_fraction: float, seed: int) -> Dict[str, np.ndarray]:
    """Stratified split of 0-based `labels` [N] -> {split: int64 indices} (module doc).

    Raises ValueError naming the argument: fractions outside (0, 1) or summing to >= 1,
    labels_per_class < 1 or larger than what a class has left after test and dev.
    """
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("dev_fraction", dev_fraction)
    if test_fraction + dev_fraction >= 1.0:
        raise ValueError(f"test_fraction + dev_fraction must be < 1, got "
                         f"{test_fraction} + {dev_fraction}")
    if not isinstance(labels_per_class, (int, np.integer)) or labels_per_class < 1:
        raise ValueError(f"labels_per_class must be an int >= 1, got {labels_per_class!r}")
    rng = np.random.RandomState(seed)
    parts = {split: [] for split in SPLITS}
    for c in range(int(labels.max()) + 1):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(test_fraction * len(members) + 0.5)
        n_dev = int(dev_fraction * len(members) + 0.5)
        available = len(members) - n_test - n_dev
        if labels_per_class > available:
            raise ValueError(
                f"labels_per_class={labels_per_class} is too large: class {c} has "
                f"{len(members)} images, {n_test} go to test and {n_dev} to dev, leaving "
                f"{available}")
        cuts = np.cumsum([n_test, n_dev, labels_per_class])
        for split, chunk in zip(("test", "dev", "train", "extra"), np.split(members, cuts)):
            parts[split].append(chunk)
    return {split: rng.permutation(np.concatenate(chunks)).astype(np.int64)
            for split, chunks in parts.items()}


def make_digits_dataset(output_dir: str, labels_per_class: int = 10,
                        test_fraction: float = 0.3, dev_fraction: float = 0.1, seed: int = 0,
                        num_shards: Union[None, int, Mapping[str, int]] = None,
                        overwrite: bool = False) -> Dict:
    """Writes the digits demo dataset to `output_dir` (layout in the module doc).

    Args:
      labels_per_class: labeled training images per class (>= 1).
      test_fraction, dev_fraction: per-class fractions held out, each in (0, 1), sum < 1.
      seed: seed of the split; the same arguments give byte-identical files.
      num_shards: None (DEFAULT_NUM_SHARDS), one int for every split, or a mapping
        overriding some of "train", "dev", "test", "extra".
      overwrite: replace a dataset made with other arguments (or foreign shard files).
    Returns the `dataset_info.json` content. A complete directory made with the same
    arguments is left untouched and its manifest returned.
    """
    shards = sources.resolve_num_shards(num_shards, DEFAULT_NUM_SHARDS)
    args = {"dataset": "digits", "version": _VERSION, "labels_per_class": labels_per_class,
            "test_fraction": test_fraction, "dev_fraction": dev_fraction, "seed": seed,
            "num_shards": shards}
    images, labels = load_digits_images()
    # Validate before touching the directory.
    indices = split_indices(labels, labels_per_class, test_fraction, dev_fraction, seed)
    out = sources.split_output_dir(output_dir)
    existing = out.check(args, overwrite)
    if existing is not None:
        return existing
    out.start(args)

    files, splits = sources.write_splits(
        output_dir, {split: indices[split] for split in SPLITS}, shards, images, labels,
        NUM_CLASSES, ID_PREFIX)
    pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
    return out.finish({
        "args": args,
        "source": "sklearn.datasets.load_digits",
        "num_classes": NUM_CLASSES,
        "image_size": IMAGE_SIZE,
        "normalization": NORMALIZATION,
        "pixel_mean": pixels.mean(0).round(6).tolist(),
        "pixel_std": pixels.std(0).round(6).tolist(),
        "splits": splits,
        "files": files,
    })
