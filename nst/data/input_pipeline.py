"""tf.data input for training and evaluation (spec §5.1, §7.6).

The student's training batch, per replica, is B labeled rows followed by
U = ceil(B * p * r) unlabeled rows, with static shapes (drop remainder) so
it can feed TPUs:

| key | shape | content |
|---|---|---|
| image | [B+U, S, S, 3] float32 | student views (noised), pixels 0..255 |
| label | [B+U] int32 | labeled rows: true class; unlabeled rows: stored pseudo label, or -1 |
| unl_probs | [U, K] float32 | stored teacher distribution (offline labels only) |
| teacher_image | [U, T, T, 3] float32 | clean view at the teacher's resolution (online teacher only) |

Unlike the original, the online teacher gets views of the unlabeled rows
only (it never used its labeled-row outputs), and raw unlabeled files need no
dummy `probabilities`/`prob` when an online teacher supplies the targets.

Randomness is stateless per element: each image's seed is derived from
`seed`, the input pipeline id and the element's position in the stream, so
a run with a fixed seed and deterministic reading sees the same views every
time.
"""

import dataclasses
import math
from typing import Optional

import tensorflow as tf

from nst.data import preprocess
from nst.data import readers


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """How images become model inputs (§7.2-§7.4).

    Attributes:
      image_size: output side S in pixels.
      small_image: the 32x32 recipe (§7.4) instead of the ImageNet one.
      augment_name: None/"" or "v1" (RandAugment).
      randaug_layer, randaug_mag: RandAugment N and M.
      cutout_op: Cutout among the RandAugment ops.
      flip: random horizontal flip in training (the original: off for SVHN).
      remove_aug: training uses the eval view (no crop, flip or RandAugment).
      out_of_range: RandAugment overflow mode, see `nst.augment.randaugment`.
    """
    image_size: int
    small_image: bool = False
    augment_name: Optional[str] = None
    randaug_layer: int = 2
    randaug_mag: int = 27
    cutout_op: bool = True
    flip: bool = True
    remove_aug: bool = False
    out_of_range: str = "original"

    def train(self, image, seed=None):
        """uint8 [H, W, 3] -> float32 [S, S, 3], noised."""
        if self.remove_aug:
            return self.eval(image)
        return preprocess.train_view(
            image, self.image_size, augment_name=self.augment_name,
            randaug_layer=self.randaug_layer, randaug_mag=self.randaug_mag,
            cutout_op=self.cutout_op, small_image=self.small_image, flip=self.flip,
            out_of_range=self.out_of_range, seed=seed)

    def eval(self, image):
        """uint8 [H, W, 3] -> float32 [S, S, 3], clean."""
        return preprocess.eval_view(image, self.image_size, small_image=self.small_image)


def unlabeled_batch_size(batch_size: int, unlabel_ratio: float,
                         label_data_sample_prob: float = 1.0) -> int:
    """U = ceil(B * p * r), the unlabeled rows per replica (§5.1)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if unlabel_ratio < 0 or not 0 < label_data_sample_prob <= 1:
        raise ValueError(f"need unlabel_ratio >= 0 and 0 < label_data_sample_prob <= 1, got "
                         f"{unlabel_ratio}, {label_data_sample_prob}")
    # Round before ceil so that e.g. 128 * 0.1 * 5 = 64.00000000000001 stays 64.
    return int(math.ceil(round(batch_size * label_data_sample_prob * unlabel_ratio, 9)))


def _element_seeds(dataset, seed, input_context, skip_elements=0):
    """Adds a stateless seed [2] int64 to each element: (seed + pipeline, position).

    `skip_elements` drops the stream's first elements before any image work,
    so a resumed job continues the exact stream of an uninterrupted one at
    the cost of reading (not decoding or augmenting) what it skips.
    """
    pipeline = input_context.input_pipeline_id if input_context else 0
    base = tf.constant((seed or 0) * 1000003 + pipeline, tf.int64)
    return dataset.enumerate().skip(skip_elements).map(
        lambda i, element: (element, tf.stack([base, i])))


def _read(patterns, record_format, num_classes, *, input_context, seed, repeat,
          shuffle_files, skip_corrupt, skipped, deterministic):
    return readers.read_examples(
        patterns, record_format, num_classes, input_context=input_context,
        shuffle_files=shuffle_files, seed=seed, repeat=repeat,
        deterministic=deterministic, skip_corrupt=skip_corrupt, skipped=skipped,
        decode_images=True)


def labeled_train_dataset(patterns, num_classes: int, batch_size: int, view: ViewConfig, *,
                          input_context=None, seed: Optional[int] = None,
                          use_cache: bool = True, shuffle_buffer: int = 16384,
                          num_train_shards: Optional[int] = None,
                          skip_corrupt: bool = False, skipped=None,
                          deterministic: bool = True, start_batch: int = 0) -> tf.data.Dataset:
    """Endless labeled training batches: {'image': [B, S, S, 3], 'label': [B] int32}.

    Files: sorted matches of `patterns`, only the first `num_train_shards`
    if given. With `use_cache` the parsed records are cached in memory after
    the first pass and reshuffled every epoch (the original's default).
    `start_batch` resumes the stream at that batch (see `_element_seeds`).
    """
    files = readers.list_files(patterns)
    if num_train_shards:
        files = files[:num_train_shards]
    records = _read(files, "labeled", num_classes, input_context=input_context, seed=seed,
                    repeat=not use_cache, shuffle_files=True, skip_corrupt=skip_corrupt,
                    skipped=skipped, deterministic=deterministic)
    records = records.map(lambda r: {"image": r["image"], "label": r["label"]})
    if use_cache:
        records = records.cache().shuffle(shuffle_buffer, seed=seed).repeat()
    else:
        records = records.shuffle(min(shuffle_buffer, 1024), seed=seed)
    records = _element_seeds(records, seed, input_context, start_batch * batch_size)

    def make(record, element_seed):
        image = preprocess.decode_image(record["image"])
        return {"image": view.train(image, seed=element_seed), "label": record["label"]}

    return (records.map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
            .batch(batch_size, drop_remainder=True))


def unlabeled_train_dataset(patterns, num_classes: int, batch_size: int, view: ViewConfig, *,
                            teacher_view: Optional[ViewConfig] = None,
                            stored_labels: bool = False,
                            input_context=None, seed: Optional[int] = None,
                            use_cache: bool = False, shuffle_buffer: int = 1024,
                            skip_corrupt: bool = False, skipped=None,
                            deterministic: bool = True, start_batch: int = 0) -> tf.data.Dataset:
    """Endless unlabeled training batches (U rows).

    Yields {'image': [U, S, S, 3], 'label': [U] int32} plus, with
    `stored_labels`, 'unl_probs' [U, K] and 'top_1_prob' [U] from the records
    (which must carry pseudo labels), and with a `teacher_view`,
    'teacher_image' [U, T, T, 3]: the clean view of the same image.

    The unlabeled stream is not cached by default: at the scale Noisy
    Student uses (100M+ images) it does not fit in host memory.
    """
    if not stored_labels and teacher_view is None:
        raise ValueError("Unlabeled data needs targets: pass stored_labels=True (offline "
                         "pseudo labels) or a teacher_view (online teacher)")
    records = _read(patterns, "unlabeled", num_classes, input_context=input_context,
                    seed=seed, repeat=not use_cache, shuffle_files=True,
                    skip_corrupt=skip_corrupt, skipped=skipped, deterministic=deterministic)

    def check(record):
        if not stored_labels:
            return record
        ok = tf.debugging.Assert(record["has_pseudo_label"], [
            "Unlabeled record without a pseudo label (no `probabilities`) in file",
            record["file"], "at record index", record["index"],
            "- train with an online teacher or predict and filter this data first"])
        with tf.control_dependencies([ok]):
            return tf.nest.map_structure(tf.identity, record)

    keys = ("image", "label", "probabilities", "prob")
    records = records.map(check).map(lambda r: {k: r[k] for k in keys})
    if use_cache:
        records = records.cache().shuffle(shuffle_buffer, seed=seed).repeat()
    else:
        records = records.shuffle(shuffle_buffer, seed=seed)
    records = _element_seeds(records, seed, input_context, start_batch * batch_size)

    def make(record, element_seed):
        image = preprocess.decode_image(record["image"])
        out = {"image": view.train(image, seed=element_seed), "label": record["label"]}
        if stored_labels:
            out["unl_probs"] = record["probabilities"]
            out["top_1_prob"] = record["prob"]
        if teacher_view is not None:
            out["teacher_image"] = teacher_view.eval(image)
        return out

    return (records.map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
            .batch(batch_size, drop_remainder=True))


def combine(labeled: tf.data.Dataset, unlabeled: Optional[tf.data.Dataset]) -> tf.data.Dataset:
    """Zips labeled and unlabeled batches into one student batch, labeled rows first."""
    if unlabeled is None:
        return labeled

    def concat(lab, unl):
        out = {"image": tf.concat([lab["image"], unl["image"]], 0),
               "label": tf.concat([lab["label"], unl["label"]], 0)}
        for key in ("unl_probs", "top_1_prob", "teacher_image"):
            if key in unl:
                out[key] = unl[key]
        return out

    return tf.data.Dataset.zip((labeled, unlabeled)).map(concat)


def eval_dataset(patterns, num_classes: int, batch_size: int, view: ViewConfig, *,
                 input_context=None, drop_remainder: bool = False,
                 skip_corrupt: bool = False, skipped=None,
                 max_images: Optional[int] = None) -> tf.data.Dataset:
    """One ordered pass for eval / predict: {'image', 'label', 'id'} batches.

    Labels come from labeled records (1-based on disk, 0-based here). With
    `drop_remainder=False` the last batch may be smaller; every image is
    seen exactly once. `max_images`: only the first N images (in file order).
    """
    records = _read(patterns, "labeled", num_classes, input_context=input_context, seed=None,
                    repeat=False, shuffle_files=False, skip_corrupt=skip_corrupt,
                    skipped=skipped, deterministic=True)
    if max_images is not None:
        records = records.take(max_images)

    def make(record):
        image = preprocess.decode_image(record["image"])
        return {"image": view.eval(image), "label": record["label"], "id": record["id"]}

    return (records.map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size, drop_remainder=drop_remainder))


def student_train_dataset(label_patterns, unlabel_patterns, num_classes: int,
                          batch_size: int, view: ViewConfig, *,
                          unlabel_ratio: float = 0.0, label_data_sample_prob: float = 1.0,
                          unlabeled_view: Optional[ViewConfig] = None,
                          teacher_view: Optional[ViewConfig] = None,
                          input_context=None, seed: Optional[int] = None,
                          use_cache: bool = True, num_train_shards: Optional[int] = None,
                          skip_corrupt: bool = False, skipped=None,
                          deterministic: bool = True, start_batch: int = 0) -> tf.data.Dataset:
    """The per-replica training stream of §5.1.

    Args:
      label_patterns, unlabel_patterns: file patterns (see `readers.list_files`).
      num_classes: K.
      batch_size: B, labeled rows per replica.
      view: the student's view of labeled images (and of unlabeled ones unless
        `unlabeled_view` is given — the original's `unl_aug`).
      unlabel_ratio, label_data_sample_prob: r and p; U = ceil(B * p * r).
        r = 0 gives plain supervised batches (how teachers train).
      teacher_view: the online teacher's clean view (its own resolution); None
        means the unlabeled records' stored pseudo labels are the targets.
      input_context: from `strategy.distribute_datasets_from_function`.
      seed: makes file order, shuffling and augmentation reproducible.
      start_batch: batches of this pipeline already consumed (resuming).
    """
    labeled = labeled_train_dataset(
        label_patterns, num_classes, batch_size, view, input_context=input_context,
        seed=seed, use_cache=use_cache, num_train_shards=num_train_shards,
        skip_corrupt=skip_corrupt, skipped=skipped, deterministic=deterministic,
        start_batch=start_batch)
    if unlabel_ratio == 0:
        return labeled.prefetch(tf.data.AUTOTUNE)
    unlabeled = unlabeled_train_dataset(
        unlabel_patterns, num_classes,
        unlabeled_batch_size(batch_size, unlabel_ratio, label_data_sample_prob),
        unlabeled_view or view, teacher_view=teacher_view,
        stored_labels=teacher_view is None, input_context=input_context,
        seed=None if seed is None else seed + 1, skip_corrupt=skip_corrupt, skipped=skipped,
        deterministic=deterministic, start_batch=start_batch)
    return combine(labeled, unlabeled).prefetch(tf.data.AUTOTUNE)
