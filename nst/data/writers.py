"""Sharded TFRecord writing with the original file names (spec §3.7), atomically.

Every file is written under a hidden temporary name in its final directory
(`.<name>.tmp-<32 hex>`, `fileio.temporary_path`) and renamed to its final name only
after a successful close. A failed or killed writer therefore never leaves a truncated
file under a final name, and a failed write never clobbers an existing final file. The hidden temporaries are ignored by
`nst.data.readers`. Paths go through `tf.io.gfile`, so `gs://` works (there the rename is a
copy + delete, and the final object appears only once complete).
"""

from typing import Iterable, List, Sequence, Union

import numpy as np
import tensorflow as tf
from absl import logging

from nst import fileio
from nst.data import record_file

Record = Union[bytes, tf.train.Example]


# --------------------------------------------------------------------------- names


def shard_name(prefix: str, shard: int, num_shards: int) -> str:
    """`<prefix>-%05d-of-%05d`, e.g. `train-00003-of-00128`, `extra-00000-of-00128`."""
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}"


def prediction_name(shard: int, num_shards: int, worker: int) -> str:
    """Predictions of one (shard, worker): `train-info-%05d-of-%05d-%05d` (§3.4)."""
    return f"train-info-{shard:05d}-of-{num_shards:05d}-{worker:05d}"


def info_name(shard: int, num_shards: int, worker: int) -> str:
    """Image count JSON of one (shard, worker): `info-%05d-of-%05d-%05d.txt` (§3.4)."""
    return f"info-{shard:05d}-of-{num_shards:05d}-{worker:05d}.txt"


def task_shard_name(prefix: str, task: int, shard: int, num_shards: int) -> str:
    """`<prefix>-%d-%05d-of-%05d`, e.g. `train-0-00017-of-00128` (§3.5, §3.6)."""
    return f"{prefix}-{task:d}-{shard:05d}-of-{num_shards:05d}"


def filtered_path(output_dir: str, task: int, shard: int, num_shards: int) -> str:
    """Filter output file: `<output_dir>/data/train-%d-%05d-of-%05d` (§3.5)."""
    return fileio.join(output_dir, "data", task_shard_name("train", task, shard, num_shards))


def parse_shard_ids(text: str, num_shards: int) -> List[int]:
    """'3' | '0,1,2' | '0-9' | '0-3,7' -> sorted unique shard ids, each in [0, num_shards)."""
    ids = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if high < low:
                    raise ValueError
                ids.update(range(low, high + 1))
            else:
                ids.add(int(part))
        except ValueError:
            raise ValueError(f"--shard_id={text!r}: {part!r} is not a shard id or a range "
                             f"'a-b' with a <= b") from None
    bad = sorted(i for i in ids if not 0 <= i < num_shards)
    if not ids or bad:
        raise ValueError(f"--shard_id={text!r} must name shards in [0, --num_shards="
                         f"{num_shards}); bad: {bad or 'none given'}")
    return sorted(ids)


def shard_boundaries(num_records: int, num_shards: int) -> List[int]:
    """Record boundaries of `num_shards` shards, as `proc_svhn.py` (§3.2).

    `linspace(0, N, num_shards + 1)` truncated to int: shard i holds records
    [b[i], b[i+1]). Returns num_shards + 1 ints, b[0] = 0, b[-1] = N.
    """
    if num_shards < 1 or num_records < 0:
        raise ValueError(f"need num_shards >= 1 and num_records >= 0, got "
                         f"{num_shards}, {num_records}")
    return np.linspace(0, num_records, num_shards + 1).astype(int).tolist()


# The one temporary-name scheme of every atomic writer (`fileio`), under the names its
# callers know from this module.
temporary_path = fileio.temporary_path
remove_temporaries = fileio.remove_temporaries


# --------------------------------------------------------------------------- writing


class ShardWriter:
    """Writes one TFRecord file atomically.

        with ShardWriter(path) as writer:
            writer.write(serialized_example)   # bytes or tf.train.Example

    On a clean exit the temporary file is closed and renamed to `path` (replacing an
    existing file unless `overwrite=False`, which raises FileExistsError up front). On an
    exception the temporary file is deleted, `path` is left as it was, and the exception
    propagates. `num_records` counts the records written.
    """

    def __init__(self, path: str, overwrite: bool = True):
        self.path = path
        self.overwrite = overwrite
        self.num_records = 0
        self._tmp = None
        self._writer = None

    def open(self) -> "ShardWriter":
        if self._writer is not None:
            raise RuntimeError(f"{self.path} is already open")
        if not self.overwrite and tf.io.gfile.exists(self.path):
            raise FileExistsError(f"{self.path} exists and overwrite=False")
        directory = fileio.split(self.path)[0]
        if directory:
            tf.io.gfile.makedirs(directory)
        self._tmp = temporary_path(self.path)
        self._writer = record_file.RecordFileWriter(self._tmp)
        return self

    def write(self, record: Record):
        if self._writer is None:
            raise RuntimeError(f"{self.path} is not open")
        if isinstance(record, tf.train.Example):
            record = record.SerializeToString(deterministic=True)
        self._writer.write(record)
        self.num_records += 1

    def write_many(self, records: Sequence[bytes]):
        """Writes serialized records (bytes only)."""
        if self._writer is None:
            raise RuntimeError(f"{self.path} is not open")
        self._writer.write_many(records)
        self.num_records += len(records)

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def close(self):
        """Closes and publishes the file under its final name."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        try:
            writer.close()
            tf.io.gfile.rename(self._tmp, self.path, overwrite=self.overwrite)
        except BaseException:
            self._remove_tmp()
            raise

    def abort(self):
        """Closes and deletes the temporary file; the final name is not touched."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        try:
            writer.abort()
        finally:
            self._remove_tmp()

    def _remove_tmp(self):
        try:
            if tf.io.gfile.exists(self._tmp):
                tf.io.gfile.remove(self._tmp)
        except tf.errors.OpError as e:  # keep the original error visible
            logging.warning("Could not remove temporary file %s: %s", self._tmp, e)

    def __enter__(self) -> "ShardWriter":
        return self.open()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def write_shards(records: Sequence[Record], output_dir: str, prefix: str,
                 num_shards: int, overwrite: bool = True) -> List[str]:
    """Splits `records` into `num_shards` files `<output_dir>/<prefix>-%05d-of-%05d` at
    `shard_boundaries` (as `proc_svhn.py`), each written atomically. Returns the paths."""
    bounds = shard_boundaries(len(records), num_shards)
    paths = []
    for shard in range(num_shards):
        path = fileio.join(output_dir, shard_name(prefix, shard, num_shards))
        write_records(path, records[bounds[shard]:bounds[shard + 1]], overwrite=overwrite)
        paths.append(path)
    return paths


def write_records(path: str, records: Iterable[Record], overwrite: bool = True) -> int:
    """Writes all `records` to one file atomically; returns how many were written."""
    with ShardWriter(path, overwrite=overwrite) as writer:
        for record in records:
            writer.write(record)
    return writer.num_records
