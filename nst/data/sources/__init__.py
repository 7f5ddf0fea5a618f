"""Dataset ingestion: public datasets -> the record files of `nst.data.schema`.

  digits       scikit-learn's bundled 8x8 digits as a 32x32 demo dataset (offline, default)
  svhn         SVHN `.mat` files -> the splits of the original `proc_svhn.py` (spec §3.2, §8.1)
  tfds_source  any TFDS image-classification dataset -> records, or read it directly

Import the submodules explicitly (`from nst.data.sources import digits`): they pull in
optional dependencies (scikit-learn, scipy, tensorflow_datasets) only when used.

This module holds what they share:
  * `encode_jpeg`: every image is stored as a JPEG at quality 100, as `proc_svhn.py` does.
  * `write_split`: streams one split into `<prefix>-%05d-of-%05d` shards cut at
    `writers.shard_boundaries`, each file written atomically, without holding all
    encoded records in memory (SVHN `extra` is 531,131 images).
  * `OutputDir`: the `dataset_info.json` manifest that makes re-runs safe. `check` decides
    (without touching the disk), `start` clears the producer's own shard files and writes
    the manifest with `"complete": false`, `finish` rewrites it with `"complete": true`
    after the last shard (atomically, `nst.fileio.atomic_write_json`), so
      - same arguments, complete, every file present -> nothing to do (skip);
      - same arguments, incomplete (interrupted run)  -> our shard files are rewritten;
      - different arguments                           -> ValueError unless overwrite=True;
      - shard-named files but no manifest (someone else's data) -> ValueError unless
        overwrite=True.
    With overwrite=True only files whose names match the producer's own shard patterns
    are deleted (never whole directories or other files).
"""

import json
import re
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from nst import fileio
from nst.data import schema
from nst.data import writers

JPEG_QUALITY = 100
INFO_FILE = "dataset_info.json"
UNLABELED_DIR = "unlabeled"


# --------------------------------------------------------------------------- images


def jpeg_tensor(image: tf.Tensor) -> tf.Tensor:
    """uint8 `[H, W, 3]` tensor -> JPEG bytes (tf.string scalar), quality 100, RGB.

    Same settings as the original `ImageCoder` (TF defaults otherwise, i.e. 4:2:0 chroma
    subsampling), so decoding gives the pixels back up to JPEG rounding only.
    """
    return tf.io.encode_jpeg(image, format="rgb", quality=JPEG_QUALITY)


def encode_jpeg(image: np.ndarray) -> bytes:
    """uint8 `[H, W, 3]` array -> JPEG bytes (eager version of `jpeg_tensor`)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    return jpeg_tensor(tf.constant(image)).numpy()


# --------------------------------------------------------------------------- writing


def resolve_num_shards(num_shards, defaults: Mapping[str, int]) -> Dict[str, int]:
    """`num_shards` may be None (defaults), one int for every split, or a mapping that
    overrides some splits. Returns a full {split: count} dict; counts must be >= 1."""
    if num_shards is None:
        resolved = dict(defaults)
    elif isinstance(num_shards, Mapping):
        unknown = set(num_shards) - set(defaults)
        if unknown:
            raise ValueError(f"num_shards: unknown split(s) {sorted(unknown)}; "
                             f"splits are {sorted(defaults)}")
        resolved = {**defaults, **num_shards}
    else:
        resolved = {split: num_shards for split in defaults}
    for split, count in resolved.items():
        if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 1:
            raise ValueError(f"num_shards[{split!r}] must be an int >= 1, got {count!r}")
    return {split: int(count) for split, count in resolved.items()}


def write_split(output_dir: str, prefix: str, num_records: int, num_shards: int,
                records: Callable[[int, int], Iterable[bytes]]) -> List[Dict]:
    """Writes records [0, num_records) into `<output_dir>/<prefix>-%05d-of-%05d`.

    `records(start, stop)` yields the serialized records of that range; it is called once
    per shard with the `shard_boundaries` of the original (linspace, truncated), so only
    one shard is in memory at a time. Each file is written atomically. Returns one
    `{"file": basename, "num_records": n}` per shard.
    """
    bounds = writers.shard_boundaries(num_records, num_shards)
    written = []
    for shard in range(num_shards):
        name = writers.shard_name(prefix, shard, num_shards)
        expected = bounds[shard + 1] - bounds[shard]
        count = writers.write_records(fileio.join(output_dir, name),
                                      records(bounds[shard], bounds[shard + 1]))
        if count != expected:  # a bug in `records`, never bad input
            raise RuntimeError(f"{name}: wrote {count} records, expected {expected}")
        written.append({"file": name, "num_records": count})
    return written


# --------------------------------------------------------------------------- manifest


def shard_file_regex(prefixes: Sequence[str]) -> "re.Pattern":
    """Matches `<prefix>-%05d-of-%05d` for the given prefixes, plus the hidden temporaries
    `.<that name>.tmp-<hex>` a killed writer may leave behind."""
    names = "|".join(re.escape(p) for p in prefixes)
    return re.compile(rf"^\.?(?:{names})-\d{{5}}-of-\d{{5}}(?:\.tmp-[0-9a-f]+)?$")


def _normalise(obj):
    # Compare arguments the way they come back from JSON (tuples -> lists, ...).
    return json.loads(json.dumps(obj, sort_keys=True))


class OutputDir:
    """The manifest protocol of one producer over one output directory (see module doc).

    owned: (subdirectory or '', compiled regex of basenames) pairs naming the files this
      producer writes; used to find foreign or stale files and to delete them on overwrite.
    """

    def __init__(self, output_dir: str, owned: Sequence[Tuple[str, "re.Pattern"]]):
        self.output_dir = output_dir
        self.owned = list(owned)
        self.info_path = fileio.join(output_dir, INFO_FILE)

    def owned_files(self) -> List[str]:
        """Existing files matching the owned patterns, as paths relative to output_dir."""
        found = []
        for subdir, regex in self.owned:
            directory = fileio.join(self.output_dir, subdir) if subdir else self.output_dir
            if not tf.io.gfile.isdir(directory):
                continue
            for name in tf.io.gfile.listdir(directory):
                name = name.rstrip("/")
                if regex.match(name):
                    found.append(fileio.join(subdir, name) if subdir else name)
        return sorted(found)

    def read_info(self) -> Optional[Dict]:
        if not tf.io.gfile.exists(self.info_path):
            return None
        try:
            return fileio.read_json(self.info_path)
        except ValueError as e:
            raise ValueError(f"{self.info_path} is not valid JSON ({e}); delete it or pass "
                             f"overwrite=True") from e

    def check(self, args: Dict, overwrite: bool) -> Optional[Dict]:
        """Decides what to do; changes nothing on disk.

        Returns the existing manifest if the directory already holds a complete dataset
        made with `args` (the caller should skip), else None (the caller should `start`
        and write). Raises ValueError on a conflict (module doc) unless `overwrite`.
        """
        args = _normalise(args)
        info = self.read_info()
        if info is not None and info.get("args") == args:
            listed = [entry["file"] for entry in info.get("files", [])]
            if info.get("complete") and listed and all(
                    tf.io.gfile.exists(fileio.join(self.output_dir, f)) for f in listed):
                return info
            return None  # our own interrupted or damaged output: rewrite it
        if overwrite:
            return None
        if info is not None:
            old = info.get("args", {})
            changed = sorted(k for k in set(old) | set(args) if old.get(k) != args.get(k))
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {args.get(k)!r}" for k in changed)
            raise ValueError(
                f"{self.output_dir} already holds a dataset made with other arguments "
                f"({diff}). Use another output_dir or pass overwrite=True to replace it.")
        existing = self.owned_files()
        if existing:
            raise ValueError(
                f"{self.output_dir} holds shard files ({existing[0]}, ... {len(existing)} in "
                f"all) but no {INFO_FILE}: they are someone else's data. Use another "
                f"output_dir or pass overwrite=True to delete those files.")
        return None

    def start(self, args: Dict):
        """Deletes every owned file and writes the manifest with `complete: false`."""
        for relative in self.owned_files():
            tf.io.gfile.remove(fileio.join(self.output_dir, relative))
        tf.io.gfile.makedirs(self.output_dir)
        fileio.atomic_write_json(self.info_path, {"args": _normalise(args), "complete": False})

    def finish(self, info: Dict) -> Dict:
        """Publishes the final manifest (`complete: true`); returns what was written."""
        info = _normalise(dict(info, complete=True))
        fileio.atomic_write_json(self.info_path, info)
        return info


def write_splits(output_dir: str, indices: Mapping[str, np.ndarray],
                 num_shards: Mapping[str, int], images: np.ndarray, labels: np.ndarray,
                 num_classes: int, id_prefix: str,
                 encode_image: Callable[[np.ndarray], bytes] = encode_jpeg,
                 unlabeled: Sequence[str] = ("extra",)) -> Tuple[List[Dict], Dict]:
    """Writes each split of an in-memory dataset as `<split>-%05d-of-%05d` shards.

    indices: {split: int indices into images/labels}, in writing order. Labeled splits go
    to `output_dir`; the `unlabeled` ones to `output_dir/unlabeled` as unlabeled records
    with the original's dummy pseudo-label fields and the true label (diagnostics only).
    Every record's `image/id` is `<id_prefix><index>`. Returns (the manifest's "files"
    list, its "splits" dict).
    """
    files, splits = [], {}
    for split, chosen in indices.items():
        is_unlabeled = split in unlabeled
        subdir = UNLABELED_DIR if is_unlabeled else ""

        def records(start, stop, chosen=chosen, is_unlabeled=is_unlabeled):
            for i in chosen[start:stop]:
                image, label = encode_image(images[i]), int(labels[i])
                image_id = f"{id_prefix}{i}"
                if is_unlabeled:
                    yield schema.encode_unlabeled(image, true_label=label, image_id=image_id,
                                                  dummy_num_classes=num_classes)
                else:
                    yield schema.encode_labeled(image, label, image_id=image_id,
                                                num_classes=num_classes)

        directory = fileio.join(output_dir, subdir) if subdir else output_dir
        written = write_split(directory, split, len(chosen), num_shards[split], records)
        files += [dict(entry, file=fileio.join(subdir, entry["file"]) if subdir else entry["file"])
                  for entry in written]
        splits[split] = {
            "num_records": len(chosen),
            "num_shards": num_shards[split],
            "pattern": f"{subdir + '/' if subdir else ''}{split}-*",
            "record_format": "unlabeled" if is_unlabeled else "labeled",
            "per_class": class_counts(labels[chosen], num_classes),
        }
    return files, splits


def split_output_dir(output_dir: str) -> OutputDir:
    """The OutputDir of the digits / Fashion-MNIST layout: train, dev and test shards in
    `output_dir`, extra shards in `output_dir/unlabeled`."""
    return OutputDir(output_dir, [
        ("", shard_file_regex(["train", "dev", "test"])),
        (UNLABELED_DIR, shard_file_regex(["extra"]))])


def class_counts(labels: np.ndarray, num_classes: int) -> List[int]:
    """Records per class, 0-based labels -> list of K ints."""
    return np.bincount(np.asarray(labels, np.int64), minlength=num_classes).tolist()
