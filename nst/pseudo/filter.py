"""The local filter-and-balance stage (spec §4): four steps over files, no polling.

  1. histogram  per (shard, task): `write_shard_histogram` streams the predictions into a
                K×101 histogram -> <prelim_stats_dir>/prelim_stats_%05d_%d.json
  2. reduce     once: `reduce_histograms` sums all shard histograms (error naming any
                missing file) -> <prelim_stats_dir>/total_counts.json, total_counts_sum.json,
                <output_dir>/threshold.json, num_image_across_cat.json, filter_config.json
  3. select     per (shard, task): `select_shard` joins images with predictions by id,
                keeps θ_c <= p <= max_prob, writes each kept image `copies` times, shuffled
                -> <output_dir>/data/train-%d-%05d-of-%05d (task, shard, num_shards),
                   <output_dir>/stats/stats_%05d_%d.json = {"<class>": copies written}
  4. finalize   once: `finalize_stats` (error naming any missing stats file)
                -> <output_dir>/stats/final_stats.json

Every file is written atomically (temporary name + rename), so a killed step leaves
either nothing or a complete file; re-running a step redoes exactly the unfinished work,
and first deletes the hidden temporaries a killed run left of the files it writes
(`fileio.remove_temporaries`: each output has exactly one writing job).
A select step whose stats file exists is finished and is skipped; the data file is
published before the stats file, so an unfinished one is rewritten from scratch — the
copy counts (seeded per image id) and the shuffle (seeded per shard) make the rewrite
identical. Memory: a K×101 histogram, the thresholds, one shuffle buffer of serialized
records and, only when stored prediction ids are out of image order, one hash-join bucket.

`run_all` runs the four steps in one process (the pipeline's filter stage).

The algorithm itself is in `histogram` (buckets, thresholds) and `select` (copy counts,
shuffling, final statistics) as pure functions; this module adds the files. The
settings, their flags and the files' names are `nst.pseudo.filter_config`'s
(`FilterConfig`, `define_flags`, `output_paths`, ...), re-exported here.
"""

import contextlib
import json
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from nst import fileio
from nst.data import wire, writers
from nst.pseudo import histogram as hist_lib
from nst.pseudo import join as join_lib
from nst.pseudo import reader
from nst.pseudo import select as select_lib
# Re-exported: callers that know the filter as one module (`filter_lib.FilterConfig`,
# `filter_lib.define_flags`, `filter_lib.output_paths`) keep working.
from nst.pseudo.filter_config import (HELP, INT_BOOL_FLAGS, OUTPUT_FILES,  # noqa: F401
                                      FilterConfig, config_from_flags, define_flags,
                                      flag_definitions, output_path, output_paths,
                                      stats_root)


def _write_json(path: str, obj, compact: bool = False):
    """Writes `obj` to `path` atomically, after deleting `path`'s stale temporaries: every
    JSON file of the filter has one writing job (its (shard, task), or the one reduce or
    finalize), so a temporary under its name is a killed run's."""
    tf.io.gfile.makedirs(fileio.dirname(path))
    fileio.remove_temporaries(path)
    if compact:  # K×101 pairs: one line instead of ~200K indented ones
        fileio.atomic_write_text(path, json.dumps(obj, separators=(",", ":")) + "\n")
    else:
        fileio.atomic_write_json(path, obj)


def _read_json(path: str, what: str):
    try:
        return fileio.read_json(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None


def is_master(shard: int, task: int) -> bool:
    """The original's master job (§4.1): shard 0, task 0."""
    return shard == 0 and task == 0


# --------------------------------------------------------------------------- 1. histogram


def _histograms(config: FilterConfig, shards: Sequence[int], task: int):
    """(shard, int64 [K, 101] histogram of (shard, task)'s predictions) for each shard in
    turn, streamed batch by batch through one reader."""
    for shard, batches in reader.shard_top_classes(config.layout, shards, task):
        total = np.zeros((config.num_label_classes, hist_lib.NUM_BUCKETS), np.int64)
        for labels, conf in batches:
            total += hist_lib.histogram(labels, conf, config.num_label_classes)
        yield shard, total


def compute_shard_histogram(config: FilterConfig, shard: int, task: int) -> np.ndarray:
    """int64 [K, 101] histogram of (shard, task)'s predictions, streamed batch by batch."""
    config.check_task(shard, task)
    return next(_histograms(config, [shard], task))[1]


def write_shard_histograms(config: FilterConfig, shards: Sequence[int], task: int,
                           overwrite: bool = False) -> List[str]:
    """Pass 1 for several shards of one task (one reader for all of them: a job that
    takes many small shards does not pay a reader set-up per shard); an existing
    histogram is kept unless `overwrite`. Returns the histogram paths, one per shard."""
    todo = []
    for shard in shards:
        config.check_task(shard, task)
        path = config.histogram_path(shard, task)
        if not overwrite and tf.io.gfile.exists(path):
            logging.info("%s exists: histogram of shard %d task %d already done", path,
                         shard, task)
        else:
            todo.append(shard)
    for shard, hist in _histograms(config, todo, task):
        path = config.histogram_path(shard, task)
        _write_json(path, hist_lib.histogram_to_json(hist), compact=True)
        logging.info("Wrote %s (%d images)", path, int(hist.sum()))
    return [config.histogram_path(shard, task) for shard in shards]


def write_shard_histogram(config: FilterConfig, shard: int, task: int,
                          overwrite: bool = False) -> str:
    """Pass 1 for one (shard, task); an existing histogram is kept unless `overwrite`."""
    return write_shard_histograms(config, [shard], task, overwrite)[0]


def missing_histograms(config: FilterConfig) -> List[str]:
    """Histogram files the reduce step needs that do not exist yet."""
    return [config.histogram_path(s, t) for s in config.histogram_shards()
            for t in range(config.total_replicas)
            if not tf.io.gfile.exists(config.histogram_path(s, t))]


def read_shard_histogram(config: FilterConfig, shard: int, task: int) -> np.ndarray:
    path = config.histogram_path(shard, task)
    return hist_lib.histogram_from_json(_read_json(path, "Histogram"),
                                        config.num_label_classes, source=path)


# --------------------------------------------------------------------------- 2. reduce


def reduce_histograms(config: FilterConfig) -> hist_lib.Thresholds:
    """Sums every shard histogram and picks the per-class thresholds (§4.2).

    Raises FileNotFoundError listing the missing histogram files (never waits), and
    ValueError as `publish_thresholds`.
    """
    missing = missing_histograms(config)
    if missing:
        raise FileNotFoundError(
            f"Cannot reduce: {len(missing)} shard histogram(s) missing; run "
            f"--only_get_stats=1 for those shards/tasks first: {missing}")
    total = np.zeros((config.num_label_classes, hist_lib.NUM_BUCKETS), np.int64)
    for shard in config.histogram_shards():
        for task in range(config.total_replicas):
            total += read_shard_histogram(config, shard, task)
    return publish_thresholds(config, total)


def publish_thresholds(config: FilterConfig, total: np.ndarray) -> hist_lib.Thresholds:
    """Global histogram int64 [K, 101] -> thresholds and the reduce step's files
    (shared by `reduce_histograms` and the Beam pipeline's combine).

    Raises ValueError if an existing threshold.json differs from the recomputed one
    (stale output of another run: the selected shards would not match).
    """
    thresholds = hist_lib.choose_thresholds(total, config.num_image, config.min_threshold,
                                            config.max_prob, config.use_top, config.use_all)
    threshold_path = config.path("threshold.json")
    if tf.io.gfile.exists(threshold_path):
        # A re-run may rewrite identical files; anything else would mix two selections.
        restart = (f"Delete {config.output_dir} (and its prelim stats) to start over, or "
                   f"use another --output_dir.")
        _check_settings(config, f"The existing {threshold_path} was", restart)
        old = hist_lib.Thresholds.from_json(_read_json(threshold_path, "Thresholds"),
                                            config.num_label_classes, threshold_path)
        if old != thresholds:
            raise ValueError(f"{threshold_path} exists but differs from the thresholds "
                             f"recomputed from the current histograms. {restart}")
    _write_json(config.path("total_counts.json"),
                hist_lib.histogram_to_json(total, omit_empty=False), compact=True)
    _write_json(config.path("total_counts_sum.json"),
                hist_lib.histogram_to_json(hist_lib.cumulative_from_top(total),
                                           omit_empty=False), compact=True)
    _write_json(config.path("filter_config.json"), config.reduce_settings())
    _write_json(config.path("num_image_across_cat.json"),
                {"num_image_acorss_cat": thresholds.num_image_across_cat(config.num_image)})
    # threshold.json last: its existence tells the select step that the reduce is done.
    _write_json(threshold_path, thresholds.to_json())
    logging.info("Wrote %s: %d images over %d classes", threshold_path, int(total.sum()),
                 config.num_label_classes)
    return thresholds


def _check_settings(config: FilterConfig, what: str, advice: str = ""):
    """ValueError if filter_config.json holds other threshold-relevant settings."""
    path = config.path("filter_config.json")
    if not tf.io.gfile.exists(path):  # e.g. thresholds made by the original tool
        return
    saved = _read_json(path, "Filter settings")
    changed = {k: (saved.get(k), v) for k, v in config.reduce_settings().items()
               if saved.get(k) != v}
    if changed:
        raise ValueError(f"{what} computed with other settings ({path}; saved vs now: "
                         f"{changed}). {advice}".rstrip())


def load_thresholds(config: FilterConfig) -> hist_lib.Thresholds:
    """threshold.json of the reduce step; errors at once if it is absent or was made
    with other settings."""
    path = config.path("threshold.json")
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: run the reduce step first (--only_get_stats=2 once "
            f"all shard histograms of --only_get_stats=1 exist)")
    _check_settings(config, f"The thresholds in {path} were")
    return hist_lib.Thresholds.from_json(_read_json(path, "Thresholds"),
                                         config.num_label_classes, path)


# --------------------------------------------------------------------------- 3. select


def _batch_records(batch: join_lib.ItemBatch, selector: select_lib.Selector,
                   counts: np.ndarray, encode: wire.PseudoLabeledEncoder) -> list:
    """One joined batch -> its serialized output records, each repeated `copies` times
    (serialized once per image: the copies share the bytes). Adds the copies to counts."""
    labels, _, copies = selector.copies_batch(batch.probabilities, batch.image_ids,
                                              batch.labels, batch.conf)
    counts += np.bincount(labels, weights=copies, minlength=len(counts)).astype(np.int64)
    kept = np.flatnonzero(copies)
    if not len(kept):
        return []
    encoded = encode.encode_rows(np.ascontiguousarray(batch.probabilities, "<f4"),
                                 kept.tolist(), labels[kept].tolist(), batch.images,
                                 batch.true_labels.tolist(), batch.image_ids)
    records = []
    for record, n in zip(encoded, copies[kept].tolist()):
        if n == 1:
            records.append(record)
        else:
            records.extend([record] * n)
    return records


def _write_selection(config: FilterConfig, shard: int, task: int, batches,
                     selector: select_lib.Selector) -> np.ndarray:
    """Writes the data file of (shard, task) atomically; returns copies per class [K].
    No file when nothing is kept (as the original); a stale one is removed."""
    counts = np.zeros(config.num_label_classes, np.int64)
    path = config.data_path(shard, task)
    # Only this (shard, task) job writes `path`: a temporary of it is a killed run's.
    writers.remove_temporaries(path)
    encode = wire.PseudoLabeledEncoder()
    shuffler = select_lib.Shuffler(config.shuffle_buffer,
                                   select_lib.shard_rng(config.seed, shard, task))
    writer = writers.ShardWriter(path)

    def emit(records):  # the file is opened by the first record
        if records:
            if not writer.is_open:
                writer.open()
            writer.write_many(records)

    try:
        with contextlib.closing(batches):
            for batch in batches:
                emit(shuffler.push(_batch_records(batch, selector, counts, encode)))
        emit(shuffler.drain())
    except BaseException:
        writer.abort()
        raise
    if writer.is_open:
        writer.close()
    elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
    return counts


def _expected_records(config: FilterConfig, shard: int, task: int) -> Optional[int]:
    path = config.histogram_path(shard, task)
    return int(read_shard_histogram(config, shard, task).sum()) \
        if tf.io.gfile.exists(path) else None


def select_shards(config: FilterConfig, shards: Sequence[int], task: int,
                  thresholds: Optional[hist_lib.Thresholds] = None
                  ) -> Dict[int, Optional[Dict[str, int]]]:
    """Pass 2 for several shards of one task: writes each one's data and stats files,
    shard after shard (pseudo-labelled input through one reader for all of them).

    Returns {shard: {"<class>": copies written}, or None if its stats file already
    existed (the shard is finished and left alone)}.
    """
    results, todo = {}, []
    for shard in shards:
        config.check_task(shard, task)
        stats_path = config.stats_path(shard, task)
        if tf.io.gfile.exists(stats_path):
            logging.info("%s exists: shard %d task %d already selected", stats_path, shard,
                         task)
            results[shard] = None
        else:
            todo.append(shard)
    if not todo:
        return results
    if thresholds is None:
        thresholds = load_thresholds(config)
    selector = select_lib.Selector(thresholds, config.num_image, max_prob=config.max_prob,
                                   use_all=config.use_all, upsample=config.upsample,
                                   seed=config.seed)
    layout = config.layout
    for shard, batches in join_lib.shard_joined_batches(layout, todo, task):
        try:
            counts = _write_selection(config, shard, task, batches, selector)
        except join_lib.PredictionOrderMismatch as e:
            logging.info("Predictions of shard %d task %d are not in image order (%s); "
                         "joining by id through temporary bucket files", shard, task, e)
            batches = join_lib.joined_batches(
                layout, shard, task, method="partition",
                tmp_dir=fileio.join(config.output_dir, ".tmp"),
                expected_records=_expected_records(config, shard, task))
            counts = _write_selection(config, shard, task, batches, selector)
        stats = results[shard] = select_lib.counts_to_json(counts)
        _write_json(config.stats_path(shard, task), stats)
        logging.info("Wrote %s (%d records) and %s", config.data_path(shard, task),
                     int(counts.sum()), config.stats_path(shard, task))
    return results


def select_shard(config: FilterConfig, shard: int, task: int,
                 thresholds: Optional[hist_lib.Thresholds] = None) -> Optional[Dict[str, int]]:
    """Pass 2 for one (shard, task): writes its data and stats files.

    Returns {"<class>": copies written}, or None if the stats file already existed (the
    shard is finished and left alone).
    """
    return select_shards(config, [shard], task, thresholds)[shard]


# --------------------------------------------------------------------------- 4. finalize


def missing_stats(config: FilterConfig) -> List[str]:
    """Per-shard stats files of every (shard, task) that do not exist yet."""
    return [config.stats_path(s, t) for s in range(config.num_shards)
            for t in range(config.total_replicas)
            if not tf.io.gfile.exists(config.stats_path(s, t))]


def finalize_stats(config: FilterConfig) -> Dict:
    """Sums all per-shard stats into stats/final_stats.json (§4.5); FileNotFoundError
    listing the missing stats files (never waits)."""
    missing = missing_stats(config)
    if missing:
        raise FileNotFoundError(
            f"Cannot finalize: {len(missing)} shard(s) not selected yet; run "
            f"--only_get_stats=0 for them first: {missing}")
    per_shard = [_read_json(config.stats_path(s, t), "Stats")
                 for s in range(config.num_shards) for t in range(config.total_replicas)]
    final = select_lib.final_stats(per_shard, config.num_label_classes)
    _write_json(config.path("final_stats.json"), final)
    logging.info("Wrote %s: %d records", config.path("final_stats.json"), final["total_cnt"])
    return final


# --------------------------------------------------------------------------- all steps


def run_all(config: FilterConfig, shards: Optional[Sequence[int]] = None) -> Dict:
    """The four steps in this process, each task in turn: histograms of `shards` (default:
    every shard) not done yet, the reduce, the selection of those not done yet, the
    finalize. Returns final_stats.json's content. Reduce and finalize need every shard's
    files (FileNotFoundError naming the missing ones)."""
    shards = range(config.num_shards) if shards is None else list(shards)
    for task in range(config.total_replicas):
        write_shard_histograms(config, shards, task)
    thresholds = reduce_histograms(config)
    for task in range(config.total_replicas):
        select_shards(config, shards, task, thresholds)
    return finalize_stats(config)
