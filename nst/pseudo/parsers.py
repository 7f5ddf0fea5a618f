"""The parsers of the filter's reader (`nst.pseudo.reader`): batches of serialized records
of one file -> numpy-ready batches of what the filter uses.

What a reader needs from a file, by kind (the filter validates the features it uses):
  "images"           image/encoded, image/id, image/class/label    (schema `unlabeled`)
  "pseudo_labelled"  the same plus probabilities [K], not all zero, and a stored label /
                     prob checked but not used (schema `unlabeled`)
  "predictions"      probabilities [K], image/id                   (schema `prediction`)

`fast_parser` is a fixed-length `parse_example` that only flags what it cannot judge;
`checked_parser` is the schema's checked parse (`nst.data.schema`), which the reader runs
over a file the fast parser flagged, to name the bad record. Both take the reader's
batches (index, serialized, file name, task), `PARSER_SIGNATURE`, and keep the records
of the task's slice; an empty batch is the reader's end-of-file marker (`end`).
"""

import functools

import numpy as np
import tensorflow as tf

from nst.data import schema

SCHEMA_OF = {"images": "unlabeled", "pseudo_labelled": "unlabeled",
             "predictions": "prediction"}  # the record format of each kind (module doc)
RECORD_OF = {"images": "an image record", "pseudo_labelled": "a pseudo-labelled record",
             "predictions": "a prediction record"}  # each kind in the reader's messages
_ABSENT_INT = -(1 << 62)  # FixedLen defaults that no valid record stores
_ABSENT_ID = "\x00absent"
ABSENT_ID_BYTES = _ABSENT_ID.encode("utf-8")  # the fast parser's id of a record without one

FRAMING_BYTES = 16  # per TFRecord: uint64 length, its CRC32C, the data's CRC32C

# (index int64 [n], serialized string [n], file name string [], task int64 []) of both
# parsers; task -1: the whole file.
PARSER_SIGNATURE = [tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.string),
                    tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)]


def top_class(probabilities: tf.Tensor):
    """float32 [n, K] -> (label int64 [n], confidence float32 [n]) as
    `histogram.confidences` computes them with np.argmax, but inside the reader's
    parallel tf.data map (pass 1, which then never copies the vectors into Python).
    TensorFlow's CPU argmax returns the first maximum, as NumPy's (tested, since the API
    leaves ties unspecified). A row holding a NaN gets confidence NaN (np.argmax would
    pick the NaN), which the histogram rejects naming the image; its sum is NaN, which
    also flags rows with both +inf and -inf (whose np.argmax confidence, +inf, is
    rejected as well)."""
    label = tf.argmax(probabilities, axis=1, output_type=tf.int64)
    conf = tf.gather(probabilities, label, batch_dims=1)
    nan = tf.math.is_nan(tf.reduce_sum(probabilities, axis=1))
    return label, tf.where(nan, tf.constant(np.nan, tf.float32), conf)


def _worker_slice(index, serialized, total_replicas: int, task):
    """The records with index mod total_replicas == task (all of them with task < 0)."""
    if total_replicas <= 1:
        return index, serialized
    keep = (task < 0) | tf.equal(index % total_replicas, task)
    return tf.boolean_mask(index, keep), tf.boolean_mask(serialized, keep)


@functools.lru_cache(maxsize=None)
def fast_parser(kind: str, num_classes: int, total_replicas: int, top: bool = False):
    """A tf.function (index, serialized, name, task; `PARSER_SIGNATURE`) -> numpy-ready
    batch of the sliced records: index, `end` (true for the reader's end-of-file marker),
    `nbytes` (int64 [], the framed size of all the batch's records, sliced out or not),
    `suspect` (a bool [] that is true when a record needs the checked parser's verdict)
    and

      top=False  id (the stored image/id, `_ABSENT_ID` where none), [image, true_label],
                 [probabilities]: the rows pass 2 selects and writes;
      top=True   label, conf (`top_class`), [has_pseudo_label]: all pass 1 needs.

    A fixed-length `parse_example` runs ~3x faster than the checked ragged parse of
    `schema` (the whole filter is bound by reading); anything it cannot parse fails the op
    and anything out of range (`schema.stored_class`, the schema's own check) sets
    `suspect`, and the reader then re-reads the file with the checked parser to name the
    record. Pass 2 leaves the argmax (NumPy's, on the vectors it receives anyway) and the
    rare derived ids to Python: inside the map they cost ~1.5 µs per record of the
    reader's time. Traced once per process and setting.
    """
    spec = {schema.ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=_ABSENT_ID)}
    if kind != "predictions":
        spec[schema.IMAGE_KEY] = tf.io.FixedLenFeature([], tf.string)
        spec[schema.CLASS_LABEL_KEY] = tf.io.FixedLenFeature([], tf.int64,
                                                             default_value=_ABSENT_INT)
    if kind != "images":
        spec[schema.PROBABILITIES_KEY] = tf.io.FixedLenFeature([num_classes], tf.float32)
    if kind == "pseudo_labelled":
        # Not used (recomputed from the probabilities), but checked as the schema does:
        # a repeated value fails the parse, a label outside [0, K) is suspect.
        spec[schema.LABEL_KEY] = tf.io.FixedLenFeature([], tf.int64,
                                                       default_value=_ABSENT_INT)
        spec[schema.PROB_KEY] = tf.io.FixedLenFeature([], tf.float32, default_value=0.0)

    @tf.function(input_signature=PARSER_SIGNATURE)
    def parse(index, serialized, name, task):
        del name  # ids are derived in Python (the reader's `_fill_ids`)
        end = tf.equal(tf.size(serialized), 0)  # the reader's end-of-file marker
        # Framed bytes of every record read, sliced out or not: TensorFlow reads a file
        # cut inside a record's 12-byte header as a clean end, which only the reader's
        # comparison of these with the file's size reveals.
        nbytes = tf.reduce_sum(tf.cast(tf.strings.length(serialized), tf.int64)
                               + FRAMING_BYTES)
        index, serialized = _worker_slice(index, serialized, total_replicas, task)
        features = tf.io.parse_example(serialized, spec)
        out = {"index": index, "end": end, "nbytes": nbytes}
        if not top:
            out["id"] = features[schema.ID_KEY]
        suspect = tf.constant(False)
        if kind != "predictions":
            value = features[schema.CLASS_LABEL_KEY]  # stored 1-based
            true_label, outside = schema.stored_class(
                value, tf.not_equal(value, _ABSENT_INT), num_classes, shift=1)
            suspect |= tf.reduce_any(outside)
            if not top:
                out["image"] = features[schema.IMAGE_KEY]
                out["true_label"] = true_label
        if kind != "images":
            probabilities = features[schema.PROBABILITIES_KEY]
            if top:
                out["label"], out["conf"] = top_class(probabilities)
                if kind == "pseudo_labelled":
                    out["has_pseudo_label"] = tf.reduce_any(
                        tf.not_equal(probabilities, 0), axis=1)
            else:
                out["probabilities"] = probabilities
        if kind == "pseudo_labelled":
            stored = features[schema.LABEL_KEY]
            _, outside = schema.stored_class(stored, tf.not_equal(stored, _ABSENT_INT),
                                             num_classes)
            suspect |= tf.reduce_any(outside)
        out["suspect"] = suspect
        return out

    return parse


@functools.lru_cache(maxsize=None)
def checked_parser(record_format: str, num_classes: int, total_replicas: int):
    """Like `fast_parser` with the checked schema parse: features + index + `problem`."""
    fmt = schema.get_format(record_format)

    @tf.function(input_signature=PARSER_SIGNATURE)
    def parse(index, serialized, name, task):
        end = tf.equal(tf.size(serialized), 0)
        index, serialized = _worker_slice(index, serialized, total_replicas, task)
        features, problems = fmt.parse_checked(serialized, num_classes, name, index)
        return dict(features, index=index, problem=problems, end=end)

    return parse
