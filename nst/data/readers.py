"""Reading TFRecord shards into located, validated records (spec §5.1 file handling).

`read_examples` yields one dict per record: the format's features (`nst.data.schema`) plus

  file   tf.string  path of the source file
  index  tf.int64   0-based index of the record in that file

File handling: patterns are globbed (local or `gs://`), de-duplicated and sorted; hidden
files (basename starting with '.', e.g. the writers' temporaries) are ignored; a pattern that
matches nothing raises FileNotFoundError naming it. With a `tf.distribute.InputContext` the
sorted list is sharded per input pipeline BEFORE the optional seeded file shuffle, then files
are read by a parallel interleave. With `deterministic=True` (default) and a fixed
`cycle_length`, the order depends only on the files and `seed`.

Sharding (`shard_policy`): 'file' gives file i to pipeline i mod n (as the original, §5.1)
and raises if there are fewer files than pipelines; 'record' makes every pipeline read every
file and keep record i of each file iff i mod n == pipeline id (as the original predict mode,
§3.4); 'auto' (default) uses 'file' when there are at least n files, else 'record' with a
warning.

Bad input is never dropped silently. Each of these is a bad record, named by file and index:
  * bytes that are not a tf.train.Example, or a key stored with the wrong type;
  * a missing required key, a feature with the wrong number of values, a label or class
    outside [0, K) after conversion (`schema.RecordFormat.parse_checked`);
  * broken TFRecord framing (truncated file, corrupted length/CRC): detected by comparing the
    bytes read with the file size, since TensorFlow's own error names no file. The reader
    cannot resynchronise, so the rest of that file is lost; the record index reported is
    the first unreadable one. This costs one `stat` per file when the dataset is built,
    and needs uncompressed TFRecords (what `nst.data.writers` writes).
  * with `decode_images=True`: an image that does not decode (JPEG or PNG, 3 channels).
    This costs a full decode in the reader; images stay encoded bytes in the output.
By default the first bad record raises InvalidArgumentError whose message contains the file
and the index. With `skip_corrupt=True` bad records are dropped, each one logged as an absl
warning and counted in a `SkippedRecords` the caller passes in and reads after iterating.
"""

import concurrent.futures
import re
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
from absl import logging

from nst import fileio
from nst.data import schema

Patterns = Union[str, Sequence[str]]

# TFRecord framing per record: uint64 length + uint32 CRC of it + data + uint32 CRC of data.
_FRAMING_BYTES = 16
_ATTEMPT, _MARKER, _END = 0, 1, 2
_UNDECODABLE = ("not a parseable tf.train.Example with the expected feature types "
                "(corrupt record, or a key stored with another type)")
_UNDECODABLE_OR_IMAGE = _UNDECODABLE + ", or its image does not decode"
_GLOB_CHARS = frozenset("*?[")


# --------------------------------------------------------------------------- files


def _split_patterns(patterns: Patterns) -> List[str]:
    if isinstance(patterns, str):
        patterns = [patterns]
    return [p.strip() for group in patterns for p in group.split(";") if p.strip()]


def _glob(pattern: str) -> List[str]:
    """Matches of one pattern; a literal directory stands for the files inside it."""
    if not _GLOB_CHARS & set(pattern) and tf.io.gfile.isdir(pattern):
        pattern = pattern.rstrip("/") + "/*"
    return [f for f in tf.io.gfile.glob(pattern) if not fileio.basename(f).startswith(".")]


class RecordError(ValueError):
    """A bad record: `file`, `index` (0-based record index in the file) and `reason`.

    Inside tf.data a bad record stops the pipeline through a `tf.debugging.Assert` whose
    data are `[<what> in file] [<file>] [at record index] [<index>] [...<reason>...]`
    (`_raise_on_problem` here, the pseudo-label check of `nst.data.input_pipeline`);
    `from_op_error` recovers the three fields from TensorFlow's error, so a binary can
    say them in one line instead of TensorFlow's wrapped text (`nst.cli_errors`)."""

    def __init__(self, file: str, index: int, reason: str):
        self.file, self.index, self.reason = file, int(index), reason
        super().__init__(f"bad record in {file} at record index {self.index}: {reason}")

    _ASSERTION = re.compile(
        r"assertion failed: \[(?P<what>[^\]]*) in file\] \[(?P<file>.*?)\] "
        r"\[at record index\] \[(?P<index>-?\d+)\] (?P<rest>.*?)(?:\n|$)")

    @classmethod
    def from_op_error(cls, error: BaseException) -> Optional["RecordError"]:
        """The RecordError in a TensorFlow error raised by such an assertion, else None."""
        match = cls._ASSERTION.search(getattr(error, "message", "") or str(error))
        if match is None:
            return None
        parts = [p for p in re.findall(r"\[(.*?)\](?= \[|\s*$)", match["rest"].strip())
                 if p not in (":", "")]
        reason = "; ".join(p.lstrip("- ") for p in parts)
        what = match["what"]
        if what != "Bad record":  # the assertion's own description leads the reason
            reason = f"{what}; {reason}" if reason else what
        return cls(match["file"], int(match["index"]), reason)


def list_files(patterns: Patterns) -> List[str]:
    """Sorted, de-duplicated files matching `patterns`.

    patterns: one string or a sequence of strings; each string may hold several
    ';'-separated glob patterns, file paths or directories. Raises FileNotFoundError naming
    the first pattern that matches no (non-hidden) file.
    """
    split = _split_patterns(patterns)
    if not split:
        raise ValueError(f"No file pattern given: {patterns!r}")
    files = set()
    for pattern in split:
        matched = _glob(pattern)
        if not matched:
            raise FileNotFoundError(f"No files match the pattern {pattern!r}")
        files.update(matched)
    return sorted(files)


def list_unlabeled_files(unlabel_data_dir: str) -> List[str]:
    """Unlabeled files of the original (§3.3): `<dir>/train*` and `<dir>/extra*` for each
    ';'-separated dir. Raises FileNotFoundError naming a dir that holds neither."""
    files = set()
    for directory in _split_patterns(unlabel_data_dir):
        matched = []
        for name in ("train*", "extra*"):
            matched += _glob(directory.rstrip("/") + "/" + name)
        if not matched:
            raise FileNotFoundError(
                f"No unlabeled files in {directory!r} (patterns train*, extra*)")
        files.update(matched)
    if not files:
        raise ValueError(f"No unlabeled data dir given: {unlabel_data_dir!r}")
    return sorted(files)


def shard_files(files: Sequence[str], input_context: Optional[tf.distribute.InputContext],
                shard_policy: str = "auto") -> Tuple[List[str], Optional[Tuple[int, int]]]:
    """Splits sorted `files` for one input pipeline (see the module doc for the policies).

    Returns (files this pipeline reads, record_shard) where record_shard is
    (num_pipelines, pipeline_id) for record-level sharding, else None.
    """
    if shard_policy not in ("auto", "file", "record"):
        raise ValueError(f"shard_policy must be 'auto', 'file' or 'record', got "
                         f"{shard_policy!r}")
    files = list(files)
    if input_context is None or input_context.num_input_pipelines == 1:
        return files, None
    num, pipeline = input_context.num_input_pipelines, input_context.input_pipeline_id
    if shard_policy == "file" or (shard_policy == "auto" and len(files) >= num):
        if len(files) < num:
            raise ValueError(f"File-level sharding needs at least one file per input "
                             f"pipeline: {len(files)} files for {num} pipelines. Write more "
                             f"shards or use shard_policy='record'.")
        return files[pipeline::num], None
    if shard_policy == "auto":
        logging.warning("%d files for %d input pipelines: sharding by record (every "
                        "pipeline reads every file).", len(files), num)
    return files, (num, pipeline)


def _file_sizes(files: Sequence[str]) -> List[int]:
    workers = max(1, min(16, len(files)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda f: tf.io.gfile.stat(f).length, files))


# --------------------------------------------------------------------------- skipping


class SkippedRecords:
    """Tally of records dropped by `skip_corrupt=True`; read `count` after iterating.

    Thread-safe, accumulates over every dataset and iteration it is passed to. `first`
    keeps (file, index, reason) of the first `max_kept` skipped records. With
    `keep_indices`, `indices(file)` gives every skipped index of a file, for a consumer
    that must tell a skipped record from a lost one (one int per skip: off by default,
    as a training input repeats its bad records every epoch).
    """

    def __init__(self, max_kept: int = 100, keep_indices: bool = False):
        self.max_kept = max_kept
        self.keep_indices = keep_indices
        self.first: List[Tuple[str, int, str]] = []
        self._count = 0
        self._indices: Dict[str, List[int]] = {}
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def record(self, file: str, index: int, reason: str) -> int:
        """Counts and logs one skipped record; returns the running count."""
        with self._lock:
            self._count += 1
            count = self._count
            if self.keep_indices:
                self._indices.setdefault(file, []).append(index)
            if len(self.first) < self.max_kept:
                self.first.append((file, index, reason))
        if count <= self.max_kept or count % 1000 == 0:
            logging.warning("Skipping bad record %d of %s: %s (%d skipped so far)",
                            index, file, reason, count)
        return count

    def indices(self, file: str) -> List[int]:
        """Record indices skipped in `file` so far (as the reader names the file)."""
        if not self.keep_indices:
            raise ValueError("SkippedRecords(keep_indices=True) keeps the indices")
        with self._lock:
            return list(self._indices.get(file, ()))

    def _record_tensors(self, files, indices, reasons) -> np.int64:
        """py_function body: counts the records of [n] tensors; returns the running count."""
        count = self.count
        for file, index, reason in zip(files.numpy(), indices.numpy(), reasons.numpy()):
            count = self.record(file.decode("utf-8", "replace"), int(index),
                                reason.decode("utf-8", "replace"))
        return np.int64(count)

    def __repr__(self):
        return f"SkippedRecords(count={self.count})"


# --------------------------------------------------------------------------- reading
# Records travel in blocks of up to `block_size` records of one file: parsing, checking and
# reporting run once per block (tf.data costs are per element), `unbatch` comes last.


def _file_blocks(file, size, parse, record_shard, block_size, buffer_size,
                 undecodable) -> tf.data.Dataset:
    """Blocks of one file as (record, problems): record = features + file + index, all with
    a leading dimension n; problems [n] tf.string, '' for a valid record.

    Each block read becomes an ATTEMPT (the real parse; if any record in it is not a
    parseable Example the op fails and ignore_errors drops the element) followed by a
    MARKER (parses nothing, never fails). A MARKER without its ATTEMPT makes the block
    RETRY record by record, which isolates the undecodable records. Reader errors (which
    name no file) end the file in ignore_errors, so a final END element compares the bytes
    read with the file `size`.
    """
    num, pipeline = record_shard or (1, 0)

    def mine(index):
        return tf.equal(index % num, pipeline)

    def pair(block, record):
        index, serialized = record
        return (tf.stack([block, block]), tf.stack([index, index]),
                tf.stack([serialized, serialized]), tf.constant([_ATTEMPT, _MARKER]))

    def attempt(block, index, serialized, kind):
        own_index = tf.boolean_mask(index, mine(index))
        own_serialized = tf.boolean_mask(serialized, mine(index))
        rows = tf.where(tf.equal(kind, _ATTEMPT), tf.size(own_index), 0)
        features, problems = parse(own_serialized[:rows], file, own_index[:rows])
        nbytes = tf.reduce_sum(tf.cast(tf.strings.length(serialized), tf.int64)
                               + _FRAMING_BYTES)
        return {"kind": kind, "block": block, "index": own_index,
                "serialized": own_serialized, "features": features, "problems": problems,
                "nbytes": tf.where(tf.equal(kind, _MARKER), nbytes, 0), "next": index[-1] + 1}

    def step(state, element):
        last_parsed, consumed, next_index = state
        kind, block = element["kind"], element["block"]
        retry = (tf.equal(kind, _MARKER) & tf.not_equal(last_parsed, block)
                 & (tf.size(element["index"]) > 0))
        broken = tf.equal(kind, _END) & tf.not_equal(consumed, size) & mine(next_index)
        framing = tf.strings.format(
            "broken TFRecord framing (truncated or corrupted file, or unreadable): only {} "
            "of {} bytes read; this and all later records of the file are lost",
            (consumed, size))
        out = {"emit": tf.equal(kind, _ATTEMPT) | retry | broken, "retry": retry,
               "index": tf.where(broken, next_index, element["index"]),
               "serialized": element["serialized"], "features": element["features"],
               "problems": tf.where(broken, framing, element["problems"])}
        state = (tf.where(tf.equal(kind, _ATTEMPT), block, last_parsed),
                 consumed + element["nbytes"],
                 tf.where(tf.equal(kind, _MARKER), element["next"], next_index))
        return state, out

    def parse_one(serialized, index):
        tried = tf.data.Dataset.from_tensors((serialized, index)).map(
            lambda s, i: (i[None],) + tuple(parse(s[None], file, i[None]))).ignore_errors()
        dummy, _ = parse(tf.constant([""]), file, index[None])
        failed = tf.data.Dataset.from_tensors((index[None], dummy, tf.constant([undecodable])))
        return tried.concatenate(failed).take(1)

    def resolve(out):
        retry = tf.cast(out["retry"], tf.int64)
        as_is = tf.data.Dataset.from_tensors(
            (out["index"], out["features"], out["problems"])).take(1 - retry)
        retried = tf.data.Dataset.from_tensor_slices(
            (out["serialized"], out["index"])).take(-retry).flat_map(parse_one)
        return as_is.concatenate(retried)

    def locate(index, features, problems):
        return dict(features, file=tf.fill(tf.shape(index), file), index=index), problems

    records = tf.data.TFRecordDataset(file, buffer_size=buffer_size).enumerate()
    records = records.ignore_errors()  # a reader error ends the file; END reports it
    dummy, _ = parse(tf.constant([""]), file, tf.constant([-1], tf.int64))
    end = tf.data.Dataset.from_tensors({
        "kind": _END, "block": tf.constant(-1, tf.int64), "index": tf.constant([-1], tf.int64),
        "serialized": tf.constant([""]), "features": dummy, "problems": tf.constant([""]),
        "nbytes": tf.constant(0, tf.int64), "next": tf.constant(-1, tf.int64)})
    initial = (tf.constant(-1, tf.int64), tf.constant(0, tf.int64), tf.constant(0, tf.int64))
    return (records.batch(block_size).enumerate()
            .map(pair).unbatch().map(attempt).ignore_errors()
            .concatenate(end).scan(initial, step)
            .filter(lambda out: out["emit"]).flat_map(resolve).map(locate))


def _at(values: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
    """values[i] of a [n] tensor; '' / 0 for i == n."""
    return tf.concat([values, tf.zeros([1], values.dtype)], 0)[i]


def _raise_on_problem(record, problems):
    bad = tf.not_equal(problems, "")
    first = tf.argmax(tf.concat([bad, [True]], 0))
    check = tf.debugging.Assert(~tf.reduce_any(bad), [
        "Bad record in file", _at(record["file"], first), "at record index",
        _at(record["index"], first), ":", _at(problems, first),
        "(skip_corrupt=True skips such records)"])
    with tf.control_dependencies([check]):
        return tf.nest.map_structure(tf.identity, record)


def _skip_on_problem(skipped: SkippedRecords):
    def skip(record, problems):
        bad = tf.not_equal(problems, "")

        def report():
            located = [tf.boolean_mask(t, bad) for t in (record["file"], record["index"],
                                                         problems)]
            return tf.reshape(tf.py_function(skipped._record_tensors, located, tf.int64), [])

        count = tf.cond(tf.reduce_any(bad), report, lambda: tf.constant(0, tf.int64))
        with tf.control_dependencies([count]):
            keep = tf.logical_not(bad)
        return tf.nest.map_structure(lambda t: tf.boolean_mask(t, keep), record)

    return skip


def _read(patterns: Patterns, parse: Callable, *, undecodable: str = _UNDECODABLE,
          input_context=None,
          shard_policy: str = "auto", shuffle_files: bool = False, seed: Optional[int] = None,
          repeat: bool = False, deterministic: bool = True, cycle_length: Optional[int] = None,
          num_parallel_calls: int = tf.data.AUTOTUNE, block_size: int = 64,
          buffer_size: int = 8 << 20, skip_corrupt: bool = False,
          skipped: Optional[SkippedRecords] = None) -> tf.data.Dataset:
    if skip_corrupt and skipped is None:
        raise ValueError("skip_corrupt=True needs skipped=SkippedRecords() so that the "
                         "number of skipped records can be read")
    files, record_shard = shard_files(list_files(patterns), input_context, shard_policy)
    sizes = _file_sizes(files)
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(files, tf.string), tf.constant(sizes, tf.int64)))
    if shuffle_files:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.interleave(
        lambda file, size: _file_blocks(file, size, parse, record_shard, block_size,
                                        buffer_size, undecodable),
        cycle_length=cycle_length or min(len(files), 16), block_length=1,
        num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    check = _skip_on_problem(skipped) if skip_corrupt else _raise_on_problem
    return dataset.map(check).unbatch()


def _images_decode(features: schema.Features, problems: tf.Tensor) -> schema.Features:
    """Makes `features` depend on decoding every image of a valid record, so that an
    undecodable image fails the op like an undecodable Example."""
    def shape(args):
        image, valid = args
        return tf.cond(valid, lambda: tf.shape(tf.io.decode_image(
            image, channels=3, expand_animations=False)), lambda: tf.zeros([3], tf.int32))

    shapes = tf.map_fn(shape, (features["image"], tf.equal(problems, "")),
                       fn_output_signature=tf.TensorSpec([3], tf.int32))
    with tf.control_dependencies([shapes]):
        return dict(features, image=tf.identity(features["image"]))


def read_examples(patterns: Patterns, record_format: Union[str, schema.RecordFormat],
                  num_classes: int, *, decode_images: bool = False,
                  **options) -> tf.data.Dataset:
    """Parsed records of `record_format` (a name of `schema.FORMATS` or a RecordFormat).

    Yields dicts: the format's features (see `nst.data.schema`; probability vectors [K]
    with K = `num_classes`, labels 0-based int32, `image` encoded bytes) plus `file`
    (tf.string) and `index` (tf.int64, record index in the file).

    Args:
      patterns: glob patterns / files / directories, see `list_files`.
      record_format, num_classes: the format and K.
      decode_images: also treat a record whose image does not decode as bad.
      input_context: a `tf.distribute.InputContext` to shard by; `shard_policy` ('auto',
        'file' or 'record') as in the module doc.
      shuffle_files: shuffle this pipeline's files (every epoch when `repeat`);
        reproducible with an int `seed`.
      repeat: repeat the files forever.
      deterministic: keep the interleave order fixed (False: faster, order varies).
      cycle_length: files read concurrently; default min(#files, 16). Keep it fixed for a
        reproducible order. num_parallel_calls: threads of the interleave.
      block_size: records of one file parsed together; files interleave in such blocks.
      buffer_size: read buffer per file in bytes (8 MiB, as the original).
      skip_corrupt, skipped: drop bad records and count them in `skipped` (required
        then) instead of raising.
    """
    record_format = schema.get_format(record_format)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    decode_images = decode_images and "image/encoded" in record_format.required_keys

    def parse(serialized, file, index):
        features, problems = record_format.parse_checked(serialized, num_classes, file, index)
        if decode_images:
            features = _images_decode(features, problems)
        return features, problems

    undecodable = _UNDECODABLE_OR_IMAGE if decode_images else _UNDECODABLE
    return _read(patterns, parse, undecodable=undecodable, **options)


def read_records(patterns: Patterns, **options) -> tf.data.Dataset:
    """Raw records: dicts {'serialized': tf.string, 'file': tf.string, 'index': tf.int64}.

    Same options, file handling and framing checks as `read_examples`, without parsing.
    """
    def parse(serialized, file, index):
        return {"serialized": serialized}, tf.fill(tf.shape(serialized), "")

    return _read(patterns, parse, **options)

