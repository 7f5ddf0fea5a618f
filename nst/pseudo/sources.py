"""The filter's input for one (shard, task), and the join of images with predictions by id.

Two layouts (chosen by whether `prediction_dir` is set):

  pseudo-labelled  <input_dir>/<file_prefix>-%05d-of-%05d (shard, num_shards): every record
                   holds the image, its `image/id` and the teacher `probabilities` (schema
                   `pseudo_labeled`, or `unlabeled` with probabilities). No join needed.
  separate         the original layout (§3.3, §3.4):
                   images       <input_dir>/<file_prefix>-%05d-of-%05d   (schema `unlabeled`)
                   predictions  <prediction_dir>/train-info-%05d-of-%05d-%05d (shard, -, worker)
                   counts       <info_dir>/info-%05d-of-%05d-%05d.txt, {"image_num": N}
                                (checked when `info_dir` is set)

Slicing (§3.4): with R = total_replicas, task t handles the image records whose index i in
the shard file has i mod R == t, and the prediction file of worker t. Pseudo-labelled
input written by R predict workers (`<file_prefix>-%05d-of-%05d-%05d`, one file per
worker) is read whole, task t = worker t.

Ids: an image's id is its stored `image/id`, else `<image file basename>:<record index>`
(what `nst.data.readers` derives). A prediction's id is its stored `image/id`. An original
prediction has none: record k of worker t's file belongs to image record k·R + t, i.e. it
is joined by that position. (A stored id equal to the reader's derived one,
`train-info-...:<k>`, counts as absent.)

Join (pass 2): images and predictions are streamed side by side (memory O(1)). Counts
must agree, and a prediction that stores an id must store the id of its partner. If the
stored ids are in another order, `PredictionOrderMismatch` is raised; the caller then
restarts with `method="partition"`, an external hash join: both streams are written to
`num_buckets` temporary TFRecord files by hash(id) and joined bucket by bucket, holding one
bucket's predictions in memory (about `JOIN_BUCKET_BYTES`). Any id without a partner, a
duplicate id, or a count different from the info file is a ValueError naming the files.
"""

import dataclasses
import functools
import math
import os
import posixpath
import uuid
import zlib
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from nst.data import schema, writers
from nst import fileio

BATCH_SIZE = 1024  # images per joined batch (the separate layout's streamed join)
# Reader batches: up to 1,024 records (per-batch costs of tf.data and Python made pass 2
# ~10% slower at 256) and ~4 MiB of probabilities (64 records at least), so that the
# prefetched batches stay ~32 MiB whatever the class count.
_READ_ROWS = (64, 1024)
_READ_BYTES = 4 << 20
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


def read_rows(num_classes: int) -> int:
    """Records per reader batch for vectors of `num_classes` float32."""
    low, high = _READ_ROWS
    return int(min(high, max(low, _READ_BYTES // (4 * num_classes))))


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


@dataclasses.dataclass(frozen=True)
class InputLayout:
    """Where the filter's inputs are (module doc). num_classes = K."""

    input_dir: str
    file_prefix: str = "train"
    prediction_dir: str = ""
    info_dir: str = ""
    num_shards: int = 128
    total_replicas: int = 1
    num_classes: int = 1000

    @property
    def separate_predictions(self) -> bool:
        return bool(self.prediction_dir)

    def image_path(self, shard: int) -> str:
        return _join(self.input_dir, writers.shard_name(self.file_prefix, shard,
                                                        self.num_shards))

    def pseudo_labelled_slice(self, shard: int, task: int):
        """(path, task to slice by or None) of (shard, task)'s pseudo-labelled records:
        with total_replicas > 1, the worker file `<file_prefix>-%05d-of-%05d-%05d` that
        `--mode=predict --total_replicas=R --worker_id=task` writes, read whole, when it
        exists; else the shard file, sliced."""
        path = self.image_path(shard)
        if self.total_replicas > 1:
            worker_path = f"{path}-{task:05d}"
            if tf.io.gfile.exists(worker_path):
                return worker_path, None
        return path, task

    def prediction_path(self, shard: int, worker: int) -> str:
        return _join(self.prediction_dir, writers.prediction_name(shard, self.num_shards,
                                                                  worker))

    def info_path(self, shard: int, worker: int) -> Optional[str]:
        if not self.info_dir:
            return None
        return _join(self.info_dir, writers.info_name(shard, self.num_shards, worker))


def join_path(*parts: str) -> str:
    """os.path.join, but '/' for URLs such as gs://bucket/dir."""
    return posixpath.join(*parts) if "://" in parts[0] else os.path.join(*parts)


def dirname(path: str) -> str:
    return posixpath.dirname(path) if "://" in path else os.path.dirname(path)


def _basename(path: str) -> str:
    return posixpath.basename(path) if "://" in path else os.path.basename(path)


_join = join_path


def _require(path: str, what: str):
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")


# --------------------------------------------------------------------------- reading


# What a reader needs from a file (the filter validates the features it uses):
#   "images"           image/encoded, image/id, image/class/label    (schema `unlabeled`)
#   "pseudo_labelled"  the same plus probabilities [K], not all zero, and a stored label /
#                      prob checked but not used (schema `unlabeled`)
#   "predictions"      probabilities [K], image/id                   (schema `prediction`)
_SCHEMA_OF = {"images": "unlabeled", "pseudo_labelled": "unlabeled",
              "predictions": "prediction"}
_ABSENT_INT = -(1 << 62)  # FixedLen defaults that no valid record stores
_ABSENT_ID = "\x00absent"
_ABSENT_ID_BYTES = _ABSENT_ID.encode("utf-8")


class FileSlice(NamedTuple):
    """One input file of a reader: the records with index mod total_replicas == task,
    or all of them with task None."""

    path: str
    task: Optional[int] = None


def _top_class(probabilities: tf.Tensor):
    """float32 [n, K] -> (label int64 [n], confidence float32 [n]) as
    `histogram.confidences` computes them with np.argmax, but inside the reader's
    parallel tf.data map (pass 1, which then never copies the vectors into Python).
    TensorFlow's CPU argmax returns the first maximum, as NumPy's (tested, since the API
    leaves ties unspecified). A row holding a NaN gets confidence NaN (np.argmax would
    pick the NaN), which the histogram rejects naming the image; its sum is NaN, which
    also flags rows with both +inf and -inf (whose np.argmax confidence, +inf, is
    rejected as well)."""
    label = tf.argmax(probabilities, axis=1, output_type=tf.int64)
    conf = tf.gather(probabilities, label, batch_dims=1)
    nan = tf.math.is_nan(tf.reduce_sum(probabilities, axis=1))
    return label, tf.where(nan, tf.constant(np.nan, tf.float32), conf)


# (index int64 [n], serialized string [n], file name string [], task int64 []) of both
# parsers; task -1: the whole file.
_PARSER_SIGNATURE = [tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.string),
                     tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)]


def _worker_slice(index, serialized, total_replicas: int, task):
    """The records with index mod total_replicas == task (all of them with task < 0)."""
    if total_replicas <= 1:
        return index, serialized
    keep = (task < 0) | tf.equal(index % total_replicas, task)
    return tf.boolean_mask(index, keep), tf.boolean_mask(serialized, keep)


@functools.lru_cache(maxsize=None)
def _fast_parser(kind: str, num_classes: int, total_replicas: int, top: bool = False):
    """A tf.function (index, serialized, name, task; `_PARSER_SIGNATURE`) -> numpy-ready
    batch of the sliced records: index, `end` (true for `_pipeline`'s end-of-file
    marker), `suspect` (a bool [] that is true when a record needs the checked parser's
    verdict) and

      top=False  id (the stored image/id, `_ABSENT_ID` where none), [image, true_label],
                 [probabilities]: the rows pass 2 selects and writes;
      top=True   label, conf (`_top_class`), [has_pseudo_label]: all pass 1 needs.

    A fixed-length `parse_example` runs ~3x faster than the checked ragged parse of
    `schema` (the whole filter is bound by reading); anything it cannot parse fails the op
    and anything out of range sets `suspect`, and `_read` then re-reads the file with the
    checked parser to name the record. Pass 2 leaves the argmax (NumPy's, on the vectors
    it receives anyway) and the rare derived ids to Python: inside the map they cost
    ~1.5 µs per record of the reader's time. Traced once per process and setting.
    """
    spec = {schema.ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=_ABSENT_ID)}
    if kind != "predictions":
        spec[schema.IMAGE_KEY] = tf.io.FixedLenFeature([], tf.string)
        spec[schema.CLASS_LABEL_KEY] = tf.io.FixedLenFeature([], tf.int64,
                                                             default_value=_ABSENT_INT)
    if kind != "images":
        spec[schema.PROBABILITIES_KEY] = tf.io.FixedLenFeature([num_classes], tf.float32)
    if kind == "pseudo_labelled":
        # Not used (recomputed from the probabilities), but checked as the schema does:
        # a repeated value fails the parse, a label outside [0, K) is suspect.
        spec[schema.LABEL_KEY] = tf.io.FixedLenFeature([], tf.int64,
                                                       default_value=_ABSENT_INT)
        spec[schema.PROB_KEY] = tf.io.FixedLenFeature([], tf.float32, default_value=0.0)

    @tf.function(input_signature=_PARSER_SIGNATURE)
    def parse(index, serialized, name, task):
        del name  # ids are derived in Python (`_fill_ids`)
        end = tf.equal(tf.size(serialized), 0)  # `_pipeline`'s end-of-file marker
        index, serialized = _worker_slice(index, serialized, total_replicas, task)
        features = tf.io.parse_example(serialized, spec)
        out = {"index": index, "end": end}
        if not top:
            out["id"] = features[schema.ID_KEY]
        suspect = tf.constant(False)
        if kind != "predictions":
            value = features[schema.CLASS_LABEL_KEY]
            absent = tf.equal(value, _ABSENT_INT)
            label = value - 1  # stored 1-based
            suspect |= tf.reduce_any(~absent & ((label < 0) | (label >= num_classes)))
            if not top:
                out["image"] = features[schema.IMAGE_KEY]
                out["true_label"] = tf.cast(
                    tf.where(absent, tf.constant(-1, tf.int64), label), tf.int32)
        if kind != "images":
            probabilities = features[schema.PROBABILITIES_KEY]
            if top:
                out["label"], out["conf"] = _top_class(probabilities)
                if kind == "pseudo_labelled":
                    out["has_pseudo_label"] = tf.reduce_any(
                        tf.not_equal(probabilities, 0), axis=1)
            else:
                out["probabilities"] = probabilities
        if kind == "pseudo_labelled":
            stored = features[schema.LABEL_KEY]
            suspect |= tf.reduce_any(tf.not_equal(stored, _ABSENT_INT)
                                     & ((stored < 0) | (stored >= num_classes)))
        out["suspect"] = suspect
        return out

    return parse


@functools.lru_cache(maxsize=None)
def _checked_parser(record_format: str, num_classes: int, total_replicas: int):
    """Like `_fast_parser` with the checked schema parse: features + index + `problem`."""
    fmt = schema.get_format(record_format)

    @tf.function(input_signature=_PARSER_SIGNATURE)
    def parse(index, serialized, name, task):
        end = tf.equal(tf.size(serialized), 0)
        index, serialized = _worker_slice(index, serialized, total_replicas, task)
        features, problems = fmt.parse_checked(serialized, num_classes, name, index)
        return dict(features, index=index, problem=problems, end=end)

    return parse


def _pipeline(files: Sequence[FileSlice], parse, batch_size: int, total_replicas: int,
              name: str = ""):
    """Iterator of the parsed numpy batches of each file in turn, in one tf.data pipeline:
    TFRecordDataset -> enumerate -> batch -> parse(index, serialized, name, task). Each
    file's batches are followed by one whose `end` is true (an empty batch through the
    parser), so that a consumer knows a file is complete before anything of the next file
    (an error included) reaches it.

    One pipeline for all files of a job: building one costs ~0.1 s (tracing, iterator
    set-up), as much as reading 10K records. Nothing but the parser runs per batch: each
    function call in a tf.data stage costs ~0.1-0.5 ms here, ~1 µs per record for a
    trivial one. tf.data's default graph rewrites and autotuning are off: for a pipeline
    this short they only add set-up.
    """
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False
    end = tf.data.Dataset.from_tensors((tf.zeros([0], tf.int64), tf.zeros([0], tf.string)))
    name = tf.constant(name)
    paths = [f.path for f in files]
    if total_replicas <= 1 or all(f.task is None for f in files):
        def per_file(path):
            return (tf.data.TFRecordDataset(path, buffer_size=8 << 20).enumerate()
                    .batch(batch_size).concatenate(end))

        whole = tf.constant(-1, tf.int64)
        dataset = (tf.data.Dataset.from_tensor_slices(paths).flat_map(per_file)
                   .map(lambda index, serialized: parse(index, serialized, name, whole),
                        num_parallel_calls=2))
    else:
        def per_file(path, task):
            # A sliced file keeps ~1/R of each batch: read R batches' worth at a time.
            group = tf.where(task < 0, tf.constant(batch_size, tf.int64),
                             tf.constant(batch_size * total_replicas, tf.int64))
            batches = (tf.data.TFRecordDataset(path, buffer_size=8 << 20).enumerate()
                       .batch(group).concatenate(end))
            return tf.data.Dataset.zip((batches, tf.data.Dataset.from_tensors(task).repeat()))

        tasks = tf.constant([-1 if f.task is None else int(f.task) for f in files], tf.int64)
        dataset = (tf.data.Dataset.from_tensor_slices((paths, tasks)).flat_map(per_file)
                   .map(lambda batch, task: parse(batch[0], batch[1], name, task),
                        num_parallel_calls=2))
    # <= ~4 MiB per batch (`read_rows`); 8 let the reader run ahead while the consumer
    # encodes and writes (~5% faster pass 2 than 2 here).
    return dataset.prefetch(8).with_options(options).as_numpy_iterator()


class _Suspect(Exception):
    """The fast parser saw something the checked parser must name."""


def _read(files: Sequence[FileSlice], kind: str, layout: InputLayout, top: bool = False,
          batch_size: Optional[int] = None) -> Iterator[tuple]:
    """(file number, numpy batch or None) for each file in turn; None (once per file,
    after its batches) says that the file was read completely. Batches as
    `_fast_parser`'s (index int64 [n], ...), never empty; rows: ids are filled in
    (`_fill_ids`) and pseudo-labelled batches get `label`, `conf` (NumPy argmax).

    A plain TFRecordDataset rather than `readers.read_examples`: that reader's per-file
    set-up costs about 1.5 s of graph building. Bad records raise a ValueError naming the
    file and record index (found by re-reading the file with the checked parser); a
    record the parser cannot decode at all (or broken framing) names the file and the
    last good index.
    """
    if not files:
        return
    batch_size = batch_size or read_rows(layout.num_classes)
    parse = _fast_parser(kind, layout.num_classes, layout.total_replicas, top)
    current = 0
    try:
        for batch in _pipeline(files, parse, batch_size, layout.total_replicas):
            if batch.pop("end"):
                yield current, None
                current += 1
                continue
            if batch.pop("suspect"):
                raise _Suspect()
            if not len(batch["index"]):
                continue
            path = files[current].path
            if not top:
                _fill_ids(batch, _basename(path))
            if kind == "pseudo_labelled":
                if not top:
                    batch["label"], batch["conf"] = _argmax(batch["probabilities"])
                _check_pseudo_labelled(batch, path)
            yield current, batch
    except (_Suspect, tf.errors.OpError) as e:
        fast_error = "" if isinstance(e, _Suspect) else e.message
    else:
        return
    # Batches reach us in order, each file's end marker after its batches: the error is
    # in file `current`. Name the bad record: the checked parser over that file raises
    # at it.
    _diagnose(files[current], kind, layout, batch_size, fast_error)


def _diagnose(file: FileSlice, kind: str, layout: InputLayout, batch_size: int,
              fast_error: str):
    """Re-reads `file` with the checked parser and raises a ValueError naming the first
    bad record (or, if the checked parser accepts every record, the file)."""
    record_format = _SCHEMA_OF[kind]
    path = file.path
    checked = _checked_parser(record_format, layout.num_classes, layout.total_replicas)
    iterator = _pipeline([file], checked, batch_size, layout.total_replicas, name=path)
    last = -1
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            break
        except tf.errors.OpError as e:
            raise ValueError(f"Cannot read {path} after record {last}: a record that is not "
                             f"a {record_format} Example (or stores a key with another "
                             f"type), or a truncated/corrupted file. {e.message}") from None
        if batch.pop("end"):
            continue
        problems = batch.pop("problem")
        bad = problems != b""
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ValueError(f"Bad {record_format} record {int(batch['index'][i])} in "
                             f"{path}: {problems[i].decode('utf-8', 'replace')}")
        if kind == "pseudo_labelled":
            _check_pseudo_labelled(batch, path)
        if len(batch["index"]):
            last = int(batch["index"][-1])
    raise ValueError(f"Cannot read {path}: a record is malformed for the filter (missing "
                     f"or repeated image/encoded, image/id, image/class/label or "
                     f"probabilities). {fast_error}".rstrip())


def _batches(path: str, kind: str, layout: InputLayout, task: Optional[int],
             batch_size: Optional[int] = None,
             top: bool = False) -> Iterator[Dict[str, np.ndarray]]:
    """`_read` of one file: its numpy batches (task None: every record, else the records
    whose index mod total_replicas == task)."""
    sliced = task if task is not None and layout.total_replicas > 1 else None
    for _, batch in _read([FileSlice(path, sliced)], kind, layout, top, batch_size):
        if batch is not None:
            yield batch


def _per_file(stream: Iterator[tuple], num_files: int) -> Iterator[tuple]:
    """`_read`'s stream -> (file number, iterator of that file's batches) for every file
    in order (an empty iterator for a file without records). Consume each file's
    iterator before asking for the next file."""

    def batches_of(number):
        for got, batch in stream:
            if got != number:
                raise RuntimeError(f"reader out of step: file {got} while reading {number}")
            if batch is None:
                return
            yield batch
        raise RuntimeError(f"reader ended before the end of file {number}")

    for number in range(num_files):
        batches = batches_of(number)
        yield number, batches
        for _ in batches:  # what the consumer left of this file
            pass


def _fill_ids(batch: Dict[str, np.ndarray], basename: str):
    """Where a record stores no image/id, its id becomes '<basename>:<record index>'."""
    absent = np.flatnonzero(batch["id"] == _ABSENT_ID_BYTES)
    if len(absent):
        ids = batch["id"] = batch["id"].copy()  # the iterator's arrays are read-only
        for i in absent.tolist():
            ids[i] = f"{basename}:{int(batch['index'][i])}".encode("utf-8")


def _argmax(probabilities: np.ndarray):
    """float32 [n, K] -> (labels int64 [n], their probabilities float32 [n]), as
    `histogram.confidences` (np.argmax: the first maximum; a NaN row picks its NaN)."""
    labels = np.argmax(probabilities, axis=1)
    return labels.astype(np.int64), probabilities[np.arange(len(labels)), labels]


def _rows(batches) -> Iterator[Dict]:
    for batch in batches:
        for i in range(len(batch["index"])):
            yield {key: value[i] for key, value in batch.items()}


def _check_pseudo_labelled(batch, path: str):
    """ValueError naming the first record whose probabilities are all zero (or absent:
    parsed as zeros). Rows: only a row whose maximum is 0 can be one."""
    if "has_pseudo_label" in batch:
        missing = ~batch["has_pseudo_label"]
    else:
        missing = batch["conf"] == 0
        rows = np.flatnonzero(missing)
        if len(rows):
            missing[rows] = ~np.any(batch["probabilities"][rows] != 0, axis=1)
    if np.any(missing):
        index = int(batch["index"][int(np.argmax(missing))])
        raise ValueError(
            f"Record {index} of {path} holds no teacher probabilities (missing or all "
            f"zero). Without --prediction_dir every input record must be pseudo-labelled; "
            f"for raw images plus train-info-* predictions set --prediction_dir.")


def _stored_id(prediction: Dict, basename: str) -> str:
    value = prediction["id"].decode("utf-8")
    return "" if value == f"{basename}:{int(prediction['index'])}" else value


def info_count(layout: InputLayout, shard: int, task: int) -> Optional[int]:
    """`image_num` of the info file of (shard, worker=task), or None without info_dir."""
    path = layout.info_path(shard, task)
    if path is None:
        return None
    _require(path, "Info file")
    try:
        return int(fileio.read_json(path)["image_num"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"Info file {path} is not {{\"image_num\": N}}: {e}") from None


def _check_info(layout: InputLayout, shard: int, task: int, count: int, what: str):
    expected = info_count(layout, shard, task)
    if expected is not None and expected != count:
        raise ValueError(f"Count mismatch: info file {layout.info_path(shard, task)} says "
                         f"image_num={expected}, but {what} holds {count} records")


def check_slices(layout: InputLayout, shard: int):
    """Separate layout: prediction files of workers 0..R-1 exist and no worker R
    (the original asserted the same, probing only powers of two, §4.1)."""
    if not layout.separate_predictions:
        return
    missing = [layout.prediction_path(shard, w) for w in range(layout.total_replicas)
               if not tf.io.gfile.exists(layout.prediction_path(shard, w))]
    if missing:
        raise FileNotFoundError(f"Missing prediction files for shard {shard} "
                                f"(--total_replicas={layout.total_replicas}): {missing}")
    extra = layout.prediction_path(shard, layout.total_replicas)
    if tf.io.gfile.exists(extra):
        raise ValueError(f"{extra} exists: the predictions have more worker slices than "
                         f"--total_replicas={layout.total_replicas}")


def _pseudo_labelled_files(layout: InputLayout, shards: Sequence[int],
                           task: int) -> List[FileSlice]:
    files = []
    for shard in shards:
        path, sliced = layout.pseudo_labelled_slice(shard, task)
        _require(path, "Input shard")
        files.append(FileSlice(path, sliced))
    return files


def shard_top_classes(layout: InputLayout, shards: Sequence[int],
                      task: int) -> Iterator[tuple]:
    """Pass 1 input of several shards (one task), read by one pipeline: (shard, batches)
    per shard in order, batches = iterator of (label int64 [n], confidence float32 [n]):
    the argmax class of each image's prediction and its probability (NaN for a row with
    a NaN, see `_top_class`). Consume each shard's batches before the next shard."""
    for shard in shards:
        check_slices(layout, shard)
    if layout.separate_predictions:
        files = [FileSlice(layout.prediction_path(shard, task)) for shard in shards]
        kind = "predictions"
    else:
        files, kind = _pseudo_labelled_files(layout, shards, task), "pseudo_labelled"

    def top(shard, path, batches):
        count = 0
        for batch in batches:
            count += len(batch["index"])
            yield batch["label"], batch["conf"]
        if layout.separate_predictions:
            _check_info(layout, shard, task, count, path)

    for number, batches in _per_file(_read(files, kind, layout, top=True), len(files)):
        yield shards[number], top(shards[number], files[number].path, batches)


def top_classes(layout: InputLayout, shard: int, task: int) -> Iterator[tuple]:
    """`shard_top_classes` of one shard: its (label, confidence) batches."""
    for _, batches in shard_top_classes(layout, [shard], task):
        yield from batches


# --------------------------------------------------------------------------- joining


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
    _require(layout.image_path(shard), "Input shard")
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
    files = _pseudo_labelled_files(layout, shards, task)

    def items(batches):
        for batch in batches:
            # Ids stay bytes: hashing and encoding take them as they are.
            yield ItemBatch(batch["id"], batch["image"], batch["true_label"],
                            batch["probabilities"], batch["label"], batch["conf"])

    for number, batches in _per_file(_read(files, "pseudo_labelled", layout), len(files)):
        yield shards[number], items(batches)


def _decoded(values) -> List[str]:
    return [v.decode("utf-8") for v in values]


def _slice_text(layout: InputLayout, task: int) -> str:
    if layout.total_replicas == 1:
        return ""
    return f" (records with index mod {layout.total_replicas} == {task})"


def _count_error(layout, shard, task, image_path, num_images, pred_path, num_preds):
    return ValueError(
        f"Count mismatch for shard {shard}, task {task}: {image_path}"
        f"{_slice_text(layout, task)} holds {num_images} images but {pred_path} holds "
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
    pred_base = _basename(pred_path)
    images = _Rows(_batches(image_path, "images", layout, task))
    predictions = _Rows(_batches(pred_path, "predictions", layout, None))
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
            if not stored or stored == f"{pred_base}:{int(prediction['index'][k])}":
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
    _check_info(layout, shard, task, n, f"{image_path}{_slice_text(layout, task)}")


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


def _partition_join(layout: InputLayout, shard: int, task: int, tmp_dir: str,
                    expected_records: Optional[int]) -> Iterator[Item]:
    image_path = layout.image_path(shard)
    pred_path = layout.prediction_path(shard, task)
    pred_base = _basename(pred_path)
    if expected_records is None:
        expected_records = sum(len(b["index"]) for b in _batches(pred_path, "predictions",
                                                                 layout, None))
    num_buckets = num_join_buckets(expected_records, layout.num_classes)
    work = _join(tmp_dir, f"join-{shard:05d}-{task}-{uuid.uuid4().hex}")
    tf.io.gfile.makedirs(work)
    pred_files = [_join(work, f"pred-{b:05d}") for b in range(num_buckets)]
    image_files = [_join(work, f"image-{b:05d}") for b in range(num_buckets)]
    try:
        def predictions():
            for row in _rows(_batches(pred_path, "predictions", layout, None)):
                stored = _stored_id(row, pred_base)
                if not stored:
                    raise ValueError(
                        f"Record {int(row['index'])} of {pred_path} stores no image/id, but "
                        f"the predictions that do are not in the order of {image_path}; "
                        f"predictions without ids must follow the image order")
                yield _bucket(stored, num_buckets), _pack(stored, int(row["index"]),
                                                          probabilities=row["probabilities"])

        def images():
            for row in _rows(_batches(image_path, "images", layout, task)):
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
                    f"{_slice_text(layout, task)}, e.g. ids {sorted(table)[:5]}")
        _check_info(layout, shard, task, n, f"{image_path}{_slice_text(layout, task)}")
    finally:
        if tf.io.gfile.exists(work):
            tf.io.gfile.rmtree(work)
