"""Pseudo-labelled records serialized directly in protobuf wire format.

`schema.encode_pseudo_labeled` builds a `tf.train.Example` and serializes it: about 40 µs
for 1,000 classes, most of it converting the float32 vector to Python floats and back.
The filter writes one such record per kept image (hundreds of millions in a large run),
so `PseudoLabeledEncoder` writes the same bytes by hand: the probabilities go in as
their little-endian float32 bytes, everything else is a few short byte strings.

The layout (example.proto): Example{features=1: Features{feature=1: repeated map entry
{key=1: string, value=2: Feature{bytes_list=1 | float_list=2 | int64_list=3, each a list
message with a packed `value=1`}}}}. Deterministic serialization writes the map entries
in a fixed key order; that order is read once from a record serialized by protobuf itself
rather than assumed, and tests compare the two encoders byte for byte.
"""

import operator
from typing import List, Optional, Sequence, Union

import numpy as np

from nst.data import schema

_U64 = (1 << 64) - 1
_ONE_BYTE = [bytes([n]) for n in range(0x80)]
_HEAD_CACHE_SIZE = 1 << 16
_TAG = {1: b"\x0a", 2: b"\x12", 3: b"\x1a"}  # Feature.bytes_list / float_list / int64_list


def varint(n: int) -> bytes:
    """Base-128 varint of an int64 (negative values as their 64-bit two's complement)."""
    if 0 <= n < 0x80:
        return _ONE_BYTE[n]
    if 0 < n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    n &= _U64
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) with field number `tag`."""
    return bytes([(tag << 3) | 2]) + varint(len(payload)) + payload


def _entry_prefix(key: str) -> bytes:
    """The map entry's key field; the value field follows."""
    return _delimited(1, key.encode("utf-8"))


def _key_order():
    """Keys of a pseudo-labelled record in the order protobuf's deterministic serialization
    writes them (not plain string order: upb puts 'probabilities' before 'prob')."""
    keys = (schema.IMAGE_KEY, schema.ID_KEY, schema.LABEL_KEY, schema.PROB_KEY,
            schema.PROBABILITIES_KEY, schema.CLASS_LABEL_KEY)
    sample = schema.encode_pseudo_labeled(b"x", [1.0, 0.0], true_label=0, image_id="i")
    position = {key: sample.find(_entry_prefix(key)) for key in keys}
    if min(position.values()) < 0 or len(set(position.values())) != len(keys):
        raise AssertionError(f"cannot locate every key in a serialized record: {position}")
    return tuple(sorted(keys, key=position.get))


class PseudoLabeledEncoder:
    """Serializes pseudo-labelled records byte-identical to `schema.encode_pseudo_labeled`.

        encode = PseudoLabeledEncoder()
        encode(image, probabilities_le_f4, label, true_label=None, image_id=None) -> bytes

    The record's `prob` is probabilities[label], as `encode_pseudo_labeled` writes it by
    default; `probabilities` must be a contiguous little-endian float32 [K] array (e.g. a
    row of `np.ascontiguousarray(batch, '<f4')`). Values are not checked: the filter has
    already validated them when it parsed and selected the record.

    Everything that does not depend on the record's values is built once: the entries of
    a label or true label (cached per class), the headers of the probability vector (per
    K) and of `prob`, so a record costs a few varints and one join (~3 µs + copying).
    """

    def __init__(self):
        self._order = _key_order()
        self._prefix = {key: _entry_prefix(key) for key in self._order}
        self._label_entries = {}
        self._true_label_entries = {}
        self._vector_heads = {}
        self._prob_head = self._head(schema.PROB_KEY, 2, 4)
        self._bytes_heads = {schema.IMAGE_KEY: {}, schema.ID_KEY: {}}
        # Indices of each key's pieces in the tuple `__call__` builds.
        pieces = {schema.CLASS_LABEL_KEY: (0,), schema.IMAGE_KEY: (1, 2),
                  schema.ID_KEY: (3, 4), schema.LABEL_KEY: (5,),
                  schema.PROBABILITIES_KEY: (6, 7), schema.PROB_KEY: (8, 9)}
        self._reorder = operator.itemgetter(*[i for key in self._order for i in pieces[key]])

    def _head(self, key: str, feature_tag: int, size: int) -> bytes:
        """Bytes of a map entry up to the payload of a Feature list with one packed field
        of `size` bytes (`feature_tag`: 1 bytes_list, 2 float_list, 3 int64_list)."""
        v1 = varint(size)
        v2 = varint(1 + len(v1) + size)  # the list message
        list_size = 1 + len(v1) + size
        v3 = varint(1 + len(v2) + list_size)  # the Feature message
        feature_size = 1 + len(v2) + list_size
        prefix = self._prefix[key]
        v4 = varint(len(prefix) + 1 + len(v3) + feature_size)  # the map entry
        return b"".join((b"\x0a", v4, prefix, b"\x12", v3, _TAG[feature_tag], v2,
                         b"\x0a", v1))

    def _entry(self, key: str, payload: bytes, feature_tag: int) -> bytes:
        return self._head(key, feature_tag, len(payload)) + payload

    def _bytes_head(self, key: str, size: int) -> bytes:
        """Head of a one-value bytes_list entry, cached by payload size (image and id
        sizes repeat; the cache is bounded)."""
        cache = self._bytes_heads[key]
        head = cache.get(size)
        if head is None:
            if len(cache) >= _HEAD_CACHE_SIZE:
                cache.clear()
            head = cache[size] = self._head(key, 1, size)
        return head

    def _int_entry(self, cache: dict, key: str, value: int) -> bytes:
        entry = cache.get(value)
        if entry is None:
            entry = cache[value] = self._entry(key, varint(value), 3)
        return entry

    def __call__(self, image: bytes, probabilities: np.ndarray, label: int,
                 true_label: Optional[int] = None,
                 image_id: Union[str, bytes, None] = None) -> bytes:
        probabilities = np.ascontiguousarray(probabilities, "<f4")
        return self.encode_rows(probabilities[None], [0], [label], [image],
                                [-1 if true_label is None else true_label], [image_id])[0]

    def encode_rows(self, probabilities: np.ndarray, rows: Sequence[int],
                    labels: Sequence[int], images: Sequence[bytes],
                    true_labels: Sequence[int], image_ids: Sequence) -> List[bytes]:
        """Records of the rows `rows` of a batch: probabilities float32 [n, K] (C-
        contiguous, little endian), labels [len(rows)] (one per row), and images,
        true_labels (< 0: none) and image_ids (None: none) [n] indexed by row.

        The vectors go into the join as memoryview slices of the batch (no copy per row);
        a batch of 1,000-class rows costs ~1.8 µs a record instead of ~2.6 through
        `__call__` one at a time.
        """
        if probabilities.dtype != np.dtype("<f4") or not probabilities.flags.c_contiguous:
            raise ValueError("probabilities must be a C-contiguous little-endian float32 "
                             "array")
        k = probabilities.shape[1]
        vector_head = self._vector_heads.get(k)
        if vector_head is None:
            vector_head = self._vector_heads[k] = self._head(schema.PROBABILITIES_KEY, 2,
                                                             4 * k)
        flat = memoryview(probabilities).cast("B")
        row_bytes = 4 * k
        image_heads = self._bytes_heads[schema.IMAGE_KEY]
        label_entries, class_entries = self._label_entries, self._true_label_entries
        prob_head, reorder = self._prob_head, self._reorder
        out = []
        for row, label in zip(rows, labels):
            image, true_label, image_id = images[row], true_labels[row], image_ids[row]
            image_head = image_heads.get(len(image)) or self._bytes_head(schema.IMAGE_KEY,
                                                                         len(image))
            if image_id is None:
                id_head = image_id = b""
            else:
                if isinstance(image_id, str):
                    image_id = image_id.encode("utf-8")
                id_head = self._bytes_head(schema.ID_KEY, len(image_id))
            label = int(label)
            label_entry = label_entries.get(label) or self._int_entry(
                label_entries, schema.LABEL_KEY, label)
            class_entry = b"" if true_label is None or true_label < 0 else self._int_entry(
                class_entries, schema.CLASS_LABEL_KEY, int(true_label) + 1)
            start = row * row_bytes
            at = start + 4 * label
            # The pieces of every entry in a fixed order (an absent key's pieces are b""),
            # reordered to the serialization's key order in C (itemgetter).
            ordered = reorder((class_entry, image_head, image, id_head, image_id,
                               label_entry, vector_head, flat[start:start + row_bytes],
                               prob_head, flat[at:at + 4]))
            size = sum(map(len, ordered))
            out.append(b"".join((b"\x0a", varint(size)) + ordered))
        return out
