"""Reading the filter's input files (`nst.pseudo.layout`) in numpy batches, and naming
the bad record when one is found; pass 1's readers.

One tf.data pipeline reads all the files of a job in turn (`_pipeline`) through
`parsers.fast_parser`. A record that parser cannot judge makes `read` re-read that file
with `parsers.checked_parser`, whose `problem` names the record (`_diagnose`).

  shard_top_classes / top_classes   pass 1: (label, confidence) batches of each shard
  read / file_batches / per_file    the batches the joins of pass 2 use (`nst.pseudo.join`)
"""

from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf

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


class _Suspect(Exception):
    """The fast parser saw something the checked parser must name."""


def read(files: Sequence[FileSlice], kind: str, layout: InputLayout, top: bool = False,
         batch_size: Optional[int] = None) -> Iterator[tuple]:
    """(file number, numpy batch or None) for each file in turn; None (once per file,
    after its batches) says that the file was read completely. `kind` as in
    `nst.pseudo.parsers`. Batches as `parsers.fast_parser`'s (index int64 [n], ...), never
    empty; rows: ids are filled in (`_fill_ids`) and pseudo-labelled batches get `label`,
    `conf` (NumPy argmax).

    A plain TFRecordDataset rather than `readers.read_examples`: that reader's per-file
    set-up costs about 1.5 s of graph building. Bad records raise a ValueError naming the
    file and record index (found by re-reading the file with the checked parser); a
    record the parser cannot decode at all (or broken framing) names the file and the
    last good index.
    """
    if not files:
        return
    batch_size = batch_size or read_rows(layout.num_classes)
    parse = parsers.fast_parser(kind, layout.num_classes, layout.total_replicas, top)
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
                _fill_ids(batch, fileio.basename(path))
            if kind == "pseudo_labelled":
                if not top:
                    batch["label"], batch["conf"] = hist_lib.argmax_rows(
                        batch["probabilities"])
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
    record_format = parsers.SCHEMA_OF[kind]
    path = file.path
    checked = parsers.checked_parser(record_format, layout.num_classes,
                                     layout.total_replicas)
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
                     f"or repeated {schema.IMAGE_KEY}, {schema.ID_KEY}, "
                     f"{schema.CLASS_LABEL_KEY} or {schema.PROBABILITIES_KEY}). "
                     f"{fast_error}".rstrip())


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
