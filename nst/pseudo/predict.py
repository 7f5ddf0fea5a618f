"""Teacher predictions -> pseudo-labelled TFRecords (`--mode=predict`, spec §3.4, §3.6, §5.12).

One job handles the shards of `--shard_id` ('3', '0,1,2', '0-9', '0-3,7') one after the
other; per (shard, worker) slice:

  input      <label_data_dir>/<file_prefix>-%05d-of-%05d           (shard, num_shards)
             records with index i mod total_replicas == worker_id (§3.4 slicing)
  output     <output_dir>/<file_prefix>-%05d-of-%05d               (total_replicas = 1)
             <output_dir>/<file_prefix>-%05d-of-%05d-%05d          (+ worker, otherwise)
             schema `pseudo_labeled`: the image bytes unchanged, `image/id`, `probabilities`
             (softmax at temperature 1), `prob`, 0-based `label`, and the source's true
             label when it stores one; same order as the input slice
  optional   <output_dir>/train-info-%05d-of-%05d-%05d (--write_train_info): the original's
             prediction-only layout (probabilities, classes; plus image/id)
  counts     <info_dir>/info-%05d-of-%05d-%05d.txt = {"image_num": N} (with --info_dir)

`--reassign_label` (§3.6) re-labels filtered data with a new teacher: input
`<label_data_dir>/<file_prefix>-%d-%05d-of-%05d` (worker_id, shard, num_shards), the whole
file, written to the same base name in `output_dir` with order and duplicates preserved,
plus about `num_sample_images` JPEGs in total under `samples/<class>/`.

The teacher runs in inference mode with EMA weights (when the checkpoint has them), on the
eval view, `predict_batch_size` images per call split over the strategy's replicas; the
last batch is padded to the full size and the padding dropped, so shapes stay static (TPU)
and every record gets exactly one prediction. Ids travel with the images on the host, so a
prediction is never matched to an image by position.

A job reads all its slices through one input pipeline, file after file, so the reader's
set-up (~1-2 s of tracing and graph rewrites) is paid once per job and not per shard.
The teacher's batches never run across two files: each file is cut every
`predict_batch_size` records from its first, so a resumed job, which starts at a slice's
first record, predicts every image in the same batch as an uninterrupted job would (on
some CPUs the last bits of an image's probabilities depend on its batch).
Every output file is written atomically, and a slice is published as soon as its last
record is written; a slice whose outputs all exist is finished and skipped on a re-run,
any other slice is redone from scratch (temporaries a killed run left are removed). The
rows of a slice must be its records in file order with no gap that `--skip_corrupt` did
not make, and their number must equal the info file's count when one exists (as in the
original), or nothing of the slice is published.
"""

import dataclasses
import os
import time
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from nst import config as config_lib
from nst import fileio
from nst.data import input_pipeline as ip
from nst.data import preprocess, readers, schema, wire, writers
from nst.models import saving
from nst.models.efficientnet import EfficientNet, build_model
from nst.pseudo import select

LOG_EVERY_SECONDS = 15.0


parse_shard_ids = writers.parse_shard_ids


@dataclasses.dataclass(frozen=True)
class Slice:
    """One unit of work: the records of `input_path` that one job predicts."""

    shard: int
    worker: int
    input_path: str
    output_path: str
    train_info_path: Optional[str]
    info_path: Optional[str]
    replicas: int  # records with index mod replicas == worker (1 = the whole file)

    @property
    def outputs(self) -> List[str]:
        return [p for p in (self.output_path, self.train_info_path) if p]


def plan(config: config_lib.ExperimentConfig) -> List[Slice]:
    """The slices of this job, in order (checks flags, not files)."""
    if not config.label_data_dir:
        raise ValueError("--mode=predict needs --label_data_dir (the images to label)")
    if not config.output_dir:
        raise ValueError("--mode=predict needs --output_dir")
    if config.num_shards < 1:
        raise ValueError(f"--num_shards must be >= 1, got {config.num_shards}")
    replicas = 1 if config.reassign_label else config.total_replicas
    if replicas < 1 or not 0 <= config.worker_id < max(config.total_replicas, 1):
        raise ValueError(f"--worker_id={config.worker_id} must be in [0, --total_replicas="
                         f"{config.total_replicas})")
    join = fileio.join
    slices = []
    for shard in parse_shard_ids(config.shard_id, config.num_shards):
        if config.reassign_label:
            name = writers.task_shard_name(config.file_prefix, config.worker_id, shard,
                                           config.num_shards)
            slices.append(Slice(shard, config.worker_id, join(config.label_data_dir, name),
                                join(config.output_dir, name), None, None, 1))
            continue
        name = writers.shard_name(config.file_prefix, shard, config.num_shards)
        output = name if replicas == 1 else f"{name}-{config.worker_id:05d}"
        train_info = (join(config.output_dir, writers.prediction_name(
            shard, config.num_shards, config.worker_id)) if config.write_train_info else None)
        info = (join(config.info_dir, writers.info_name(shard, config.num_shards,
                                                        config.worker_id))
                if config.info_dir else None)
        slices.append(Slice(shard, config.worker_id, join(config.label_data_dir, name),
                            join(config.output_dir, output), train_info, info, replicas))
    for s in slices:
        if os.path.abspath(s.input_path) == os.path.abspath(s.output_path):
            raise ValueError(f"--output_dir would overwrite the input {s.input_path}")
    return slices


def load_teacher(config: config_lib.ExperimentConfig, strategy=None) -> EfficientNet:
    """The model of `--predict_ckpt_path` with its EMA weights (if stored).

    nst checkpoints say which network they hold (`model_config.json`); an original TF1
    checkpoint is read into `--model_name`. The class count must equal
    `--num_label_classes`.
    """
    path = config.predict_ckpt_path
    if not path:
        raise ValueError("--mode=predict needs --predict_ckpt_path")
    if not saving.checkpoint_exists(path):
        raise FileNotFoundError(f"No checkpoint at --predict_ckpt_path={path}")
    strategy = strategy or tf.distribute.get_strategy()
    stored = saving.stored_model_config(path)
    with strategy.scope():
        if stored is not None:
            model_config, stored_size = stored
            if model_config.num_classes != config.num_label_classes:
                raise ValueError(
                    f"The model at --predict_ckpt_path={path} predicts "
                    f"{model_config.num_classes} classes but --num_label_classes is "
                    f"{config.num_label_classes}")
            size = config.input_image_size or stored_size or model_config.resolution
            model = EfficientNet(model_config, image_size=size, name="teacher")
        else:
            model, _ = build_model(
                config.model_name, config.num_label_classes,
                resolution=config.input_image_size, small_image=config.small_image_model,
                normalization=config_lib.normalization(config), name="teacher")
        report = saving.load_weights(model, path, use_ema="auto")
    logging.info("Predicting with %s at %dpx from %s (%d tensors, %d from EMA)",
                 model.config.name, model.image_size, path, report.num_loaded,
                 report.num_from_ema)
    return model


class Predictor:
    """Softmax probabilities of a model over fixed-size batches under a strategy.

    `__call__(pixels [n, S, S, 3] float32 0..255, n <= batch_size)` ->
    float32 [n, K]: the batch is zero-padded to `batch_size` rows, split evenly over the
    replicas, and the padding's rows dropped again.
    """

    def __init__(self, model: EfficientNet, batch_size: int, strategy=None):
        self.model = model
        self.strategy = strategy or tf.distribute.get_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if batch_size < 1 or batch_size % replicas:
            raise ValueError(f"--predict_batch_size={batch_size} must be a positive multiple "
                             f"of the {replicas} replicas")
        self.batch_size = batch_size
        self.per_replica = batch_size // replicas

        def probabilities(images):
            logits = tf.cast(model(images, training=False), tf.float32)
            return tf.nn.softmax(logits, axis=-1)

        if replicas == 1:
            self._run = tf.function(probabilities)
        else:
            def run(distributed):
                per_replica = self.strategy.run(probabilities, args=(distributed,))
                return self.strategy.gather(per_replica, axis=0)

            self._run = tf.function(run)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        n = len(pixels)
        if n > self.batch_size:
            raise ValueError(f"batch of {n} > batch_size {self.batch_size}")
        if n < self.batch_size:
            pad = np.zeros((self.batch_size - n,) + pixels.shape[1:], pixels.dtype)
            pixels = np.concatenate([pixels, pad])
        if self.strategy.num_replicas_in_sync == 1:
            return self._run(tf.constant(pixels)).numpy()[:n]
        size = self.per_replica
        distributed = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(pixels[ctx.replica_id_in_sync_group * size:
                                           (ctx.replica_id_in_sync_group + 1) * size]))
        return self._run(distributed).numpy()[:n]


def eval_pixels(view: ip.ViewConfig, image: tf.Tensor) -> tf.Tensor:
    """Encoded image (scalar tf.string) -> the teacher's input, float32 [S, S, 3] in
    0..255 (decode, eval view). The one definition for the local job's reader and the Beam
    job's model handler (`nst.pseudo.beam_predict`), so both feed the model the same
    pixels."""
    return view.eval(preprocess.decode_image(image))


def _job_dataset(files: List[str], replicas: int, worker: int, record_format: str,
                 num_classes: int, view: ip.ViewConfig, batch_size: int, skip_corrupt: bool,
                 skipped, check_images: bool) -> tf.data.Dataset:
    """Batches of the job's slices, read one file after the other through one pipeline.

    Building a reader and its iterator costs ~1-2 s here (tracing, graph rewrites), so a
    job builds it once, not once per slice. A batch may end in one file and go on in the
    next: rows carry their `file` and `index`, and `_file_batches` re-cuts them per file.
    """
    records = readers.read_examples(
        files, record_format, num_classes, decode_images=check_images,
        skip_corrupt=skip_corrupt, skipped=skipped, deterministic=True, cycle_length=1)
    if replicas > 1:
        records = records.filter(lambda r: tf.equal(r["index"] % replicas, worker))

    def make(record):
        pixels = eval_pixels(view, record["image"])
        return {"pixels": pixels, "image": record["image"], "id": record["id"],
                "index": record["index"], "file": record["file"],
                "true_label": record["true_label"]}

    return (records.map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size).prefetch(2))


def _file_batches(batches, size: int):
    """Re-cuts the reader's batches (dicts of arrays with a `file` row field) so that a
    batch holds the rows of one file only, cut at every `size`-th row from the file's
    first: a file's last batch may be short (the predictor pads it).

    Why: the model's output for an image is not always bitwise independent of its place in
    the batch and of the other images in it (seen on an AMD EPYC CPU). A resumed job
    starts at a slice's first record, so batches that ran across files would be cut
    differently on a re-run and a killed-and-resumed job would round some probabilities
    differently from an uninterrupted one. Cut per file, every slice sees the same batches
    whatever ran before it.
    """
    def rows(batch, start, end):
        return {k: v[start:end] for k, v in batch.items()}

    pending = None  # the current file's rows not yet in a batch (fewer than `size`)
    for batch in batches:
        files = batch["file"]
        cuts = [0, *(np.flatnonzero(files[1:] != files[:-1]) + 1), len(files)]
        for start, end in zip(cuts[:-1], cuts[1:]):
            part = rows(batch, start, end)
            if pending is not None and pending["file"][0] != part["file"][0]:
                yield pending  # the previous file's short last batch
                pending = None
            if pending is not None:
                part = {k: np.concatenate([pending[k], part[k]]) for k in part}
            n = len(part["file"])
            full = n - n % size
            for first in range(0, full, size):
                yield rows(part, first, first + size)
            pending = rows(part, full, n) if full < n else None
    if pending is not None:
        yield pending


def count_slice(s: Slice) -> int:
    """Records of the slice (one read pass over the file's framing, no parsing)."""
    dataset = tf.data.TFRecordDataset(s.input_path, buffer_size=8 << 20)
    if s.replicas > 1:
        dataset = dataset.enumerate().filter(
            lambda i, _: tf.equal(i % s.replicas, s.worker))
    try:
        return int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    except tf.errors.OpError as e:
        raise ValueError(f"Cannot read {s.input_path}: truncated or corrupted TFRecord "
                         f"file. {e.message}") from None


def _info_count(s: Slice) -> Optional[int]:
    """The slice's count from its info file (trusted, as in the original: recounting a
    2M-image shard costs a full read), or None without one."""
    if not (s.info_path and tf.io.gfile.exists(s.info_path)):
        return None
    try:
        return int(fileio.read_json(s.info_path)["image_num"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"Info file {s.info_path} is not {{\"image_num\": N}}: {e}") from None


def _jpeg(image: bytes) -> bytes:
    if image[:2] == b"\xff\xd8":
        return image
    decoded = tf.io.decode_image(image, channels=3, expand_animations=False)
    return tf.io.encode_jpeg(decoded, quality=95).numpy()


class _Samples:
    """About `total` JPEGs over the whole job, each record drawn by a seeded hash of
    (id, index) so that re-runs dump the same files (§3.6)."""

    def __init__(self, output_dir: str, shard: int, rate: float, seed: int):
        self.directory = fileio.join(output_dir, "samples")
        self.shard, self.rate, self.seed = shard, rate, seed
        self.written = 0

    def maybe_write(self, image_id: str, index: int, label: int, prob: float, image: bytes):
        if self.rate <= 0 or select.uniform_from_id(self.seed, f"{image_id}#{index}") >= self.rate:
            return
        directory = fileio.join(self.directory, str(label))
        tf.io.gfile.makedirs(directory)
        path = fileio.join(directory, f"image_{self.shard}_{index}_{prob:.2f}.jpeg")
        tmp = writers.temporary_path(path)
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(_jpeg(image))
        tf.io.gfile.rename(tmp, path, overwrite=True)
        self.written += 1


class _SliceOutput:
    """The outputs of one slice while its rows arrive: written to temporary files,
    published by `finish` only when the rows are the whole slice."""

    def __init__(self, s: Slice, file: str, config: config_lib.ExperimentConfig):
        self.slice, self.file = s, file  # file: the slice's input as the reader names it
        self.start = self.last_log = time.time()
        self.written = 0
        self.next_index = s.worker if s.replicas > 1 else 0
        self.expected = _info_count(s) if not config.reassign_label else None
        self.samples = None
        if config.reassign_label and config.num_sample_images > 0:
            # The draw rate needs the count before the first row.
            rate = config.num_sample_images / max(count_slice(s) * config.num_shards, 1)
            self.samples = _Samples(config.output_dir, s.shard, rate, config.seed)
        tf.io.gfile.makedirs(os.path.dirname(s.output_path))
        for path in s.outputs:  # a killed run's partial files
            writers.remove_temporaries(path)
        self.writers = [writers.ShardWriter(p) for p in s.outputs]
        for w in self.writers:
            w.open()

    def write(self, batch, probabilities, labels, rows: range, encode, skipped):
        s, indices = self.slice, batch["index"]
        for i in rows:
            index = int(indices[i])
            if index != self.next_index:
                self._check_gap(index, skipped)
            self.next_index = index + s.replicas
            image_id = batch["id"][i].decode("utf-8")
            true_label = int(batch["true_label"][i])
            self.writers[0].write(encode(
                batch["image"][i], probabilities[i], int(labels[i]),
                true_label if true_label >= 0 else None, image_id))
            if s.train_info_path:
                self.writers[1].write(schema.encode_prediction(
                    probabilities[i], classes=int(labels[i]), image_id=image_id))
            if self.samples is not None:
                self.samples.maybe_write(image_id, index, int(labels[i]),
                                         float(probabilities[i, labels[i]]), batch["image"][i])
        self.written += len(rows)
        if time.time() - self.last_log > LOG_EVERY_SECONDS:
            self.last_log = time.time()
            rate = self.written / (self.last_log - self.start)
            logging.info("shard %d: %d%s images (%.0f img/s)", s.shard, self.written,
                         f"/{self.expected}" if self.expected is not None else "", rate)

    def _check_gap(self, index: int, skipped):
        # Records of a slice arrive in file order; a gap is only allowed where
        # skip_corrupt dropped every record in it.
        s = self.slice
        missing = range(self.next_index, index, s.replicas)
        dropped = set(skipped.indices(self.file)) if skipped is not None else set()
        if index < self.next_index or not set(missing) <= dropped:
            raise ValueError(
                f"{s.input_path}: record {index} came where record {self.next_index} "
                f"was due (slice {s.worker} of {s.replicas}); records are missing or out "
                f"of order; nothing was published")

    def finish(self, skipped) -> Dict:
        s = self.slice
        num_skipped = 0
        if skipped is not None:
            num_skipped = sum(1 for i in skipped.indices(self.file)
                              if i % s.replicas == s.worker % s.replicas)
        if self.expected is not None and self.written + num_skipped != self.expected:
            raise ValueError(
                f"Count mismatch for shard {s.shard}, worker {s.worker}: {self.written} "
                f"predictions (+{num_skipped} skipped corrupt records) but the info file "
                f"{s.info_path} says {self.expected} records"
                f"{'' if s.replicas == 1 else f' in slice {s.worker} of {s.replicas}'}; "
                f"nothing was published")
        for w in self.writers:
            w.close()
        if s.info_path and self.expected is None:
            tf.io.gfile.makedirs(os.path.dirname(s.info_path))
            fileio.atomic_write_json(s.info_path, {"image_num": self.written + num_skipped})
        if num_skipped:
            logging.warning("Shard %d: skipped %d corrupt records of %s", s.shard,
                            num_skipped, s.input_path)
        elapsed = time.time() - self.start
        logging.info("Shard %d worker %d: %d predictions -> %s (%.0f img/s)", s.shard,
                     s.worker, self.written, s.output_path, self.written / max(elapsed, 1e-9))
        return {"shard": s.shard, "worker": s.worker, "output": s.output_path,
                "skipped": False, "num_records": self.written, "num_skipped": num_skipped,
                "num_samples": self.samples.written if self.samples else 0}

    def abort(self):
        for w in self.writers:
            w.abort()


# The writer of one slice's outputs, public for the Beam job (`nst.pseudo.beam_predict`),
# which hands it each shard's rows in file order: the records, info file, count checks and
# atomic publishing are then exactly those of `--mode=predict`.
SliceOutput = _SliceOutput


def predict_slices(slices: List[Slice], predictor: Predictor,
                   config: config_lib.ExperimentConfig, view: ip.ViewConfig) -> List[Dict]:
    """Predicts the slices of one job and publishes each slice's outputs as soon as it
    is complete; returns one summary per slice, in the order of `slices`.

    A slice whose outputs all exist is skipped; the others are read through one input
    pipeline (`_job_dataset`). On an error the slices published so far stay, the one in
    progress publishes nothing.
    """
    summaries: Dict[int, Dict] = {}
    todo = []
    for n, s in enumerate(slices):
        if all(tf.io.gfile.exists(p) for p in s.outputs):
            logging.info("Shard %d worker %d: %s exists, skipped", s.shard, s.worker,
                         s.output_path)
            summaries[n] = {"shard": s.shard, "worker": s.worker, "output": s.output_path,
                            "skipped": True}
        elif not tf.io.gfile.exists(s.input_path):
            raise FileNotFoundError(f"Input shard {s.input_path} does not exist "
                                    f"(--label_data_dir, --file_prefix, --num_shards, "
                                    f"--shard_id)")
        else:
            todo.append(n)
    if not todo:
        return [summaries[n] for n in range(len(slices))]

    # The reader yields its files in sorted order and names each row's file as listed.
    files = readers.list_files([slices[n].input_path for n in todo])
    by_path = {os.path.normpath(slices[n].input_path): n for n in todo}
    order = [by_path[os.path.normpath(f)] for f in files]
    file_of = dict(zip(order, files))
    names = {n: f.encode("utf-8") for n, f in file_of.items()}  # as rows carry them
    replicas, worker = slices[todo[0]].replicas, slices[todo[0]].worker
    skipped = readers.SkippedRecords(keep_indices=True) if config.skip_corrupt else None
    record_format = "pseudo_labeled" if config.reassign_label else "unlabeled"
    encode = wire.PseudoLabeledEncoder()  # = schema.encode_pseudo_labeled, ~10x faster
    dataset = _job_dataset(files, replicas, worker, record_format, config.num_label_classes,
                           view, predictor.batch_size, config.skip_corrupt, skipped,
                           check_images=config.skip_corrupt)
    pending = list(order)

    def start_next():
        return _SliceOutput(slices[pending[0]], file_of[pending[0]], config)

    active = start_next()
    try:
        try:
            for batch in _file_batches(dataset.as_numpy_iterator(), predictor.batch_size):
                probabilities = np.ascontiguousarray(predictor(batch["pixels"]), "<f4")
                while batch["file"][0] != names[pending[0]]:
                    summaries[pending.pop(0)] = active.finish(skipped)
                    if not pending:
                        raise RuntimeError(f"the reader gave a row of {batch['file'][0]!r}, "
                                           f"which is not a file of this job")
                    active = start_next()
                active.write(batch, probabilities, probabilities.argmax(axis=1),
                             range(len(probabilities)), encode, skipped)
        except tf.errors.InvalidArgumentError:
            if config.skip_corrupt:
                raise
            # An image that does not decode fails the batched map without saying which
            # record; one checking pass over the files not yet done names it (and raises).
            for _ in readers.read_examples([slices[p].input_path for p in pending],
                                           record_format, config.num_label_classes,
                                           decode_images=True):
                pass
            raise
        summaries[pending.pop(0)] = active.finish(skipped)
        while pending:  # files with no record of this slice
            active = start_next()
            summaries[pending.pop(0)] = active.finish(skipped)
    except BaseException:
        active.abort()
        raise
    return [summaries[n] for n in range(len(slices))]


def run_prediction(config: config_lib.ExperimentConfig, strategy=None) -> List[Dict]:
    """`--mode=predict`: every slice of `--shard_id`; returns one summary per slice."""
    if config.teacher_model_name:
        logging.warning("--teacher_model_name is ignored in predict mode; the model to "
                        "predict with is --predict_ckpt_path")
    slices = plan(config)
    strategy = strategy or tf.distribute.get_strategy()
    model = load_teacher(config, strategy)
    predictor = Predictor(model, config.predict_batch_size, strategy)
    view = ip.ViewConfig(image_size=model.image_size, small_image=config.small_image_model)
    tf.io.gfile.makedirs(config.output_dir)
    return predict_slices(slices, predictor, config, view)
