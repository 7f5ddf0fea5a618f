"""Reading the filter's input files (`nst.pseudo.layout`) in numpy batches, and naming
the bad record when one is found; pass 1's readers.

One tf.data pipeline reads all the files of a job in turn (`_pipeline`) through
`parsers.fast_parser`. When that pipeline fails in a file (an unreadable record, one the
parser cannot parse or judge), `read` re-reads that file in a second, slower pass
(`_diagnose`) that names the first bad record exactly: its index in the file, whatever
the batch size.

  shard_top_classes / top_classes   pass 1: (label, confidence) batches of each shard
  read / file_batches / per_file    the batches the joins of pass 2 use (`nst.pseudo.join`)
"""

import re
from typing import Callable, Dict, Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf
from google.protobuf import message as protobuf_message

from nst import fileio
from nst.data import schema
from nst.pseudo import histogram as hist_lib
from nst.pseudo import parsers
from nst.pseudo.layout import (FileSlice, InputLayout, check_info, check_slices,
                               pseudo_labelled_files)

# Reader batches: up to 1,024 records (per-batch costs of tf.data and Python made pass 2
# ~10% slower at 256) and ~4 MiB of probabilities (64 records at least), so that the
# prefetched batches stay ~32 MiB whatever the class count.
_READ_ROWS = (64, 1024)
_READ_BYTES = 4 << 20
# The reader's parallelism: files are read one after the other (no parallel reads, 8 MiB
# read buffer), the parser runs on 2 batches at once, 8 parsed batches are prefetched.
READ_BUFFER_BYTES = 8 << 20
PARSE_CALLS = 2
PREFETCH_BATCHES = 8


def read_rows(num_classes: int) -> int:
    """Records per reader batch for vectors of `num_classes` float32."""
    low, high = _READ_ROWS
    return int(min(high, max(low, _READ_BYTES // (4 * num_classes))))


def pipeline_options() -> tf.data.Options:
    """The reader's tf.data options: default graph rewrites and autotuning off."""
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False
    return options


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
    options = pipeline_options()
    end = tf.data.Dataset.from_tensors((tf.zeros([0], tf.int64), tf.zeros([0], tf.string)))
    name = tf.constant(name)
    paths = [f.path for f in files]
    if total_replicas <= 1 or all(f.task is None for f in files):
        def per_file(path):
            return (tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER_BYTES).enumerate()
                    .batch(batch_size).concatenate(end))

        whole = tf.constant(-1, tf.int64)
        dataset = (tf.data.Dataset.from_tensor_slices(paths).flat_map(per_file)
                   .map(lambda index, serialized: parse(index, serialized, name, whole),
                        num_parallel_calls=PARSE_CALLS))
    else:
        def per_file(path, task):
            # A sliced file keeps ~1/R of each batch: read R batches' worth at a time.
            group = tf.where(task < 0, tf.constant(batch_size, tf.int64),
                             tf.constant(batch_size * total_replicas, tf.int64))
            batches = (tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER_BYTES)
                       .enumerate().batch(group).concatenate(end))
            return tf.data.Dataset.zip((batches, tf.data.Dataset.from_tensors(task).repeat()))

        tasks = tf.constant([-1 if f.task is None else int(f.task) for f in files], tf.int64)
        dataset = (tf.data.Dataset.from_tensor_slices((paths, tasks)).flat_map(per_file)
                   .map(lambda batch, task: parse(batch[0], batch[1], name, task),
                        num_parallel_calls=PARSE_CALLS))
    # <= ~4 MiB per batch (`read_rows`); 8 let the reader run ahead while the consumer
    # encodes and writes (~5% faster pass 2 than 2 here).
    return dataset.prefetch(PREFETCH_BATCHES).with_options(options).as_numpy_iterator()


# What the reader's tf.data iterator raises for a bad file: an OpError, or a
# UnicodeDecodeError when TensorFlow's error message quotes a record's bytes that are not
# UTF-8 (parse_example's "Could not parse example input, value: '...'").
_READ_ERRORS = (tf.errors.OpError, UnicodeDecodeError)


def read(files: Sequence[FileSlice], kind: str, layout: InputLayout, top: bool = False,
         batch_size: Optional[int] = None) -> Iterator[tuple]:
    """(file number, numpy batch or None) for each file in turn; None (once per file,
    after its batches) says that the file was read completely. `kind` as in
    `nst.pseudo.parsers`. Batches as `parsers.fast_parser`'s (index int64 [n], ...), never
    empty; rows: ids are filled in (`_fill_ids`) and pseudo-labelled batches get `label`,
    `conf` (NumPy argmax).

    A plain TFRecordDataset rather than `readers.read_examples`: that reader's per-file
    set-up costs about 1.5 s of graph building. A bad record (unreadable, truncated, not
    parsable, or invalid for the filter) raises a ValueError naming its index in the file
    and the file (`_diagnose`), after the batches of the records before its batch. A file
    is complete only if its records fill it: TensorFlow reads a file cut inside a record's
    header as a clean end (one `stat` per file finds that).
    """
    if not files:
        return
    batch_size = batch_size or read_rows(layout.num_classes)
    parse = parsers.fast_parser(kind, layout.num_classes, layout.total_replicas, top)
    batches = _pipeline(files, parse, batch_size, layout.total_replicas)
    current = consumed = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except _READ_ERRORS as e:
            fast_error = _error_text(e)
            break
        consumed += int(batch.pop("nbytes"))
        if batch.pop("end"):
            size = tf.io.gfile.stat(files[current].path).length
            if consumed != size:
                fast_error = f"{consumed} of its {size} bytes are whole records"
                break
            yield current, None
            current, consumed = current + 1, 0
            continue
        if batch.pop("suspect"):
            fast_error = ""
            break
        if not len(batch["index"]):
            continue
        path = files[current].path
        if not top:
            _fill_ids(batch, fileio.basename(path))
        if kind == "pseudo_labelled":
            if not top:
                batch["label"], batch["conf"] = hist_lib.argmax_rows(batch["probabilities"])
            _check_pseudo_labelled(batch, path)
        yield current, batch
    # Batches reach us in order, each file's end marker after its batches: the error is
    # in file `current`.
    _diagnose(files[current], kind, layout, batch_size, fast_error)


def _diagnose(file: FileSlice, kind: str, layout: InputLayout, batch_size: int,
              fast_error: str):
    """Re-reads `file`, in which the fast pass failed, and raises a ValueError naming
    the first bad record: its index in the file and the file.

    A second pass, slower than the fast one and run only after a failure: the records in
    batches of `batch_size` (`_raw_batches`, which finds the first unreadable record
    itself), each batch judged by `_Verdict`; in the first batch found bad, a bisection
    over its prefixes finds the first bad record (~log2(batch_size) more verdicts), whose
    verdict alone gives the message. Records outside the file's slice (`FileSlice.task`)
    are read but not parsed, as in the fast pass.
    """
    verdict = _Verdict(kind, layout, file)
    try:
        for index, serialized in _raw_batches(file.path, batch_size):
            if verdict(index, serialized) is None:
                continue
            bad = _first_failing(len(index),
                                 lambda n: verdict(index[:n], serialized[:n]) is not None)
            raise ValueError(verdict(index[bad:bad + 1], serialized[bad:bad + 1]))
    except _Unreadable as e:
        raise ValueError(f"Record {e.index} of {file.path} cannot be read: {e.reason}.") \
            from None
    # Nothing fails when read again: the first error was not the data's.
    raise ValueError(f"Cannot read {file.path}, although each of its records reads and "
                     f"parses when read again: {fast_error or 'no error message'}.")


def _first_failing(n: int, fails: Callable[[int], bool]) -> int:
    """The position of the first bad record of a batch of n, given fails(m): whether its
    first m records hold a bad one (false for m = 0, true for m = n; monotone)."""
    good, bad = 0, n  # fails(good) is false, fails(bad) true
    while bad - good > 1:
        middle = (good + bad) // 2
        if fails(middle):
            bad = middle
        else:
            good = middle
    return bad - 1


class _Unreadable(Exception):
    """Record `index` of a file cannot be read (`reason`, one clause)."""

    def __init__(self, index: int, reason: str):
        super().__init__(index, reason)
        self.index, self.reason = index, reason


def _raw_batches(path: str, batch_size: int) -> Iterator[tuple]:
    """(index int64 [n], serialized object [n]) of the records of `path` in batches of up
    to `batch_size`, then `_Unreadable` at the first record that cannot be read (after a
    batch of the readable records before it). A batch that fails as a whole is read again
    one record at a time to find that record."""

    def records(start):
        return tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER_BYTES).skip(start)

    def framed(serialized):
        return sum(map(len, serialized)) + parsers.FRAMING_BYTES * len(serialized)

    def check_end(start, consumed):
        size = tf.io.gfile.stat(path).length
        if consumed != size:  # TensorFlow's clean end inside a record's header
            raise _Unreadable(start, f"the file is truncated or corrupted there (its last "
                                     f"{size - consumed} bytes are not a whole record)")

    start = consumed = 0
    while True:
        batches = records(start).batch(batch_size).as_numpy_iterator()
        while True:
            try:
                serialized = next(batches)
            except StopIteration:
                check_end(start, consumed)
                return
            except _READ_ERRORS:
                break
            yield np.arange(start, start + len(serialized), dtype=np.int64), serialized
            start += len(serialized)
            consumed += framed(serialized)
        one_by_one = records(start).take(batch_size).as_numpy_iterator()
        good, reason = [], None
        while reason is None:
            try:
                good.append(next(one_by_one))
            except StopIteration:
                break
            except tf.errors.DataLossError as e:
                reason = f"the file is truncated or corrupted there ({_error_text(e)})"
            except _READ_ERRORS as e:
                reason = _error_text(e)
        if good:
            yield (np.arange(start, start + len(good), dtype=np.int64),
                   np.array(good, dtype=object))
        if reason is not None:
            raise _Unreadable(start + len(good), reason)
        if not good:  # the batch failed, but alone its records end here
            check_end(start, consumed)
            return
        start += len(good)  # read this time: go on after it
        consumed += framed(good)


class _Verdict:
    """verdict(index, serialized) of the records of one file: None if all of them are
    valid for the filter, else why not, in a message that names the record (and is
    exact) when there is one record. Checks, in order: the checked parse (an Example of
    the kind's format, each feature valid), pseudo-labelled records' probabilities, the
    fast parser's (what the fast pass failed on)."""

    def __init__(self, kind: str, layout: InputLayout, file: FileSlice):
        self.kind, self.path = kind, file.path
        self.record_format = parsers.SCHEMA_OF[kind]
        self.checked = parsers.checked_parser(self.record_format, layout.num_classes,
                                              layout.total_replicas)
        self.fast = parsers.fast_parser(kind, layout.num_classes, layout.total_replicas)
        self.args = (tf.constant(file.path),
                     tf.constant(-1 if file.task is None else file.task, tf.int64))
        self.num_classes = layout.num_classes

    def _record(self, index) -> str:
        return f"Record {int(index[0])} of {self.path}"

    def __call__(self, index: np.ndarray, serialized: np.ndarray) -> Optional[str]:
        what = parsers.RECORD_OF[self.kind]
        try:
            batch = self.checked(index, serialized, *self.args)
        except _READ_ERRORS as e:
            return f"{self._record(index)} is not {what}: {self._unparsable(serialized, e)}."
        problems = batch["problem"].numpy()
        bad = problems != b""
        if np.any(bad):
            i = int(np.argmax(bad))
            return (f"Record {int(batch['index'][i])} of {self.path} is not valid as "
                    f"{what}: {problems[i].decode('utf-8', 'replace')}.")
        if self.kind == "pseudo_labelled":
            try:
                _check_pseudo_labelled({k: v.numpy() for k, v in batch.items()}, self.path)
            except ValueError as e:
                return str(e)
        try:
            fast = self.fast(index, serialized, *self.args)
        except _READ_ERRORS as e:
            return (f"{self._record(index)} is not {what} the filter can read: it lacks or "
                    f"repeats one of {schema.IMAGE_KEY}, {schema.ID_KEY}, "
                    f"{schema.CLASS_LABEL_KEY}, {schema.PROBABILITIES_KEY} "
                    f"({_error_text(e)}).")
        if fast["suspect"]:
            return (f"{self._record(index)} is not valid as {what}: a stored class label "
                    f"is outside [0, {self.num_classes}).")
        return None

    def _unparsable(self, serialized: np.ndarray, error: Exception) -> str:
        if len(serialized) == 1:
            try:
                tf.train.Example.FromString(serialized[0])
            except protobuf_message.DecodeError:
                return "it is not a serialized tf.train.Example"
        return (f"TensorFlow cannot parse it as the '{self.record_format}' record format "
                f"({_error_text(error)})")


_TF_NOISE = re.compile(r"\{\{[^}]*\}\}|\s*\[Op:[^\]]*\].*|Name: <unknown>, |Index: \d+\.\s+")


def _error_text(error: Exception, limit: int = 200) -> str:
    """The gist of a TensorFlow error for a message: its last line without the graph
    traceback, node names and the record index within a batch; at most `limit` chars
    (parse errors quote the whole record)."""
    if not isinstance(error, tf.errors.OpError):
        return f"{type(error).__name__}: {error}"
    lines = [line for line in error.message.splitlines()
             if line.strip() and not line.lstrip().startswith("[[")]
    text = _TF_NOISE.sub("", lines[-1] if lines else "").strip()
    text = text.rstrip(" .") or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def file_batches(path: str, kind: str, layout: InputLayout, task: Optional[int],
                 batch_size: Optional[int] = None,
                 top: bool = False) -> Iterator[Dict[str, np.ndarray]]:
    """`read` of one file: its numpy batches (task None: every record, else the records
    whose index mod total_replicas == task)."""
    sliced = task if task is not None and layout.total_replicas > 1 else None
    for _, batch in read([FileSlice(path, sliced)], kind, layout, top, batch_size):
        if batch is not None:
            yield batch


def per_file(stream: Iterator[tuple], num_files: int) -> Iterator[tuple]:
    """`read`'s stream -> (file number, iterator of that file's batches) for every file
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
    absent = np.flatnonzero(batch["id"] == parsers.ABSENT_ID_BYTES)
    if len(absent):
        ids = batch["id"] = batch["id"].copy()  # the iterator's arrays are read-only
        for i in absent.tolist():
            ids[i] = schema.derived_id(basename, int(batch["index"][i])).encode("utf-8")


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


# --------------------------------------------------------------------------- pass 1


def shard_top_classes(layout: InputLayout, shards: Sequence[int],
                      task: int) -> Iterator[tuple]:
    """Pass 1 input of several shards (one task), read by one pipeline: (shard, batches)
    per shard in order, batches = iterator of (label int64 [n], confidence float32 [n]):
    the argmax class of each image's prediction and its probability (NaN for a row with
    a NaN, see `parsers.top_class`). Consume each shard's batches before the next shard."""
    for shard in shards:
        check_slices(layout, shard)
    if layout.separate_predictions:
        files = [FileSlice(layout.prediction_path(shard, task)) for shard in shards]
        kind = "predictions"
    else:
        files, kind = pseudo_labelled_files(layout, shards, task), "pseudo_labelled"

    def top(shard, path, batches):
        count = 0
        for batch in batches:
            count += len(batch["index"])
            yield batch["label"], batch["conf"]
        if layout.separate_predictions:
            check_info(layout, shard, task, count, path)

    for number, batches in per_file(read(files, kind, layout, top=True), len(files)):
        yield shards[number], top(shards[number], files[number].path, batches)


def top_classes(layout: InputLayout, shard: int, task: int) -> Iterator[tuple]:
    """`shard_top_classes` of one shard: its (label, confidence) batches."""
    for _, batches in shard_top_classes(layout, [shard], task):
        yield from batches
