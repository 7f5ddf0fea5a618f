"""Record formats: encode -> parse round trips, defaults, ids and validation."""

import re
import numpy as np
import pytest
import tensorflow as tf

from nst.data import schema

K = 5


def _jpeg(seed=0):
    rng = np.random.default_rng(seed)
    return tf.io.encode_jpeg(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).numpy()


def _probs(seed=0):
    p = np.random.default_rng(seed).random(K).astype(np.float32)
    return p / p.sum()


def _stored(serialized):
    """The raw Example features of a serialized record, as Python lists."""
    feature = tf.train.Example.FromString(serialized).features.feature
    out = {}
    for key, value in feature.items():
        kind = value.WhichOneof("kind")
        out[key] = list(getattr(value, kind).value)
    return out


def _np(features):
    return {k: v.numpy() for k, v in features.items()}


def test_labeled_round_trip_stores_one_based_and_parses_zero_based():
    image = _jpeg()
    serialized = schema.encode_labeled(image, 3, image_id="img-7")
    stored = _stored(serialized)
    assert stored[schema.CLASS_LABEL_KEY] == [4]  # 1-based on disk (§3.1)
    assert stored[schema.IMAGE_KEY] == [image]
    out = _np(schema.parse_labeled(serialized, K))
    assert out["label"] == 3 and out["label"].dtype == np.int32
    assert out["image"] == image and out["id"] == b"img-7"
    assert schema.FORMATS["imagenet"] is schema.FORMATS["svhn"] is schema.LABELED


def test_labeled_record_from_the_original_converter_parses():
    # e.g. imagenet_to_gcs.py: extra keys are ignored, label 1..1000.
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_jpeg()])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1000])),
        "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"JPEG"])),
        "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[8])),
    }))
    out = schema.parse_labeled(example.SerializeToString(), 1000)
    assert int(out["label"]) == 999


def test_unlabeled_with_pseudo_label_round_trip():
    probs = _probs(1)
    serialized = schema.encode_unlabeled(_jpeg(), probabilities=probs, true_label=2,
                                         image_id=b"u-1")
    out = _np(schema.parse_unlabeled(serialized, K))
    np.testing.assert_allclose(out["probabilities"], probs)
    assert out["probabilities"].shape == (K,) and out["probabilities"].dtype == np.float32
    assert out["label"] == np.argmax(probs)  # 0-based, no shift
    np.testing.assert_allclose(out["prob"], probs.max())
    assert out["has_pseudo_label"] and out["true_label"] == 2 and out["id"] == b"u-1"
    assert _stored(serialized)[schema.LABEL_KEY] == [int(np.argmax(probs))]


def test_raw_unlabeled_without_probabilities_is_readable():
    serialized = schema.encode_unlabeled(_jpeg())
    assert set(_stored(serialized)) == {schema.IMAGE_KEY}
    out = _np(schema.parse_unlabeled(serialized, K))
    assert not out["has_pseudo_label"]
    assert out["label"] == -1 and out["prob"] == 0 and out["true_label"] == -1
    np.testing.assert_array_equal(out["probabilities"], np.zeros(K))


def test_original_dummy_pseudo_labels_read_as_no_label():
    # proc_svhn.py's extra split: probabilities [0]*K, label 0, prob 0, true label kept.
    serialized = schema.encode_unlabeled(_jpeg(), dummy_num_classes=K, true_label=4)
    assert _stored(serialized)[schema.PROBABILITIES_KEY] == [0.0] * K
    out = _np(schema.parse_unlabeled(serialized, K))
    assert not out["has_pseudo_label"] and out["label"] == -1 and out["true_label"] == 4


def test_prediction_round_trip():
    probs = _probs(2)
    serialized = schema.encode_prediction(probs, image_id="x:3")
    out = _np(schema.parse_prediction(serialized, K))
    np.testing.assert_allclose(out["probabilities"], probs)
    assert out["classes"] == np.argmax(probs) and out["id"] == b"x:3"
    assert set(_stored(serialized)) == {schema.PROBABILITIES_KEY, schema.CLASSES_KEY,
                                        schema.ID_KEY}


def test_pseudo_labeled_round_trip_with_and_without_true_label():
    probs = _probs(3)
    image = _jpeg(3)
    with_true = schema.encode_pseudo_labeled(image, probs, label=1, prob=0.5, true_label=0)
    out = _np(schema.parse_pseudo_labeled(with_true, K))
    assert out["label"] == 1 and out["true_label"] == 0 and out["image"] == image
    np.testing.assert_allclose(out["prob"], 0.5)
    np.testing.assert_allclose(out["probabilities"], probs)
    plain = _np(schema.FORMATS["filtered"].parse(schema.encode_pseudo_labeled(image, probs), K))
    assert plain["label"] == np.argmax(probs) and plain["true_label"] == -1


def test_id_is_stored_or_derived_from_file_and_index():
    serialized = schema.encode_labeled(_jpeg(), 0)
    derived = schema.parse_labeled(serialized, K, file=tf.constant("gs://b/d/train-00001-of-00002"),
                                   index=tf.constant(7, tf.int64))
    assert derived["id"].numpy() == b"train-00001-of-00002:7"
    assert schema.parse_labeled(serialized, K)["id"].numpy() == b""
    stored = schema.encode_labeled(_jpeg(), 0, image_id="mine")
    assert schema.parse_labeled(stored, K, file=tf.constant("/a/b"),
                                index=tf.constant(1, tf.int64))["id"].numpy() == b"mine"


def test_batched_parse_checked_reports_problems_per_record():
    records = tf.constant([
        schema.encode_labeled(_jpeg(), 0),
        schema.encode_unlabeled(_jpeg()),  # no label key
        schema.encode_labeled(_jpeg(), 9),  # label 9 >= K
        schema.encode_labeled(_jpeg(), K - 1),
    ])
    features, problems = schema.LABELED.parse_checked(records, K)
    problems = [p.decode() for p in problems.numpy()]
    assert problems[0] == "" and problems[3] == ""
    assert "missing required feature image/class/label" in problems[1]
    assert "label 9" in problems[2] and "outside [0, 5)" in problems[2]
    assert features["label"].numpy().tolist()[::3] == [0, K - 1]


@pytest.mark.parametrize("fmt, serialized, message", [
    (schema.LABELED, schema.encode_unlabeled(b"img"), "missing required feature"),
    (schema.LABELED, schema.encode_prediction([1.0] + [0.0] * (K - 1)),
     "missing required feature image/encoded"),
    (schema.UNLABELED, schema.encode_unlabeled(b"img", probabilities=[0.5, 0.5]),
     "has 2 values, expected num_classes=5"),
    (schema.PREDICTION, schema.encode_prediction([0.1] * 7, classes=6),
     "expected num_classes=5"),
    (schema.PSEUDO_LABELED, schema.encode_unlabeled(b"img"), "missing required feature"),
])
def test_parse_raises_naming_the_file_and_index(fmt, serialized, message):
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        fmt.parse(serialized, K, file=tf.constant("/data/train-00003-of-00008"),
                  index=tf.constant(11, tf.int64))
    text = str(error.value)
    assert message in text and "/data/train-00003-of-00008" in text
    assert re.search(r"record index\W+11\b", text)


def test_one_based_label_zero_on_disk_is_out_of_range():
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
    }))
    _, problem = schema.LABELED.parse_checked(example.SerializeToString(), K)
    assert "label -1 (1-based on disk: 0)" in problem.numpy().decode()


def test_parse_works_in_tf_data_graph_mode():
    records = [schema.encode_labeled(_jpeg(i), i % K) for i in range(6)]
    ds = tf.data.Dataset.from_tensor_slices(records).map(lambda s: schema.parse_labeled(s, K))
    assert [int(x["label"]) for x in ds] == [i % K for i in range(6)]
    batched = tf.data.Dataset.from_tensor_slices(records).batch(4).map(
        lambda s: schema.parse_labeled(s, K))
    assert [x["label"].shape[0] for x in batched] == [4, 2]


def test_encoders_validate_labels():
    with pytest.raises(ValueError):
        schema.encode_labeled(b"x", -1)
    with pytest.raises(ValueError):
        schema.encode_labeled(b"x", K, num_classes=K)
    with pytest.raises(ValueError):
        schema.encode_pseudo_labeled(b"x", [0.5, 0.5], label=2)
    with pytest.raises(ValueError):
        schema.encode_unlabeled(b"x", label=1)


def test_get_format():
    assert schema.get_format("pseudo_labeled") is schema.PSEUDO_LABELED
    assert schema.get_format(schema.PREDICTION) is schema.PREDICTION
    with pytest.raises(ValueError, match="known"):
        schema.get_format("nope")
    assert schema.UNLABELED.required_keys == ("image/encoded",)
