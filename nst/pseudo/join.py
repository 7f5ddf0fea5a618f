"""Pass 2's input: every image of (shard, task) with its teacher prediction, in batches.

Pseudo-labelled input (`nst.pseudo.layout`) holds both in each record and is only read.
In the separate layout the images are joined with the predictions by id:

Join: images and predictions are streamed side by side (memory O(1)). Counts must
agree, and a prediction that stores an id must store the id of its partner. If the
stored ids are in another order, `PredictionOrderMismatch` is raised; the caller then
restarts with `method="partition"`, an external hash join: both streams are written to
`num_buckets` temporary TFRecord files by hash(id) and joined bucket by bucket, holding one
bucket's predictions in memory (about `JOIN_BUCKET_BYTES`). Any id without a partner, a
duplicate id, or a count different from the info file is a ValueError naming the files.
"""

import math
import re
import uuid
import zlib
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from nst import fileio
from nst.data import schema
from nst.pseudo import reader
from nst.pseudo.layout import (InputLayout, check_info, check_slices, pseudo_labelled_files,
                               require, slice_text)

BATCH_SIZE = 1024  # images per joined batch (the separate layout's streamed join)
JOIN_BUCKET_BYTES = 128 << 20  # probability vectors held per bucket of the hash join
MAX_JOIN_BUCKETS = 1024


class PredictionOrderMismatch(Exception):
    """Stored prediction ids are not in image order (the hash join handles this)."""


class Item(NamedTuple):
    """One image joined with its prediction."""

    image_id: str  # stored image/id, else '<image file basename>:<record index>'
    image: bytes  # encoded image, unchanged
    true_label: int  # 0-based true class if the image record stores one, else -1
    probabilities: np.ndarray  # float32 [K] teacher distribution


class ItemBatch(NamedTuple):
    """A batch of images joined with their predictions, n = len(image_ids)."""

    image_ids: Sequence  # [n] ids as Item.image_id, str or UTF-8 bytes
    images: Sequence[bytes]  # [n] encoded images, unchanged
    true_labels: np.ndarray  # int [n], -1 where not stored
    probabilities: np.ndarray  # float32 [n, K]
    labels: Optional[np.ndarray] = None  # int64 [n] argmax classes, when the reader has them
    conf: Optional[np.ndarray] = None  # float32 [n] their probabilities

    def items(self) -> Iterator[Item]:
        for i, image_id in enumerate(self.image_ids):
            if isinstance(image_id, bytes):
                image_id = image_id.decode("utf-8")
            yield Item(image_id, self.images[i], int(self.true_labels[i]),
                       self.probabilities[i])


def _item_batches(items: Iterator[Item], size: int = BATCH_SIZE) -> Iterator[ItemBatch]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield _to_batch(chunk)
            chunk = []
    if chunk:
        yield _to_batch(chunk)


def _to_batch(items: List[Item]) -> ItemBatch:
    return ItemBatch([it.image_id for it in items], [it.image for it in items],
                     np.array([it.true_label for it in items], np.int64),
                     np.stack([it.probabilities for it in items]))


def joined_items(layout: InputLayout, shard: int, task: int, **kwargs) -> Iterator[Item]:
    """`joined_batches`, one image at a time."""
    batches = joined_batches(layout, shard, task, **kwargs)
    try:
        for batch in batches:
            yield from batch.items()
    finally:
        batches.close()


def joined_batches(layout: InputLayout, shard: int, task: int, *, method: str = "stream",
                   tmp_dir: Optional[str] = None,
                   expected_records: Optional[int] = None) -> Iterator[ItemBatch]:
    """Pass 2 input: every image of (shard, task) with its prediction, in batches, in image
    order (`method="stream"`) or grouped by hash bucket (`"partition"`, needs `tmp_dir`;
    `expected_records` sizes the buckets, default: counted from the predictions).

    Raises PredictionOrderMismatch (stream only) and ValueError as in the module doc.
    Close the generator when stopping early so that the hash join's temporaries go.
    """
    check_slices(layout, shard)
    if not layout.separate_predictions:
        for _, batches in shard_joined_batches(layout, [shard], task):
            yield from batches
        return
    require(layout.image_path(shard), "Input shard")
    if method == "stream":
        yield from _stream_join(layout, shard, task)
    elif method == "partition":
        if tmp_dir is None:
            raise ValueError("method='partition' needs tmp_dir")
        yield from _item_batches(_partition_join(layout, shard, task, tmp_dir,
                                                 expected_records))
    else:
        raise ValueError(f"method must be 'stream' or 'partition', got {method!r}")


def shard_joined_batches(layout: InputLayout, shards: Sequence[int],
                         task: int) -> Iterator[tuple]:
    """Pass 2 input of several shards (one task): (shard, batches) per shard in order,
    batches = `joined_batches(layout, shard, task)` (method "stream"). Pseudo-labelled
    input is read by one pipeline for all the shards; consume each shard's batches
    before the next shard."""
    if layout.separate_predictions:
        for shard in shards:
            yield shard, joined_batches(layout, shard, task)
        return
    for shard in shards:
        check_slices(layout, shard)
    files = pseudo_labelled_files(layout, shards, task)

    def items(batches):
        for batch in batches:
            # Ids stay bytes: hashing and encoding take them as they are.
            yield ItemBatch(batch["id"], batch["image"], batch["true_label"],
                            batch["probabilities"], batch["label"], batch["conf"])

    stream = reader.read(files, "pseudo_labelled", layout)
    for number, batches in reader.per_file(stream, len(files)):
        yield shards[number], items(batches)


# --------------------------------------------------------------------------- streamed join


def _decoded(values) -> List[str]:
    return [v.decode("utf-8") for v in values]


def _count_error(layout, shard, task, image_path, num_images, pred_path, num_preds):
    return ValueError(
        f"Count mismatch for shard {shard}, task {task}: {image_path}"
        f"{slice_text(layout, task)} holds {num_images} images but {pred_path} holds "
        f"{num_preds} predictions")


class _Rows:
    """Takes consecutive rows from a stream of batches (dicts of equal-length arrays)."""

    def __init__(self, batches: Iterator[Dict[str, np.ndarray]]):
        self._batches = batches
        self._batch = None
        self._offset = 0

    def take(self, n: int) -> Dict[str, np.ndarray]:
        """The next min(n, rows left) rows as one batch dict ({} at the end)."""
        parts = []
        while n > 0:
            if self._batch is None or self._offset == len(self._batch["index"]):
                self._batch = next(self._batches, None)
                self._offset = 0
                if self._batch is None:
                    break
            stop = min(self._offset + n, len(self._batch["index"]))
            parts.append({k: v[self._offset:stop] for k, v in self._batch.items()})
            n -= stop - self._offset
            self._offset = stop
        if len(parts) <= 1:
            return parts[0] if parts else {}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def count_rest(self) -> int:
        rest = 0 if self._batch is None else len(self._batch["index"]) - self._offset
        self._batch = None
        return rest + sum(len(b["index"]) for b in self._batches)


def _stream_join(layout: InputLayout, shard: int, task: int) -> Iterator[ItemBatch]:
    image_path = layout.image_path(shard)
    pred_path = layout.prediction_path(shard, task)
    pred_base = fileio.basename(pred_path)
    images = _Rows(reader.file_batches(image_path, "images", layout, task))
    predictions = _Rows(reader.file_batches(pred_path, "predictions", layout, None))
    n = 0
    while True:
        image = images.take(BATCH_SIZE)
        m = len(image.get("index", ()))
        if m == 0:
            break
        prediction = predictions.take(m)
        got = len(prediction.get("index", ()))
        if got < m:
            raise _count_error(layout, shard, task, image_path, n + m + images.count_rest(),
                               pred_path, n + got)
        # Positional partners: prediction n of worker `task` is image record n·R + task (§3.4).
        expected = (n + np.arange(m)) * layout.total_replicas + task
        if not np.array_equal(image["index"], expected):
            raise RuntimeError(f"reader slicing broke the positional join at {image_path} "
                               f"records {image['index'][:3]}...")
        image_ids = _decoded(image["id"])
        for k, stored in enumerate(_decoded(prediction["id"])):
            if not stored or stored == schema.derived_id(pred_base,
                                                         int(prediction["index"][k])):
                continue  # derived by the reader: no stored id
            if stored != image_ids[k]:
                raise PredictionOrderMismatch(
                    f"record {n + k} of {pred_path} has image/id {stored!r} but its "
                    f"positional partner, record {int(image['index'][k])} of {image_path}, "
                    f"has {image_ids[k]!r}")
        yield ItemBatch(image_ids, image["image"], image["true_label"],
                        prediction["probabilities"])
        n += m
    rest = predictions.count_rest()
    if rest:
        raise _count_error(layout, shard, task, image_path, n, pred_path, n + rest)
    check_info(layout, shard, task, n, f"{image_path}{slice_text(layout, task)}")


# --------------------------------------------------------------------------- hash join


def num_join_buckets(num_records: int, num_classes: int,
                     bucket_bytes: int = JOIN_BUCKET_BYTES) -> int:
    """Buckets so that one bucket's float32 [K] vectors take about `bucket_bytes`."""
    return int(min(MAX_JOIN_BUCKETS, max(1, math.ceil(num_records * 4 * num_classes
                                                      / bucket_bytes))))


def _bucket(image_id: str, num_buckets: int) -> int:
    return zlib.crc32(image_id.encode("utf-8")) % num_buckets


def _pack(image_id: str, index: int, image: bytes = b"", true_label: int = -1,
          probabilities=None) -> bytes:
    feature = {
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode()])),
        "index": tf.train.Feature(int64_list=tf.train.Int64List(value=[index])),
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "true_label": tf.train.Feature(int64_list=tf.train.Int64List(value=[true_label])),
    }
    if probabilities is not None:
        feature["probabilities"] = tf.train.Feature(float_list=tf.train.FloatList(
            value=np.asarray(probabilities, np.float32).tolist()))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def _unpack(serialized: bytes):
    f = tf.train.Example.FromString(serialized).features.feature
    probabilities = np.array(f["probabilities"].float_list.value, np.float32) \
        if "probabilities" in f else None
    return (f["id"].bytes_list.value[0].decode("utf-8"), int(f["index"].int64_list.value[0]),
            f["image"].bytes_list.value[0], int(f["true_label"].int64_list.value[0]),
            probabilities)


def _scatter(rows, paths: List[str]):
    """Writes (bucket, serialized) pairs into the bucket files `paths`."""
    files = [tf.io.TFRecordWriter(p) for p in paths]
    try:
        for bucket, serialized in rows:
            files[bucket].write(serialized)
    finally:
        for f in files:
            f.close()


def _records(path: str) -> Iterator[bytes]:
    yield from tf.data.TFRecordDataset(path).as_numpy_iterator()


def _rows(batches) -> Iterator[Dict]:
    for batch in batches:
        for i in range(len(batch["index"])):
            yield {key: value[i] for key, value in batch.items()}


def _stored_id(prediction: Dict, basename: str) -> str:
    value = prediction["id"].decode("utf-8")
    return "" if value == schema.derived_id(basename, int(prediction["index"])) else value


_WORK_DIR = re.compile(r"join-(\d{5})-(\d+)-[0-9a-f]{32}$")


def remove_stale_work_dirs(tmp_dir: str, shard: int, task: int) -> int:
    """Deletes the hash join's work dirs of this (shard, task) that a killed run left in
    `tmp_dir` (`join-<shard>-<task>-<32 hex>`); returns how many. A finished join deletes
    its own, so only a killed one leaves any; other shards' and tasks' dirs, and any other
    name, are left alone (the job of a (shard, task) owns only its own, as for
    `fileio.remove_temporaries`)."""
    if not tf.io.gfile.isdir(tmp_dir):
        return 0
    removed = 0
    for name in tf.io.gfile.listdir(tmp_dir):
        match = _WORK_DIR.match(name.rstrip("/"))
        if match and (int(match[1]), int(match[2])) == (shard, task):
            logging.info("Removing %s, left by an earlier run", fileio.join(tmp_dir, name))
            tf.io.gfile.rmtree(fileio.join(tmp_dir, name.rstrip("/")))
            removed += 1
    return removed


def _partition_join(layout: InputLayout, shard: int, task: int, tmp_dir: str,
                    expected_records: Optional[int]) -> Iterator[Item]:
    image_path = layout.image_path(shard)
    pred_path = layout.prediction_path(shard, task)
    pred_base = fileio.basename(pred_path)
    if expected_records is None:
        expected_records = sum(len(b["index"]) for b in reader.file_batches(
            pred_path, "predictions", layout, None))
    num_buckets = num_join_buckets(expected_records, layout.num_classes)
    remove_stale_work_dirs(tmp_dir, shard, task)
    work = fileio.join(tmp_dir, f"join-{shard:05d}-{task}-{uuid.uuid4().hex}")
    tf.io.gfile.makedirs(work)
    pred_files = [fileio.join(work, f"pred-{b:05d}") for b in range(num_buckets)]
    image_files = [fileio.join(work, f"image-{b:05d}") for b in range(num_buckets)]
    try:
        def predictions():
            for row in _rows(reader.file_batches(pred_path, "predictions", layout, None)):
                stored = _stored_id(row, pred_base)
                if not stored:
                    raise ValueError(
                        f"Record {int(row['index'])} of {pred_path} stores no image/id, but "
                        f"the predictions that do are not in the order of {image_path}; "
                        f"predictions without ids must follow the image order")
                yield _bucket(stored, num_buckets), _pack(stored, int(row["index"]),
                                                          probabilities=row["probabilities"])

        def images():
            for row in _rows(reader.file_batches(image_path, "images", layout, task)):
                image_id = row["id"].decode("utf-8")
                yield _bucket(image_id, num_buckets), _pack(
                    image_id, int(row["index"]), row["image"], int(row["true_label"]))

        _scatter(predictions(), pred_files)
        _scatter(images(), image_files)
        n = 0
        for pred_file, image_file in zip(pred_files, image_files):
            table = {}
            for serialized in _records(pred_file):
                image_id, index, _, _, probabilities = _unpack(serialized)
                if image_id in table:
                    raise ValueError(f"Duplicate image/id {image_id!r} in {pred_path} "
                                     f"(records {table[image_id][0]} and {index})")
                table[image_id] = (index, probabilities)
            for serialized in _records(image_file):
                image_id, index, image, true_label, _ = _unpack(serialized)
                entry = table.pop(image_id, None)
                if entry is None:
                    raise ValueError(
                        f"Image {image_id!r} (record {index} of {image_path}) has no "
                        f"prediction in {pred_path}, or its id is duplicated in the images")
                yield Item(image_id, image, true_label, entry[1])
                n += 1
            if table:
                raise ValueError(
                    f"{len(table)} predictions in {pred_path} have no image in {image_path}"
                    f"{slice_text(layout, task)}, e.g. ids {sorted(table)[:5]}")
        check_info(layout, shard, task, n, f"{image_path}{slice_text(layout, task)}")
    finally:
        if tf.io.gfile.exists(work):
            tf.io.gfile.rmtree(work)
