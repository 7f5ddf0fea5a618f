"""Every TFRecord record format of the pipeline, by name (spec §3).

All files hold serialized `tf.train.Example` protos. On disk:

  format          required keys                               optional keys
  labeled         image/encoded, image/class/label (1-based)  image/id
  unlabeled       image/encoded                               probabilities [K], prob, label,
                                                              image/class/label, image/id
  prediction      probabilities [K], classes (0-based)        image/id
  pseudo_labeled  image/encoded, label (0-based), prob,       image/class/label, image/id
                  probabilities [K]

`labeled` covers ImageNet style (§3.1) and SVHN style (§3.2), which share their keys; the
aliases `imagenet` and `svhn` name the same format. `filtered` aliases `pseudo_labeled` (§3.5,
also §3.6). `image/id` is our own addition: a stable per-image id that original files lack.

In memory every format parses to a dict of tensors, per record (scalars unless a shape is
given; parsing a batch of B records adds a leading dimension B):

  image            tf.string   encoded JPEG bytes, unchanged
  label            tf.int32    0-based class. Labeled files store label+1 (§3.1): parse
                               subtracts one, encode adds one. Pseudo labels are stored 0-based.
  probabilities    tf.float32  [K] class distribution
  prob             tf.float32  confidence of `label`
  has_pseudo_label tf.bool     (unlabeled) the record carries a real pseudo label
  true_label       tf.int32    (unlabeled, pseudo_labeled) 0-based true class, -1 if not stored
  classes          tf.int32    (prediction) argmax class, 0-based
  id               tf.string   `image/id` if stored, else `<file basename>:<record index>` when
                               the caller passes the record's file and index, else ''

Unlabeled records (§3.3): the original trainer needs dummy `probabilities`/`prob` in every
record. Here they are optional. `has_pseudo_label` is true iff `probabilities` holds K values
that are not all zero, so the original's dummy zeros (`proc_svhn.py` extra split) read as
"no pseudo label". Without a pseudo label: probabilities = zeros[K], prob = 0, label = -1.
With one, a missing `label` defaults to argmax(probabilities), a missing `prob` to its max.

Parsing never silently repairs bad data. `RecordFormat.parse_checked` returns the features and
a `problem` string ('' when valid) for: a missing required key, a feature with the wrong
number of values, a label or class outside [0, K) after conversion. `RecordFormat.parse`
turns a problem into an `InvalidArgumentError` naming the file and record index. Bytes that
are not an Example, or a key stored with the wrong type, make the parse op itself fail;
`nst.data.readers` catches those too and names the record.
"""

import dataclasses
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

IMAGE_KEY = "image/encoded"
CLASS_LABEL_KEY = "image/class/label"  # 1-based on disk
ID_KEY = "image/id"
PROBABILITIES_KEY = "probabilities"
PROB_KEY = "prob"
LABEL_KEY = "label"  # 0-based on disk
CLASSES_KEY = "classes"

Features = Dict[str, tf.Tensor]
ImageId = Union[str, bytes, None]


# --------------------------------------------------------------------------- encoding


def _bytes(value: Union[str, bytes]) -> tf.train.Feature:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _floats(values) -> tf.train.Feature:
    values = np.asarray(values, np.float32).reshape(-1)
    return tf.train.Feature(float_list=tf.train.FloatList(value=values.tolist()))


def _serialize(feature: Dict[str, tf.train.Feature]) -> bytes:
    # deterministic: map entries in key order, so a record's bytes do not depend on
    # the process that wrote it (resumed jobs rewrite files byte for byte).
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def _check_label(label: int, num_classes: Optional[int], what: str):
    if label < 0 or (num_classes is not None and label >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise ValueError(f"{what} {label} must be 0-based and {bound}")


def _common(feature, image_id: ImageId, true_label: Optional[int], num_classes: Optional[int]):
    if image_id is not None:
        feature[ID_KEY] = _bytes(image_id)
    if true_label is not None:
        _check_label(true_label, num_classes, "true_label")
        feature[CLASS_LABEL_KEY] = _int64(true_label + 1)
    return feature


def encode_labeled(image: bytes, label: int, *, image_id: ImageId = None,
                   num_classes: Optional[int] = None) -> bytes:
    """Labeled record (§3.1/§3.2). `label` is 0-based and stored as label+1."""
    _check_label(label, num_classes, "label")
    feature = {IMAGE_KEY: _bytes(image), CLASS_LABEL_KEY: _int64(label + 1)}
    return _serialize(_common(feature, image_id, None, num_classes))


def encode_unlabeled(image: bytes, *, probabilities: Optional[Sequence[float]] = None,
                     label: Optional[int] = None, prob: Optional[float] = None,
                     true_label: Optional[int] = None, image_id: ImageId = None,
                     dummy_num_classes: Optional[int] = None) -> bytes:
    """Unlabeled record (§3.3).

    Without `probabilities` the record is raw: only the image (plus id / true label). Pass
    `dummy_num_classes=K` to add the original's dummy fields (probabilities = [0]*K, label 0,
    prob 0) so that the original trainer can read the file too. `label` and `prob` default to
    argmax / max of `probabilities`. `true_label` is 0-based, stored 1-based.
    """
    feature = {IMAGE_KEY: _bytes(image)}
    if probabilities is None and dummy_num_classes is not None:
        feature.update({PROBABILITIES_KEY: _floats(np.zeros(dummy_num_classes)),
                        LABEL_KEY: _int64(0), PROB_KEY: _floats([0.0])})
    elif probabilities is not None:
        feature.update(_pseudo_label_features(probabilities, label, prob))
    elif label is not None or prob is not None:
        raise ValueError("label/prob need probabilities (or dummy_num_classes)")
    num_classes = None if probabilities is None else len(probabilities)
    return _serialize(_common(feature, image_id, true_label, num_classes))


def _pseudo_label_features(probabilities, label, prob):
    probabilities = np.asarray(probabilities, np.float32).reshape(-1)
    label = int(np.argmax(probabilities)) if label is None else int(label)
    _check_label(label, len(probabilities), "label")
    prob = float(probabilities[label]) if prob is None else float(prob)
    return {PROBABILITIES_KEY: _floats(probabilities), LABEL_KEY: _int64(label),
            PROB_KEY: _floats([prob])}


def encode_prediction(probabilities: Sequence[float], *, classes: Optional[int] = None,
                      image_id: ImageId = None) -> bytes:
    """Prediction record (§3.4): teacher distribution; `classes` defaults to its argmax."""
    probabilities = np.asarray(probabilities, np.float32).reshape(-1)
    classes = int(np.argmax(probabilities)) if classes is None else int(classes)
    _check_label(classes, len(probabilities), "classes")
    feature = {PROBABILITIES_KEY: _floats(probabilities), CLASSES_KEY: _int64(classes)}
    return _serialize(_common(feature, image_id, None, None))


def encode_pseudo_labeled(image: bytes, probabilities: Sequence[float], *,
                          label: Optional[int] = None, prob: Optional[float] = None,
                          true_label: Optional[int] = None, image_id: ImageId = None) -> bytes:
    """Pseudo-labelled / filtered record (§3.5). `label` (0-based) and `prob` default to the
    argmax / max of `probabilities`; `true_label` (0-based) optionally keeps the source's."""
    feature = {IMAGE_KEY: _bytes(image)}
    feature.update(_pseudo_label_features(probabilities, label, prob))
    return _serialize(_common(feature, image_id, true_label, len(probabilities)))


# --------------------------------------------------------------------------- parsing
# Parsers work on a batch: serialized [B] -> features with leading dimension B and problems
# [B]. One `parse_example` per batch keeps the per-record cost of tf.data low.


class _Problems:
    """Per-record problem strings [B]: the first added message whose condition holds."""

    def __init__(self, batch_size: tf.Tensor):
        self._batch_size = batch_size
        self._items = []

    def add(self, condition: tf.Tensor, message):
        self._items.append((condition, message))

    def first(self) -> tf.Tensor:
        problems = tf.fill([self._batch_size], "")
        for condition, message in reversed(self._items):
            problems = tf.where(condition, message, problems)
        return problems


def _text(*parts) -> tf.Tensor:
    """Elementwise string concatenation of str and numeric [B] tensors."""
    return tf.strings.join([p if isinstance(p, str) else tf.strings.as_string(p)
                            for p in parts])


def _raw(serialized: tf.Tensor, keys_and_dtypes: Dict[str, tf.DType]):
    """serialized [B] -> {key: RaggedTensor [B, None]}; a missing key gives an empty row."""
    spec = {key: tf.io.RaggedFeature(dtype, row_splits_dtype=tf.int64)
            for key, dtype in keys_and_dtypes.items()}
    return tf.io.parse_example(serialized, spec)


def _scalar(raw, key: str, default, problems: _Problems, required: bool):
    """-> (value [B], present [B] bool). A feature must hold exactly one value."""
    count = raw[key].row_lengths()
    present = count > 0
    problems.add(count > 1, _text(f"feature {key} has ", count, " values, expected 1"))
    if required:
        problems.add(~present, f"missing required feature {key}")
    return raw[key].to_tensor(default, shape=[None, 1])[:, 0], present


def _vector(raw, key: str, num_classes: int, problems: _Problems, required: bool):
    """-> (values [B, K] float32, zeros where missing; present [B] bool)."""
    count = raw[key].row_lengths()
    present = count > 0
    problems.add(present & (count != num_classes), _text(
        f"feature {key} has ", count, f" values, expected num_classes={num_classes}"))
    if required:
        problems.add(~present, f"missing required feature {key}")
    dense = raw[key].to_tensor(0.0, shape=[None, num_classes])
    return tf.where((count == num_classes)[:, None], dense, tf.zeros_like(dense)), present


def stored_class(value: tf.Tensor, present: tf.Tensor, num_classes: int,
                 shift: int = 0) -> Tuple[tf.Tensor, tf.Tensor]:
    """A class as stored (int64 [B]; `shift` 1 for the 1-based image/class/label) ->
    (0-based int32 class [B], -1 where not `present`; bool [B], true where present and
    outside [0, K)). The check of every parser here, and of the filter's fast reader."""
    label = value - shift
    outside = present & ((label < 0) | (label >= num_classes))
    return tf.cast(tf.where(present, label, -1), tf.int32), outside


def _class(value, num_classes: int, present, problems: _Problems, what: str,
           shift: int = 0) -> tf.Tensor:
    """0-based int32 class `value - shift` ([B]; -1 where absent); a problem if present
    and outside [0, K)."""
    label, outside = stored_class(value, present, num_classes, shift)
    stored = "1-based" if shift else "0-based"
    problems.add(outside, _text(f"{what} ", value - shift, f" ({stored} on disk: ", value,
                                f") is outside [0, {num_classes})"))
    return label


def derived_id(file_basename: str, index: int) -> str:
    """The id of record `index` of a file that stores no image/id:
    `<file basename>:<record index>`, what the parsers derive (`_record_id`)."""
    return f"{file_basename}:{index}"


def _record_id(raw, problems: _Problems, file, index) -> tf.Tensor:
    stored, present = _scalar(raw, ID_KEY, "", problems, required=False)
    if file is None or index is None:
        derived = tf.constant("")
    else:
        derived = _text(tf.strings.regex_replace(file, r"^.*/", ""), ":", index)
    return tf.where(present, stored, derived)


def _true_label(raw, num_classes, problems):
    value, present = _scalar(raw, CLASS_LABEL_KEY, -1, problems, required=False)
    return _class(value, num_classes, present, problems, "true label", shift=1)


def _parse_labeled(serialized, num_classes, file, index):
    raw = _raw(serialized, {IMAGE_KEY: tf.string, CLASS_LABEL_KEY: tf.int64, ID_KEY: tf.string})
    problems = _Problems(tf.size(serialized))
    image, _ = _scalar(raw, IMAGE_KEY, "", problems, required=True)
    value, present = _scalar(raw, CLASS_LABEL_KEY, -1, problems, required=True)
    features = {
        "image": image,
        "label": _class(value, num_classes, present, problems, "label", shift=1),
        "id": _record_id(raw, problems, file, index),
    }
    return features, problems.first()


def _parse_unlabeled(serialized, num_classes, file, index):
    raw = _raw(serialized, {IMAGE_KEY: tf.string, PROBABILITIES_KEY: tf.float32,
                            PROB_KEY: tf.float32, LABEL_KEY: tf.int64,
                            CLASS_LABEL_KEY: tf.int64, ID_KEY: tf.string})
    problems = _Problems(tf.size(serialized))
    image, _ = _scalar(raw, IMAGE_KEY, "", problems, required=True)
    probabilities, stored = _vector(raw, PROBABILITIES_KEY, num_classes, problems,
                                    required=False)
    has = stored & (tf.reduce_sum(tf.abs(probabilities), axis=1) > 0)
    label, label_present = _scalar(raw, LABEL_KEY, -1, problems, required=False)
    label = tf.where(label_present, label, tf.argmax(probabilities, axis=1))
    prob, prob_present = _scalar(raw, PROB_KEY, 0.0, problems, required=False)
    prob = tf.where(prob_present, prob, tf.reduce_max(probabilities, axis=1))
    features = {
        "image": image,
        "probabilities": probabilities,
        "prob": tf.where(has, prob, 0.0),
        "label": _class(label, num_classes, has, problems, "pseudo label"),
        "has_pseudo_label": has,
        "true_label": _true_label(raw, num_classes, problems),
        "id": _record_id(raw, problems, file, index),
    }
    return features, problems.first()


def _parse_prediction(serialized, num_classes, file, index):
    raw = _raw(serialized, {PROBABILITIES_KEY: tf.float32, CLASSES_KEY: tf.int64,
                            ID_KEY: tf.string})
    problems = _Problems(tf.size(serialized))
    probabilities, _ = _vector(raw, PROBABILITIES_KEY, num_classes, problems, required=True)
    classes, present = _scalar(raw, CLASSES_KEY, -1, problems, required=True)
    features = {
        "probabilities": probabilities,
        "classes": _class(classes, num_classes, present, problems, "classes"),
        "id": _record_id(raw, problems, file, index),
    }
    return features, problems.first()


def _parse_pseudo_labeled(serialized, num_classes, file, index):
    raw = _raw(serialized, {IMAGE_KEY: tf.string, PROBABILITIES_KEY: tf.float32,
                            PROB_KEY: tf.float32, LABEL_KEY: tf.int64,
                            CLASS_LABEL_KEY: tf.int64, ID_KEY: tf.string})
    problems = _Problems(tf.size(serialized))
    image, _ = _scalar(raw, IMAGE_KEY, "", problems, required=True)
    probabilities, _ = _vector(raw, PROBABILITIES_KEY, num_classes, problems, required=True)
    label, present = _scalar(raw, LABEL_KEY, -1, problems, required=True)
    prob, _ = _scalar(raw, PROB_KEY, 0.0, problems, required=True)
    features = {
        "image": image,
        "label": _class(label, num_classes, present, problems, "label"),
        "prob": prob,
        "probabilities": probabilities,
        "true_label": _true_label(raw, num_classes, problems),
        "id": _record_id(raw, problems, file, index),
    }
    return features, problems.first()


# --------------------------------------------------------------------------- formats


@dataclasses.dataclass(frozen=True)
class RecordFormat:
    """One record format: its name, on-disk keys, encoder and parser."""

    name: str
    required_keys: Tuple[str, ...]
    optional_keys: Tuple[str, ...]
    encode: Callable[..., bytes]
    _parse: Callable = dataclasses.field(repr=False)

    def parse_checked(self, serialized: tf.Tensor, num_classes: int,
                      file: Optional[tf.Tensor] = None,
                      index: Optional[tf.Tensor] = None) -> Tuple[Features, tf.Tensor]:
        """serialized: tf.string [] or [B] -> (features, problems: tf.string [] or [B]).

        A problem is '' for a valid record, else a description. `file` (tf.string [] or
        [B]) and `index` (int64, same shape as `serialized`) locate the records; they only
        feed the derived id. Raises (inside the op) only when a record is not a parseable
        Example or stores a key with another type.
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        serialized = tf.convert_to_tensor(serialized, tf.string)
        if serialized.shape.rank == 0:
            index = None if index is None else tf.reshape(index, [1])
            features, problems = self._parse(serialized[None], num_classes, file, index)
            return tf.nest.map_structure(lambda t: t[0], (features, problems))
        return self._parse(serialized, num_classes, file, index)

    def parse(self, serialized: tf.Tensor, num_classes: int,
              file: Optional[tf.Tensor] = None, index: Optional[tf.Tensor] = None) -> Features:
        """Like `parse_checked`, but an invalid record raises InvalidArgumentError whose
        message names the format, the file, the record index and the problem."""
        features, problems = self.parse_checked(serialized, num_classes, file, index)
        bad = tf.not_equal(tf.reshape(problems, [-1]), "")
        first = tf.argmax(tf.concat([bad, [True]], 0))  # first bad record; B if none
        file = "<unknown file>" if file is None else file
        index = tf.constant(-1, tf.int64) if index is None else index
        check = tf.debugging.Assert(~tf.reduce_any(bad), [
            f"Invalid {self.name} record in file", _pick(file, first, ""),
            "record index", _pick(index, first, tf.constant(-1, tf.int64)),
            ":", _pick(problems, first, "")])
        with tf.control_dependencies([check]):
            return tf.nest.map_structure(tf.identity, features)


def _pick(values, i, default) -> tf.Tensor:
    """values[i] of a [B] tensor (`default` for i == B); a scalar is returned as is."""
    values = tf.convert_to_tensor(values)
    if values.shape.rank == 0:
        return values
    return tf.concat([values, tf.reshape(tf.convert_to_tensor(default, values.dtype), [1])],
                     0)[i]


LABELED = RecordFormat("labeled", (IMAGE_KEY, CLASS_LABEL_KEY), (ID_KEY,),
                       encode_labeled, _parse_labeled)
UNLABELED = RecordFormat("unlabeled", (IMAGE_KEY,),
                         (PROBABILITIES_KEY, PROB_KEY, LABEL_KEY, CLASS_LABEL_KEY, ID_KEY),
                         encode_unlabeled, _parse_unlabeled)
PREDICTION = RecordFormat("prediction", (PROBABILITIES_KEY, CLASSES_KEY), (ID_KEY,),
                          encode_prediction, _parse_prediction)
PSEUDO_LABELED = RecordFormat("pseudo_labeled",
                              (IMAGE_KEY, LABEL_KEY, PROB_KEY, PROBABILITIES_KEY),
                              (CLASS_LABEL_KEY, ID_KEY),
                              encode_pseudo_labeled, _parse_pseudo_labeled)

FORMATS: Dict[str, RecordFormat] = {
    "labeled": LABELED,
    "imagenet": LABELED,
    "svhn": LABELED,
    "unlabeled": UNLABELED,
    "prediction": PREDICTION,
    "pseudo_labeled": PSEUDO_LABELED,
    "filtered": PSEUDO_LABELED,
}

parse_labeled = LABELED.parse
parse_unlabeled = UNLABELED.parse
parse_prediction = PREDICTION.parse
parse_pseudo_labeled = PSEUDO_LABELED.parse


def get_format(name_or_format: Union[str, RecordFormat]) -> RecordFormat:
    """A `RecordFormat` by name (see `FORMATS`), or the format itself."""
    if isinstance(name_or_format, RecordFormat):
        return name_or_format
    try:
        return FORMATS[name_or_format]
    except KeyError:
        raise ValueError(f"Unknown record format {name_or_format!r}; "
                         f"known: {sorted(FORMATS)}") from None
