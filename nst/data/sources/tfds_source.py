"""Bridge to TensorFlow Datasets: any TFDS image-classification dataset as nst records.

A usable dataset has an `Image` feature (uint8, 1 or 3 channels) and, for labeled use, a
`ClassLabel` feature; their keys default to "image" and "label" (mnist, cifar10, svhn_cropped,
imagenet2012, ...). Nothing is downloaded unless `download=True`: the dataset must already
be prepared in `data_dir` (or be mocked with `tfds.testing.mock_data`).

`tfds_source` reads TFDS directly as a `tf.data.Dataset` of dicts shaped like parsed
records (`nst.data.schema`):
  image  tf.string  JPEG bytes (quality 100) of the RGB image: grayscale is replicated to
                    3 channels, and with `image_size` the image is first resized to
                    image_size x image_size (bilinear, antialiased, rounded to uint8;
                    the aspect ratio is not kept)
  label  tf.int32   0-based class, -1 when `label_key=None`
  id     tf.string  stable image id (see `id_key`)
Re-encoding every image costs CPU, but it makes the direct path and the record path
(`tfds_to_records`, which writes exactly these bytes) feed identical pixels.

`id_key`: "tfds_id" (default) uses TFDS's own per-example id (`ReadConfig(add_tfds_id=True)`,
e.g. `mnist-train.tfrecord-00000-of-00001__17`); None uses `<name>/<split>/<index>` (index
in the deterministic, unshuffled reading order); any other value names a string feature of
the dataset (e.g. cifar10's "id", imagenet2012's "file_name").
"""

import math
import re
from typing import Dict, NamedTuple, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from nst import fileio
from nst.data import schema
from nst.data import sources

KINDS = ("labeled", "unlabeled")
RECORDS_PER_SHARD = 10_000  # default shard size of tfds_to_records
TFDS_ID = "tfds_id"


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("The TFDS bridge needs tensorflow-datasets "
                          "(pip install tensorflow-datasets)") from e
    return tfds


class ImageClassificationInfo(NamedTuple):
    """What the bridge needs to know about a TFDS dataset."""
    num_classes: Optional[int]  # None when read without labels
    class_names: Optional[list]
    channels: Optional[int]     # 1, 3 or None (unknown until decoded)


def check_features(name: str, features, image_key: str = "image",
                   label_key: Optional[str] = "label",
                   id_key: Optional[str] = TFDS_ID) -> ImageClassificationInfo:
    """Checks `features` (a TFDS FeaturesDict) for an image-classification dataset.

    Raises ValueError naming the dataset and its features when `image_key` is not a uint8
    Image with 1 or 3 channels, `label_key` (unless None) not a ClassLabel, or `id_key`
    (unless None / "tfds_id") not a string feature.
    """
    tfds = _tfds()
    keys = list(features.keys())

    def fail(problem):
        raise ValueError(f"TFDS dataset {name!r} is not usable as image classification: "
                         f"{problem}. Its features are: {features}")

    image = features[image_key] if image_key in keys else None
    if not isinstance(image, tfds.features.Image):
        fail(f"image_key={image_key!r} is not an Image feature (keys: {keys})")
    if np.dtype(image.np_dtype) != np.uint8:
        fail(f"image feature {image_key!r} has dtype {image.np_dtype}, not uint8")
    channels = image.shape[-1]
    if channels not in (1, 3, None):
        fail(f"image feature {image_key!r} has {channels} channels; 1 or 3 are supported")
    num_classes = class_names = None
    if label_key is not None:
        label = features[label_key] if label_key in keys else None
        if not isinstance(label, tfds.features.ClassLabel):
            fail(f"label_key={label_key!r} is not a ClassLabel feature (keys: {keys})")
        num_classes, class_names = label.num_classes, list(label.names)
    if id_key not in (None, TFDS_ID):
        feature = features[id_key] if id_key in keys else None
        if feature is None or np.dtype(feature.np_dtype).kind not in "OSU":
            fail(f"id_key={id_key!r} is not a string feature (keys: {keys})")
    return ImageClassificationInfo(num_classes, class_names, channels)


def _builder(name: str, data_dir: Optional[str], download: bool):
    tfds = _tfds()
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    return builder


def to_rgb_uint8(image: tf.Tensor, image_size: Optional[int] = None) -> tf.Tensor:
    """uint8 [H, W, 1 or 3] -> uint8 [H', W', 3]; resized to image_size if given."""
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels is None:  # known only at run time
        image = tf.cond(tf.equal(tf.shape(image)[-1], 1),
                        lambda: tf.image.grayscale_to_rgb(image), lambda: image)
    if image_size is not None:
        image = tf.image.resize(image, [image_size, image_size], method="bilinear",
                                antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.ensure_shape(image, [image_size, image_size, 3] if image_size else
                           [None, None, 3])


def tfds_source(name: str, split: str, *, data_dir: Optional[str] = None,
                image_key: str = "image", label_key: Optional[str] = "label",
                id_key: Optional[str] = TFDS_ID, image_size: Optional[int] = None,
                shuffle_files: bool = False, download: bool = False,
                num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """TFDS `name`/`split` as a dataset of {'image', 'label', 'id'} (module doc).

    `split` accepts the TFDS slicing syntax ("train[:90%]"). With shuffle_files=False
    (default) the order is deterministic. The dataset's element count is the TFDS one.
    """
    builder = _builder(name, data_dir, download)
    check_features(name, builder.info.features, image_key, label_key, id_key)
    tfds = _tfds()
    read_config = tfds.ReadConfig(add_tfds_id=id_key == TFDS_ID)
    dataset = builder.as_dataset(split=split, shuffle_files=shuffle_files,
                                 read_config=read_config)
    base_id = f"{name}/{split}/"

    def convert(index, example):
        if id_key is None:
            image_id = tf.strings.join([base_id, tf.strings.as_string(index)])
        else:
            image_id = tf.convert_to_tensor(example[id_key])
        label = (tf.constant(-1, tf.int32) if label_key is None
                 else tf.cast(example[label_key], tf.int32))
        image = to_rgb_uint8(example[image_key], image_size)
        return {"image": sources.jpeg_tensor(image), "label": label, "id": image_id}

    return dataset.enumerate().map(convert, num_parallel_calls=num_parallel_calls,
                                   deterministic=True)


def default_prefix(split: str, kind: str) -> str:
    """'extra' for unlabeled data; else the split name before any slice, e.g. 'train' for
    'train[:90%]' (non-alphanumerics -> '_')."""
    if kind == "unlabeled":
        return "extra"
    return re.sub(r"[^A-Za-z0-9_]", "_", split.split("[")[0]) or "data"


def _count(dataset: tf.data.Dataset) -> int:
    count = int(dataset.cardinality())
    if count >= 0:
        return count
    logging.warning("Unknown dataset size: counting the records with one extra pass.")
    return int(dataset.reduce(np.int64(0), lambda n, _: n + 1))


def tfds_to_records(name: str, split: str, output_dir: str, *,
                    data_dir: Optional[str] = None, kind: str = "labeled",
                    prefix: Optional[str] = None, num_shards: Optional[int] = None,
                    image_key: str = "image", label_key: Optional[str] = "label",
                    id_key: Optional[str] = TFDS_ID, image_size: Optional[int] = None,
                    dummy_pseudo_labels: bool = False, download: bool = False,
                    overwrite: bool = False) -> Dict:
    """Writes TFDS `name`/`split` as nst TFRecords `<output_dir>/<prefix>-%05d-of-%05d`.

    Args:
      kind: "labeled" (`labeled` format, label stored 1-based, needs `label_key`) or
        "unlabeled" (`unlabeled` format; the label, if `label_key` is given, is kept as the
        diagnostic true label).
      prefix: file prefix; default `default_prefix(split, kind)`. Eval reads `dev*` and
        `test*`, so pass prefix="test" for a "validation" split; for unlabeled data point
        `output_dir` at the directory given as `unlabel_data_dir`.
      num_shards: default ceil(N / 10,000). Shards are cut at `writers.shard_boundaries`.
      image_size, id_key, image_key, label_key, data_dir, download: as `tfds_source`.
      dummy_pseudo_labels: (unlabeled) add the original's dummy `probabilities`/`label`/
        `prob` fields so that the original trainer can read the files (K floats per
        record; nst's reader does not need them).
      overwrite: existing `<prefix>-*-of-*` files in output_dir raise FileExistsError
        unless True, in which case they are deleted first.
    Returns {"files": [...], "num_records": N, "num_classes": K, "per_class": [...],
    "record_format": kind, "pattern": "<prefix>-*"}.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "labeled" and label_key is None:
        raise ValueError("kind='labeled' needs a label_key")
    if dummy_pseudo_labels and label_key is None:
        raise ValueError("dummy_pseudo_labels needs label_key (for the number of classes)")
    if num_shards is not None and num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    builder = _builder(name, data_dir, download)
    info = check_features(name, builder.info.features, image_key, label_key, id_key)
    prefix = prefix or default_prefix(split, kind)

    owned = sources.OutputDir(output_dir, [("", sources.shard_file_regex([prefix]))])
    existing = owned.owned_files()
    if existing and not overwrite:
        raise FileExistsError(f"{output_dir} already holds {prefix} shards ({existing[0]}, "
                              f"...); pass overwrite=True to replace them")
    for relative in existing:
        tf.io.gfile.remove(fileio.join(output_dir, relative))

    dataset = tfds_source(name, split, data_dir=data_dir, image_key=image_key,
                          label_key=label_key, id_key=id_key, image_size=image_size)
    num_records = _count(dataset)
    num_shards = num_shards or max(1, math.ceil(num_records / RECORDS_PER_SHARD))
    num_classes = info.num_classes
    labels = []
    iterator = dataset.as_numpy_iterator()

    def encode(example):
        label = int(example["label"])
        labels.append(label)
        if kind == "labeled":
            return schema.encode_labeled(example["image"], label, image_id=example["id"],
                                         num_classes=num_classes)
        return schema.encode_unlabeled(
            example["image"], true_label=None if label < 0 else label,
            image_id=example["id"],
            dummy_num_classes=num_classes if dummy_pseudo_labels else None)

    def records(start, stop):
        for _ in range(start, stop):
            example = next(iterator, None)
            if example is None:  # raising here aborts the shard: no short file appears
                raise ValueError(f"{name}/{split} ended after {len(labels)} records; its "
                                 f"cardinality said {num_records}")
            yield encode(example)

    tf.io.gfile.makedirs(output_dir)
    files = sources.write_split(output_dir, prefix, num_records, num_shards, records)
    if next(iterator, None) is not None:
        raise ValueError(f"{name}/{split} has more records than its cardinality "
                         f"{num_records}; the files written are incomplete")
    per_class = (sources.class_counts([l for l in labels if l >= 0], num_classes)
                 if num_classes else None)
    return {"files": [fileio.join(output_dir, f["file"]) for f in files],
            "num_records": num_records, "num_classes": num_classes,
            "class_names": info.class_names, "per_class": per_class,
            "record_format": kind, "pattern": f"{prefix}-*"}
