#!/usr/bin/env python
"""Pseudo-labelling speed and filter memory: `--mode=predict` and the local filter.

Four parts, each measured against a reference in the same run:

  (a) predict: the real predict path (`predict.predict_slices` over TFRecord shards of
      JPEGs: read, decode, eval view, teacher, softmax, per-record encoding, atomic
      writes) in images/s, vs plain `model.predict_on_batch` of the same model on an
      in-memory batch of the same size, repeated to the same image count (no I/O).
      EfficientNet-B0 twice: small-image at 32x32 (10 classes) and full at 224x224
      (1000 classes, 256x256 JPEGs centre-cropped and resized). Random weights saved
      with `saving.save_weights` and loaded by `predict.load_teacher`. A job builds one
      reader for all its slices (a fixed per-job set-up, like loading and tracing the
      model) and pays a little per slice; jobs of one batch, of one big slice and of
      the same images in four slices separate the two from the per-image cost. The
      target >= 0.9 applies to a big slice inside a job, its per-slice set-up included;
      the whole one-slice job with its per-job set-up is shown too.
  (b) filter pass 2: one job, `filter.select_shards` over all the pseudo-labelled shards
      (after pass 1 and the reduce; = `nst-filter-unlabel --only_get_stats=0
      --shard_id=0-<N-1>`), in input records/s, vs a bare `TFRecordDataset(files).batch(n)
      .map(tf.io.parse_example)` of the same keys over the same files, set up as our
      reader (`nst.pseudo.reader`: n = `read_rows(K)`, files read one after the other,
      the same parse parallelism, prefetch depth and tf.data options; both timed from
      building the pipeline, their parsers traced once per process). Target >= 0.5.
      Also timed: --filter_jobs jobs at once, each taking its part of the shards (one
      process each, as concurrent `nst-filter-unlabel --only_get_stats=0 --shard_id=a-b`
      invocations run), the way the stage uses a machine's cores.
  (c) memory: pass 1 + reduce + pass 2 + finalize over `--memory_records` pseudo-
      labelled records of `--memory_classes` classes, in one child process that runs
      every shard in turn; its peak RSS (`os.wait4` rusage of that child) must stay
      under 1 GiB. A child that only imports the filter gives the baseline.

  (d) beam (`--parts=beam`): the predict part of the Beam job `nst-pseudo-label-beam`
      (`beam_predict.predict_shards`: read, RunInference with the teacher, per-shard
      writing; DirectRunner in-process and with --beam_workers processes) against the
      local `predict.run_prediction` on the same teacher and shards, both whole jobs
      from loading the teacher to the last published file, in images/s. Target >= 0.7
      for the faster Beam mode.

Synthetic records are serialized directly from NumPy rows by `wire.PseudoLabeledEncoder`
(bytes identical to `schema.encode_pseudo_labeled`, checked on the first record of each
shard), so that 1M records of 1000 classes (~4 GB) are written in about a minute. Data lives under a
temporary directory (`--tmp_dir`, default the system's) that is deleted at the end.
"""

import concurrent.futures
import functools
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nst  # noqa: E402,F401  (pins the Keras backend)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from nst import cli_errors  # noqa: E402

from nst import config as config_lib  # noqa: E402
from nst.data import input_pipeline, schema, wire, writers  # noqa: E402
from nst.models import saving  # noqa: E402
from nst.models.efficientnet import build_model  # noqa: E402
from nst.pseudo import filter as filter_lib  # noqa: E402
from nst.pseudo import join, predict, reader  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("parts", ["predict", "filter", "memory"], "Parts to run.")
flags.DEFINE_integer("images_32", 8192, "Images of the big slice at 32x32.")
flags.DEFINE_integer("batch_32", 256, "predict_batch_size at 32x32.")
flags.DEFINE_integer("images_224", 320, "Images of the big slice at 224x224.")
flags.DEFINE_integer("batch_224", 32, "predict_batch_size at 224x224.")
flags.DEFINE_integer("repeats", 2, "Timings of the predict part (ours and the reference) "
                     "repeated; the fastest counts, against transient load.")
flags.DEFINE_integer("filter_records", 100_000, "Records of the filter pass-2 part.")
flags.DEFINE_integer("filter_classes", 1000, "Classes of the filter pass-2 part.")
flags.DEFINE_integer("filter_shards", 4, "Shards of the filter pass-2 part.")
flags.DEFINE_integer("filter_jobs", os.cpu_count() or 1,
                     "Concurrent shard jobs (processes) also timed in the filter pass-2 "
                     "part; <= 1: one job only.")
flags.DEFINE_integer("memory_records", 1_000_000, "Records of the memory part.")
flags.DEFINE_integer("memory_classes", 1000, "Classes of the memory part.")
flags.DEFINE_integer("memory_shards", 20, "Shards of the memory part.")
flags.DEFINE_integer("image_bytes", 256, "Bytes of the (random, never decoded) image "
                     "of each filter record.")
flags.DEFINE_integer("num_image", -1, "Filter --num_image; -1: half the mean number of "
                     "images per class, so that thresholds and thinning both act.")
flags.DEFINE_integer("beam_images", 4096, "Images of the beam part (32x32).")
flags.DEFINE_integer("beam_shards", 8, "Shards of the beam part.")
flags.DEFINE_integer("beam_workers", 2, "Worker processes of the multi-process Beam run.")
flags.DEFINE_string("tmp_dir", None, "Where the temporary data goes (default: system).")
flags.DEFINE_string("memory_child", None, "Internal: run the filter over this directory's "
                    "'in' shards and print a JSON summary (the measured child process).")

PREDICT_TARGET = 0.9
BEAM_TARGET = 0.7
FILTER_TARGET = 0.5
MEMORY_LIMIT = 1 << 30


# --------------------------------------------------------------------------- synthetic data


def pseudo_labeled_bytes(image: bytes, probabilities: np.ndarray, label: int,
                         image_id: str) -> bytes:
    """= schema.encode_pseudo_labeled(image, probabilities, label=label, image_id=image_id)
    for little-endian float32 `probabilities` whose max is at `label` (the filter's own
    wire-format encoder, so that 1M records take seconds to generate)."""
    return _ENCODE(image, probabilities, label, None, image_id)


_ENCODE = wire.PseudoLabeledEncoder()


def synthetic_probabilities(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """float32 [n, k]: a top class of confidence ~U(0, 1), the rest spread at random."""
    rows = rng.random((n, k), dtype=np.float32)
    top = rng.integers(0, k, n)
    conf = rng.random(n, dtype=np.float32)
    rows[np.arange(n), top] = 0
    rows *= ((1 - conf) / rows.sum(axis=1))[:, None]
    rows[np.arange(n), top] = conf
    return rows.astype("<f4")


def write_pseudo_labeled(directory: str, num_records: int, num_classes: int, num_shards: int,
                         image_bytes: int, seed: int = 0, prefix: str = "train",
                         chunk: int = 8192) -> int:
    """Pseudo-labelled shards <directory>/<prefix>-%05d-of-%05d; returns the bytes written."""
    rng = np.random.default_rng(seed)
    blob = rng.integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()
    bounds = writers.shard_boundaries(num_records, num_shards)
    total = 0
    for shard in range(num_shards):
        path = os.path.join(directory, writers.shard_name(prefix, shard, num_shards))
        with writers.ShardWriter(path) as writer:
            for start in range(bounds[shard], bounds[shard + 1], chunk):
                n = min(chunk, bounds[shard + 1] - start)
                probs = synthetic_probabilities(rng, n, num_classes)
                labels = probs.argmax(axis=1)
                offsets = rng.integers(0, len(blob) - image_bytes, n)
                for i in range(n):
                    image = blob[offsets[i]:offsets[i] + image_bytes]
                    image_id = f"img-{shard}-{start + i}"
                    record = pseudo_labeled_bytes(image, probs[i], int(labels[i]), image_id)
                    if start + i == bounds[shard]:
                        expected = schema.encode_pseudo_labeled(
                            image, probs[i], label=int(labels[i]), image_id=image_id)
                        if record != expected:
                            raise AssertionError("hand-serialized record differs from "
                                                 "schema.encode_pseudo_labeled")
                    writer.write(record)
                    total += len(record) + 16
    return total


# --------------------------------------------------------------------------- (a) predict


def _jpegs(rng, n, side, quality=90):
    return [tf.io.encode_jpeg(rng.integers(0, 256, (side, side, 3), dtype=np.uint8),
                              quality=quality).numpy() for _ in range(n)]


PREDICT_SLICES = 4  # the many-slice job splits the big slice's images into this many


def predict_rates(tmp: str, size: int, num_images: int, batch_size: int,
                  width=None, depth=None, repeats: int = 2) -> dict:
    """Part (a) at one resolution. 32 = small-image B0 with 10 classes (task digits),
    otherwise B0 with 1000 classes (task imagenet) on JPEGs of size + 32 pixels.

    A job (`predict.predict_slices`) builds one input pipeline for all its slices, then
    pays a little per slice (opening its file and writers). Four warm jobs (the teacher
    loaded and traced, as the reference's model) separate the costs:
      tiny   one slice of one batch          -> per-job set-up = t_tiny - b / rate
      one    one slice of N images           -> rate = (N - b) / (t_one - t_tiny)
      many   the same N images in 4 slices   -> per-slice set-up = (t_many - t_one) / 3
    The verdict (target >= 0.9) is on a slice of N images inside a job, its per-slice
    set-up included: N / (N / rate + per-slice set-up) against `predict_on_batch`.
    The whole one-slice job, its per-job set-up included, is shown beside it.
    """
    small = size == 32
    k = 10 if small else 1000
    root = os.path.join(tmp, f"predict{size}")
    data_dir, teacher_dir = os.path.join(root, "data"), os.path.join(root, "teacher")
    model, _ = build_model("efficientnet-b0", k, width=width, depth=depth, resolution=size,
                           small_image=small, normalization="svhn" if small else "imagenet")
    saving.save_weights(model, teacher_dir)
    name = model.config.name
    del model
    rng = np.random.default_rng(size)
    images = _jpegs(rng, min(num_images, 64), size if small else size + 32)
    part = math.ceil(num_images / PREDICT_SLICES)
    # Shard 0: one batch; shard 1: N images; shards 2..: the same N images in parts.
    counts = [batch_size, num_images] + [
        min(part, num_images - i * part) for i in range(PREDICT_SLICES)]
    for shard, count in enumerate(counts):
        writers.write_records(
            os.path.join(data_dir, writers.shard_name("extra", shard, len(counts))),
            [schema.encode_unlabeled(images[i % len(images)], image_id=f"img-{shard}-{i}")
             for i in range(count)])

    def config(output, shards):
        return config_lib.finalize(config_lib.ExperimentConfig(
            task_name="digits" if small else "imagenet", mode="predict",
            label_data_dir=data_dir, predict_ckpt_path=teacher_dir,
            output_dir=os.path.join(root, output), num_shards=len(counts),
            shard_id=shards, file_prefix="extra",
            predict_batch_size=batch_size, num_label_classes=k, input_image_size=size))

    # 1. The whole `--mode=predict` job, cold: teacher load, tracing, the N-image slice.
    start = time.perf_counter()
    [summary] = predict.run_prediction(config("cold", "1"))
    cold = num_images / (time.perf_counter() - start)
    assert summary["num_records"] == num_images, summary

    # 2. Warm jobs; the fastest of `repeats` timings of each counts.
    teacher = predict.load_teacher(config("warm", "0"))
    predictor = predict.Predictor(teacher, batch_size)
    view = input_pipeline.ViewConfig(image_size=teacher.image_size, small_image=small)
    predictor(np.zeros((batch_size, size, size, 3), np.float32))
    jobs = {"tiny": "0", "one": "1", "many": f"2-{len(counts) - 1}"}
    seconds = dict.fromkeys(jobs, math.inf)
    for repeat in range(repeats):
        for job, shards in jobs.items():
            cfg = config(f"warm{repeat}-{job}", shards)
            start = time.perf_counter()
            done = predict.predict_slices(predict.plan(cfg), predictor, cfg, view)
            seconds[job] = min(seconds[job], time.perf_counter() - start)
            assert sum(d["num_records"] for d in done) == (
                batch_size if job == "tiny" else num_images), done
    rate = (num_images - batch_size) / max(seconds["one"] - seconds["tiny"], 1e-9)
    job_setup = max(seconds["tiny"] - batch_size / rate, 0.0)
    slice_setup = max((seconds["many"] - seconds["one"]) / (PREDICT_SLICES - 1), 0.0)
    in_job = num_images / (num_images / rate + slice_setup)
    traces = predictor._run.experimental_get_tracing_count()

    # Diagnostic: the job's input pipeline alone (read, validate, decode, eval view,
    # batch), no model: its CPU time per image is what the model loses to it on a
    # machine whose cores the model already fills.
    s = predict.plan(config("input", "1"))[0]
    dataset = predict._job_dataset([s.input_path], 1, 0, "unlabeled", k, view, batch_size,
                                   False, None, False)
    start = time.perf_counter()
    seen = sum(len(b["id"]) for b in dataset.as_numpy_iterator())
    input_only = seen / (time.perf_counter() - start)

    # 3. Reference: the same model object, predict_on_batch on one in-memory batch,
    # as many calls as the N-image slice makes (its last batch is padded to full size).
    calls = math.ceil(num_images / batch_size)
    batch = rng.uniform(0, 255, (batch_size, size, size, 3)).astype(np.float32)

    def reference():
        teacher.predict_on_batch(batch)
        start = time.perf_counter()
        for _ in range(calls):
            teacher.predict_on_batch(batch)
        return num_images / (time.perf_counter() - start)

    theirs = max(reference() for _ in range(repeats))  # the best, as for ours
    shutil.rmtree(root, ignore_errors=True)
    return {"size": size, "model": name, "classes": k, "images": num_images,
            "batch": batch_size, "cold": cold, "job": num_images / seconds["one"],
            "job_setup": job_setup, "slice_setup": slice_setup, "ours": rate,
            "in_job": in_job, "reference": theirs, "ratio": in_job / theirs,
            "job_ratio": num_images / seconds["one"] / theirs,
            "per_image_ratio": rate / theirs, "traces": traces, "input_only": input_only,
            "keras_jit_compile": bool(teacher.jit_compile)}


def predict_table(results) -> str:
    lines = ["| model, input | images of the slice (batch) | `run_prediction` cold, incl. "
             "load + trace (img/s) | set-up per job (s) | set-up per slice (s) | "
             "per image, set-up excluded (img/s) | `predict_on_batch`, no I/O (img/s) | "
             "ratio: a slice in a job, its set-up included | per image | one-slice job, "
             "its set-up included | target (on the first ratio) | pass | "
             "input pipeline alone, no model (img/s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        what = (f"{r['model']} small-image, {r['classes']} classes, 32×32 JPEG"
                if r["size"] == 32 else
                f"{r['model']}, {r['classes']} classes, {r['size'] + 32}² JPEG → "
                f"{r['size']}×{r['size']}")
        lines.append(f"| {what} | {r['images']:,} ({r['batch']}) | {r['cold']:.1f} | "
                     f"{r['job_setup']:.2f} | {r['slice_setup']:.2f} | {r['ours']:.1f} | "
                     f"{r['reference']:.1f} | {r['ratio']:.2f} | {r['per_image_ratio']:.2f} | "
                     f"{r['job_ratio']:.2f} | ≥ {PREDICT_TARGET} | "
                     f"{'yes' if r['ratio'] >= PREDICT_TARGET else 'NO'} | "
                     f"{r['input_only']:,.0f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- (b) filter pass 2


def _default_num_image(records: int, classes: int) -> int:
    return FLAGS.num_image if FLAGS.is_parsed() and FLAGS.num_image > 0 \
        else max(1, records // (2 * classes))


@functools.lru_cache(maxsize=None)
def _bare_parser(num_classes: int):
    """parse_example of the keys our pass-2 parser reads, as one tf.function traced once
    per process and class count (as `parsers.fast_parser`)."""
    spec = {schema.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
            schema.ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
            schema.PROBABILITIES_KEY: tf.io.FixedLenFeature([num_classes], tf.float32),
            schema.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
            schema.PROB_KEY: tf.io.FixedLenFeature([], tf.float32),
            schema.CLASS_LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0)}
    return tf.function(lambda serialized: tf.io.parse_example(serialized, spec),
                       input_signature=[tf.TensorSpec([None], tf.string)])


def bare_read_rate(files, num_classes: int) -> float:
    """Records/s of TFRecordDataset -> batch -> parse_example (same keys) -> numpy, set up
    as our pass-2 reader (`nst.pseudo.reader`): batches of `read_rows(K)` records, the
    files one after the other with its read buffer, the same parse parallelism, prefetch
    depth and tf.data options. Timed as ours is: from building the pipeline (the parser
    traced once per process, as ours) to its last batch."""
    parse = _bare_parser(num_classes)
    start, n = time.perf_counter(), 0
    dataset = (tf.data.TFRecordDataset(files, buffer_size=reader.READ_BUFFER_BYTES,
                                       num_parallel_reads=None)
               .batch(reader.read_rows(num_classes))
               .map(parse, num_parallel_calls=reader.PARSE_CALLS)
               .prefetch(reader.PREFETCH_BATCHES)
               .with_options(reader.pipeline_options()))
    for batch in dataset.as_numpy_iterator():
        n += len(batch[schema.LABEL_KEY])
    return n / (time.perf_counter() - start)


def _jobs_rate(config, thresholds, num_records: int, jobs: int) -> tuple:
    """Pass 2 as shard jobs run on one machine: `jobs` processes (spawned and warmed up
    first: imports, traced reader), each running `select_shards` on its contiguous part
    of the shards, like `jobs` concurrent `nst-filter-unlabel --only_get_stats=0
    --shard_id=a-b` invocations."""
    bounds = writers.shard_boundaries(config.num_shards, jobs)
    parts = [list(range(bounds[j], bounds[j + 1])) for j in range(jobs)
             if bounds[j + 1] > bounds[j]]
    with concurrent.futures.ProcessPoolExecutor(
            len(parts), mp_context=multiprocessing.get_context("spawn")) as pool:
        n = len(parts)
        list(pool.map(filter_lib.compute_shard_histogram, [config] * n, [0] * n, [0] * n))
        start = time.perf_counter()
        stats = list(pool.map(filter_lib.select_shards, [config] * n, parts, [0] * n,
                              [thresholds] * n))
        rate = num_records / (time.perf_counter() - start)
    return rate, sum(sum(s.values()) for part in stats for s in part.values())


def filter_rates(tmp: str, num_records: int, num_classes: int, num_shards: int,
                 image_bytes: int, num_image=None, repeats: int = 2, jobs: int = 0) -> dict:
    """Part (b). Ours and the reference are each timed `repeats` times (ours into fresh
    output directories); the fastest of each counts, against transient load. With
    jobs > 1, also `jobs` concurrent shard jobs (`_jobs_rate`), timed once."""
    root = os.path.join(tmp, "filter")
    input_dir = os.path.join(root, "in")
    start = time.perf_counter()
    nbytes = write_pseudo_labeled(input_dir, num_records, num_classes, num_shards,
                                  image_bytes, seed=1)
    generate = time.perf_counter() - start
    num_image = num_image or _default_num_image(num_records, num_classes)

    def config(output):
        return filter_lib.FilterConfig(
            input_dir=input_dir, output_dir=os.path.join(root, output),
            prelim_stats_dir=os.path.join(root, "prelim"), num_shards=num_shards,
            num_label_classes=num_classes, num_image=num_image)

    start = time.perf_counter()
    filter_lib.write_shard_histograms(config("out0"), range(num_shards), 0)
    pass1 = num_records / (time.perf_counter() - start)
    files = [config("out0").layout.image_path(s) for s in range(num_shards)]
    reference, ours, written = 0.0, 0.0, set()
    for repeat in range(repeats):
        # Each timing starts with no dirty pages: otherwise the kernel's writeback of the
        # data generated or written just before (~0.2-0.4 GB) runs during it and takes
        # one of the two cores (the bare read varied 2x with it).
        os.sync()
        reference = max(reference, bare_read_rate(files, num_classes))
        cfg = config(f"out{repeat}")
        thresholds = filter_lib.reduce_histograms(cfg)
        os.sync()
        start = time.perf_counter()
        stats = filter_lib.select_shards(cfg, range(num_shards), 0, thresholds)
        ours = max(ours, num_records / (time.perf_counter() - start))
        written.add(sum(sum(s.values()) for s in stats.values()))
        shutil.rmtree(cfg.output_dir, ignore_errors=True)
    jobs_rate = None
    if jobs > 1:
        os.sync()
        cfg = config("jobs")
        jobs_rate, total = _jobs_rate(cfg, filter_lib.reduce_histograms(cfg), num_records,
                                      jobs)
        written.add(total)
        shutil.rmtree(cfg.output_dir, ignore_errors=True)
    assert len(written) == 1, written  # every run selects the same records
    # Diagnostic: pass 2's input alone (reader + joined batches), no selection, encoding
    # or writing.
    start = time.perf_counter()
    for _, batches in join.shard_joined_batches(config("out0").layout, range(num_shards), 0):
        for _ in batches:
            pass
    items_only = num_records / (time.perf_counter() - start)
    shutil.rmtree(root, ignore_errors=True)
    return {"records": num_records, "classes": num_classes, "shards": num_shards,
            "input_bytes": nbytes, "generate_seconds": generate, "num_image": num_image,
            "written": written.pop(), "pass1": pass1, "ours": ours, "reference": reference,
            "ratio": ours / reference, "items_only": items_only, "jobs": jobs,
            "jobs_rate": jobs_rate, "jobs_ratio": jobs_rate / reference if jobs_rate else None}


def filter_table(r) -> str:
    def verdict(ratio):
        return "yes" if ratio >= FILTER_TARGET else "NO"

    lines = [
        "| records × classes (shards) | kept copies written | pass 1 histogram (rec/s) | "
        "bare `TFRecordDataset` + `parse_example` (rec/s) | pass 2 `select_shards`, one job "
        "(rec/s) | ratio | pass-2 input alone: `join.shard_joined_batches` (rec/s) |",
        "|---|---|---|---|---|---|---|",
        f"| {r['records']:,} × {r['classes']} ({r['shards']}), "
        f"{r['input_bytes'] / 2**20:,.0f} MiB | {r['written']:,} (num_image={r['num_image']}) | "
        f"{r['pass1']:,.0f} | {r['reference']:,.0f} | {r['ours']:,.0f} | "
        f"{r['ratio']:.2f} (≥ {FILTER_TARGET}: {verdict(r['ratio'])}) | "
        f"{r['items_only']:,.0f} |"]
    if r.get("jobs_rate"):
        lines.append("")
        lines.append(f"{r['jobs']} shard jobs at once (processes): {r['jobs_rate']:,.0f} rec/s"
                     f" = {r['jobs_ratio']:.2f} of the bare read "
                     f"(≥ {FILTER_TARGET}: {verdict(r['jobs_ratio'])})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- (c) memory


def _vm_hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return -1


def run_filter_child(directory: str, num_classes: int, num_shards: int, num_image: int):
    """The measured child: every filter step over <directory>/in, one shard after the
    other in this process; prints a JSON summary as its last line."""
    config = filter_lib.FilterConfig(input_dir=os.path.join(directory, "in"),
                                     output_dir=os.path.join(directory, "out"),
                                     num_shards=num_shards, num_label_classes=num_classes,
                                     num_image=num_image)
    times = {}
    start = time.perf_counter()
    filter_lib.write_shard_histograms(config, range(num_shards), 0)
    times["pass1"] = time.perf_counter() - start
    start = time.perf_counter()
    filter_lib.reduce_histograms(config)
    times["reduce"] = time.perf_counter() - start
    start = time.perf_counter()
    filter_lib.select_shards(config, range(num_shards), 0)
    times["pass2"] = time.perf_counter() - start
    final = filter_lib.finalize_stats(config)
    print(json.dumps({"times": times, "written": final["total_cnt"],
                      "vm_hwm": _vm_hwm_bytes()}), flush=True)


# Runs the measured child and reports its rusage. A small launcher without TensorFlow
# starts it: Linux counts a child's RSS before its exec in ru_maxrss (fork or vfork share
# the parent's pages), which from this process would add the parent's ~0.7 GiB.
_LAUNCHER = """
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"maxrss": usage.ru_maxrss * 1024}), flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _child(args, log_path):
    """Runs this script with `args` in a grandchild (via `_LAUNCHER`); returns (its
    last stdout line, its ru_maxrss in bytes, wall seconds)."""
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, sys.executable,
                               os.path.abspath(__file__)] + args,
                              stdout=subprocess.PIPE, stderr=log)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        with open(log_path, "rb") as f:
            tail = f.read()[-4000:].decode("utf-8", "replace")
        raise RuntimeError(f"child {args} failed ({proc.returncode}):\n{tail}")
    lines = proc.stdout.decode().strip().splitlines()
    maxrss = json.loads(lines[-1])["maxrss"]
    return (lines[-2] if len(lines) > 1 else ""), maxrss, seconds


def memory_peak(tmp: str, num_records: int, num_classes: int, num_shards: int,
                image_bytes: int, num_image=None) -> dict:
    root = os.path.join(tmp, "memory")
    start = time.perf_counter()
    nbytes = write_pseudo_labeled(os.path.join(root, "in"), num_records, num_classes,
                                  num_shards, image_bytes, seed=2)
    generate = time.perf_counter() - start
    num_image = num_image or _default_num_image(num_records, num_classes)
    try:
        _, baseline, _ = _child(["--memory_child=", "--parts="],
                                os.path.join(root, "baseline.log"))
        line, peak, seconds = _child(
            [f"--memory_child={root}", f"--memory_classes={num_classes}",
             f"--memory_shards={num_shards}", f"--num_image={num_image}"],
            os.path.join(root, "child.log"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = json.loads(line)
    return {"records": num_records, "classes": num_classes, "shards": num_shards,
            "input_bytes": nbytes, "generate_seconds": generate, "num_image": num_image,
            "peak": peak, "baseline": baseline, "child_vm_hwm": summary["vm_hwm"],
            "seconds": seconds, "times": summary["times"], "written": summary["written"]}


def memory_table(r) -> str:
    t = r["times"]
    return "\n".join([
        "| records × classes (shards) | filter steps in the child (s) | peak RSS of the "
        "child | of which: the bare imports (TF, Keras, nst) | limit | pass |",
        "|---|---|---|---|---|---|",
        f"| {r['records']:,} × {r['classes']} ({r['shards']}), "
        f"{r['input_bytes'] / 2**30:,.2f} GiB | pass 1 {t['pass1']:.0f}, reduce "
        f"{t['reduce']:.1f}, pass 2 {t['pass2']:.0f} ({r['written']:,} copies written) | "
        f"{r['peak'] / 2**20:,.0f} MiB | {r['baseline'] / 2**20:,.0f} MiB | 1 GiB | "
        f"{'yes' if r['peak'] < MEMORY_LIMIT else 'NO'} |"])


# --------------------------------------------------------------------------- (d) beam


def beam_rates(tmp: str, num_images: int, num_shards: int, batch_size: int, workers: int,
               width=None, depth=None) -> dict:
    """Part (d): images/s of local `--mode=predict` and of the Beam job's predict part
    (in-process; `workers` processes), each a whole job over the same shards into a
    fresh directory, teacher loading included."""
    import apache_beam as beam
    from nst.pseudo import beam_predict

    root = os.path.join(tmp, "beam")
    data_dir, teacher_dir = os.path.join(root, "data"), os.path.join(root, "teacher")
    model, _ = build_model("efficientnet-b0", 10, width=width, depth=depth, resolution=32,
                           small_image=True, normalization="svhn")
    saving.save_weights(model, teacher_dir)
    del model
    rng = np.random.default_rng(4)
    images = _jpegs(rng, 64, 32)
    bounds = writers.shard_boundaries(num_images, num_shards)
    for shard in range(num_shards):
        writers.write_records(
            os.path.join(data_dir, writers.shard_name("extra", shard, num_shards)),
            [schema.encode_unlabeled(images[i % len(images)], image_id=f"img-{i}")
             for i in range(bounds[shard], bounds[shard + 1])])

    def config(output):
        return config_lib.finalize(config_lib.ExperimentConfig(
            task_name="digits", mode="predict", label_data_dir=data_dir,
            predict_ckpt_path=teacher_dir, output_dir=os.path.join(root, output),
            info_dir=os.path.join(root, output, "info"), num_shards=num_shards,
            shard_id=f"0-{num_shards - 1}", file_prefix="extra",
            predict_batch_size=batch_size))

    start = time.perf_counter()
    predict.run_prediction(config("local"))
    local = num_images / (time.perf_counter() - start)
    modes = {"in-process": ["--runner=DirectRunner", "--direct_num_workers=1",
                            "--direct_running_mode=in_memory"],
             f"{workers} processes": ["--runner=DirectRunner",
                                      f"--direct_num_workers={workers}",
                                      "--direct_running_mode=multi_processing"]}
    rates = {}
    for name, options in modes.items():
        cfg = config(name.replace(" ", "_"))
        start = time.perf_counter()
        with beam.Pipeline(options=beam_predict.beam_lib.pipeline_options_from(options)) as p:
            beam_predict.predict_shards(p, cfg)
        rates[name] = num_images / (time.perf_counter() - start)
        local_files = sorted(os.listdir(os.path.join(root, "local")))
        assert sorted(os.listdir(cfg.output_dir)) == local_files, name
    shutil.rmtree(root, ignore_errors=True)
    best = max(rates, key=rates.get)
    return {"images": num_images, "shards": num_shards, "batch": batch_size,
            "local": local, "beam": rates, "best": best, "ratio": rates[best] / local}


def beam_table(r) -> str:
    modes = list(r["beam"])
    lines = ["| images (shards, batch) | local `--mode=predict` (img/s) | "
             + " | ".join(f"Beam DirectRunner {m} (img/s)" for m in modes)
             + " | ratio (best Beam / local) | target | pass |",
             "|---|---|" + "---|" * len(modes) + "---|---|---|",
             f"| {r['images']:,} ({r['shards']}, {r['batch']}) | {r['local']:,.0f} | "
             + " | ".join(f"{r['beam'][m]:,.0f}" for m in modes)
             + f" | {r['ratio']:.2f} ({r['best']}) | ≥ {BEAM_TARGET} | "
             f"{'yes' if r['ratio'] >= BEAM_TARGET else 'NO'} |"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if FLAGS.memory_child is not None:
        if FLAGS.memory_child:  # empty: the import-only baseline
            run_filter_child(FLAGS.memory_child, FLAGS.memory_classes, FLAGS.memory_shards,
                             FLAGS.num_image)
        return
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU "
          f"cores")
    tmp = tempfile.mkdtemp(prefix="benchmark_pseudo-", dir=FLAGS.tmp_dir)
    try:
        if "predict" in FLAGS.parts:
            results = [predict_rates(tmp, 32, FLAGS.images_32, FLAGS.batch_32,
                                     repeats=FLAGS.repeats),
                       predict_rates(tmp, 224, FLAGS.images_224, FLAGS.batch_224,
                                     repeats=FLAGS.repeats)]
            print("\n(a) predict\n")
            print(predict_table(results), flush=True)
        if "filter" in FLAGS.parts:
            r = filter_rates(tmp, FLAGS.filter_records, FLAGS.filter_classes,
                             FLAGS.filter_shards, FLAGS.image_bytes, repeats=FLAGS.repeats,
                             jobs=FLAGS.filter_jobs)
            print("\n(b) filter pass 2\n")
            print(filter_table(r), flush=True)
        if "beam" in FLAGS.parts:
            r = beam_rates(tmp, FLAGS.beam_images, FLAGS.beam_shards, FLAGS.batch_32,
                           FLAGS.beam_workers)
            print("\n(d) Beam job's predict vs local --mode=predict\n")
            print(beam_table(r), flush=True)
        if "memory" in FLAGS.parts:
            r = memory_peak(tmp, FLAGS.memory_records, FLAGS.memory_classes,
                            FLAGS.memory_shards, FLAGS.image_bytes)
            print(f"\n(c) filter memory (data generated in {r['generate_seconds']:.0f} s; "
                  f"child ran {r['seconds']:.0f} s; its own VmHWM "
                  f"{r['child_vm_hwm'] / 2**20:,.0f} MiB)\n")
            print(memory_table(r), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    cli_errors.run(main)
