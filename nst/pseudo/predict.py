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

Every output file is written atomically; a slice whose outputs all exist is finished and
skipped on a re-run, any other slice is redone from scratch. The number of predictions
must equal the slice's record count (the info file's, when one exists, as in the
original) or nothing is published.
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


def _slice_dataset(s: Slice, record_format: str, num_classes: int, view: ip.ViewConfig,
                   batch_size: int, skip_corrupt: bool, skipped, check_images: bool):
    records = readers.read_examples(
        s.input_path, record_format, num_classes, decode_images=check_images,
        skip_corrupt=skip_corrupt, skipped=skipped, deterministic=True)
    if s.replicas > 1:
        records = records.filter(
            lambda r: tf.equal(r["index"] % s.replicas, s.worker))

    def make(record):
        pixels = view.eval(preprocess.decode_image(record["image"]))
        return {"pixels": pixels, "image": record["image"], "id": record["id"],
                "index": record["index"], "true_label": record["true_label"]}

    return (records.map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size).prefetch(2))


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


def _expected_count(s: Slice) -> int:
    if s.info_path and tf.io.gfile.exists(s.info_path):
        # Trusted, as in the original: recounting a 2M-image shard costs a full read.
        try:
            return int(fileio.read_json(s.info_path)["image_num"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"Info file {s.info_path} is not {{\"image_num\": N}}: {e}") from None
    count = count_slice(s)
    if s.info_path:
        tf.io.gfile.makedirs(os.path.dirname(s.info_path))
        fileio.atomic_write_json(s.info_path, {"image_num": count})
    return count


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


def predict_slice(s: Slice, predictor: Predictor, config: config_lib.ExperimentConfig,
                  view: ip.ViewConfig) -> Dict:
    """Predicts one slice and publishes its outputs; returns a summary dict."""
    if all(tf.io.gfile.exists(p) for p in s.outputs):
        logging.info("Shard %d worker %d: %s exists, skipped", s.shard, s.worker,
                     s.output_path)
        return {"shard": s.shard, "worker": s.worker, "output": s.output_path,
                "skipped": True}
    if not tf.io.gfile.exists(s.input_path):
        raise FileNotFoundError(f"Input shard {s.input_path} does not exist (--label_data_dir, "
                                f"--file_prefix, --num_shards, --shard_id)")
    reassign = config.reassign_label
    expected = count_slice(s) if reassign else _expected_count(s)
    skipped = readers.SkippedRecords() if config.skip_corrupt else None
    record_format = "pseudo_labeled" if reassign else "unlabeled"
    samples = None
    if reassign and config.num_sample_images > 0:
        rate = config.num_sample_images / max(expected * config.num_shards, 1)
        samples = _Samples(config.output_dir, s.shard, rate, config.seed)
    tf.io.gfile.makedirs(os.path.dirname(s.output_path))
    writers_ = [writers.ShardWriter(p) for p in s.outputs]
    for w in writers_:
        w.open()
    written, start, last_log = 0, time.time(), time.time()
    num_classes = config.num_label_classes
    encode = wire.PseudoLabeledEncoder()  # = schema.encode_pseudo_labeled, ~10x faster
    try:
        dataset = _slice_dataset(s, record_format, num_classes, view, predictor.batch_size,
                                 config.skip_corrupt, skipped, check_images=config.skip_corrupt)
        try:
            for batch in dataset.as_numpy_iterator():
                probabilities = np.ascontiguousarray(predictor(batch["pixels"]), "<f4")
                labels = probabilities.argmax(axis=1)
                for i in range(len(labels)):
                    image_id = batch["id"][i].decode("utf-8")
                    true_label = int(batch["true_label"][i])
                    writers_[0].write(encode(
                        batch["image"][i], probabilities[i], int(labels[i]),
                        true_label if true_label >= 0 else None, image_id))
                    if s.train_info_path:
                        writers_[1].write(schema.encode_prediction(
                            probabilities[i], classes=int(labels[i]), image_id=image_id))
                    if samples is not None:
                        samples.maybe_write(image_id, int(batch["index"][i]), int(labels[i]),
                                            float(probabilities[i, labels[i]]),
                                            batch["image"][i])
                written += len(labels)
                if time.time() - last_log > LOG_EVERY_SECONDS:
                    last_log = time.time()
                    rate = written / (last_log - start)
                    logging.info("shard %d: %d/%d images (%.0f img/s, ETA %.0f s)", s.shard,
                                 written, expected, rate, (expected - written) / max(rate, 1e-9))
        except tf.errors.InvalidArgumentError:
            if config.skip_corrupt:
                raise
            # An image that does not decode fails the batched map without saying which
            # record; one checking pass names it (and raises).
            for _ in readers.read_examples(s.input_path, record_format, num_classes,
                                           decode_images=True):
                pass
            raise
        num_skipped = skipped.count if skipped is not None else 0
        if written + num_skipped != expected:
            where = f"the info file {s.info_path}" if (s.info_path and not reassign) else \
                f"{s.input_path}"
            raise ValueError(
                f"Count mismatch for shard {s.shard}, worker {s.worker}: {written} predictions "
                f"(+{num_skipped} skipped corrupt records) but {where} says {expected} records"
                f"{'' if s.replicas == 1 else f' in slice {s.worker} of {s.replicas}'}; "
                f"nothing was published")
        for w in writers_:
            w.close()
    except BaseException:
        for w in writers_:
            w.abort()
        raise
    if num_skipped:
        logging.warning("Shard %d: skipped %d corrupt records of %s: %s", s.shard,
                        num_skipped, s.input_path, skipped)
    elapsed = time.time() - start
    logging.info("Shard %d worker %d: %d predictions -> %s (%.0f img/s)", s.shard, s.worker,
                 written, s.output_path, written / max(elapsed, 1e-9))
    return {"shard": s.shard, "worker": s.worker, "output": s.output_path, "skipped": False,
            "num_records": written, "num_skipped": num_skipped,
            "num_samples": samples.written if samples else 0}


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
    return [predict_slice(s, predictor, config, view) for s in slices]
