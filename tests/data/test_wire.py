"""The hand-written pseudo-labelled record encoder equals protobuf's own serialization."""

import numpy as np
import pytest
import tensorflow as tf

from nst.data import schema, wire


@pytest.mark.parametrize("k", [1, 2, 10, 33, 1000])
def test_encoder_matches_protobuf_byte_for_byte(k):
    rng = np.random.default_rng(k)
    encode = wire.PseudoLabeledEncoder()
    images = [b"", b"x", bytes(range(200)), rng.bytes(20000)]  # 0-, 1-, 2-, 3-byte lengths
    ids = [None, "", "img-1", "żółw/ünïcode:7", b"raw-bytes-id", "x" * 300]
    for trial in range(40):
        probs = rng.random(k, dtype=np.float32)
        probs[rng.integers(k)] = 0 if trial % 7 == 0 else probs.max() + 1  # ties, zeros
        probs = (probs / max(probs.sum(), 1)).astype("<f4")
        if trial % 5 == 0:
            probs[:] = 0  # all zero: label 0, prob 0
        label = int(np.argmax(probs))
        true_label = [None, 0, k - 1, int(rng.integers(k))][trial % 4]
        image, image_id = images[trial % len(images)], ids[trial % len(ids)]
        expected = schema.encode_pseudo_labeled(image, probs, label=label,
                                                true_label=true_label, image_id=image_id)
        assert encode(image, probs, label, true_label, image_id) == expected, trial
    # A label other than the argmax (reassigned records) and big classes (multi-byte varints).
    probs = np.linspace(0, 1, k, dtype="<f4")
    for label in {0, k // 2, k - 1}:
        assert encode(b"im", probs, label, k - 1, "i") == schema.encode_pseudo_labeled(
            b"im", probs, label=label, true_label=k - 1, image_id="i")


def test_encoded_records_parse_back():
    probs = np.array([0.1, 0.7, 0.2], "<f4")
    record = wire.PseudoLabeledEncoder()(b"jpeg", probs, 1, 2, "id-9")
    features, problems = schema.PSEUDO_LABELED.parse_checked(tf.constant([record]), 3)
    assert problems.numpy().tolist() == [b""]
    assert features["image"].numpy()[0] == b"jpeg" and features["id"].numpy()[0] == b"id-9"
    assert features["label"].numpy()[0] == 1 and features["true_label"].numpy()[0] == 2
    assert features["prob"].numpy()[0] == np.float32(0.7)
    np.testing.assert_array_equal(features["probabilities"].numpy()[0], probs)


def test_varint_matches_protobuf_int64_encoding():
    for value in (0, 1, 127, 128, 300, 16383, 16384, 2 ** 31, 2 ** 63 - 1, -1, -300, -2 ** 63):
        serialized = tf.train.Int64List(value=[value]).SerializeToString()
        # Int64List{value: packed} = tag 0x0a, length, varint.
        assert serialized[2:] == wire.varint(value), value


def test_encode_rows_of_a_batch_equal_protobuf_per_row():
    rng = np.random.default_rng(3)
    k, n = 1000, 9
    probs = rng.random((n, k), dtype=np.float32).astype("<f4")
    images = [rng.bytes(int(rng.integers(0, 300))) for _ in range(n)]
    ids = [None, "a", b"b", "żółw", "x" * 200, "c", "d", "e", "f"]
    true_labels = [-1, 0, k - 1, 5, -1, 17, 999, 2, 3]
    rows = [8, 0, 3, 3, 5]  # any subset, any order, repeats allowed
    labels = [int(np.argmax(probs[r])) for r in rows[:-1]] + [7]  # the last: not the argmax
    got = wire.PseudoLabeledEncoder().encode_rows(probs, rows, labels, images, true_labels,
                                                  ids)
    for record, row, label in zip(got, rows, labels):
        assert record == schema.encode_pseudo_labeled(
            images[row], probs[row], label=label,
            true_label=None if true_labels[row] < 0 else true_labels[row],
            image_id=ids[row])
    with pytest.raises(ValueError, match="C-contiguous little-endian float32"):
        wire.PseudoLabeledEncoder().encode_rows(probs[:, ::2], [0], [0], images,
                                                true_labels, ids)
