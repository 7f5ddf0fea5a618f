"""The filter's reader (`nst.pseudo.reader`) names the first bad record of a file exactly,
by its index in the file and the file, whatever the reader's batch size: a truncated or
corrupted file, a record that does not parse, a record the schema rejects."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

from nst.data import schema, writers
from nst.pseudo import filter as filter_lib
from nst.pseudo import join as join_lib
from nst.pseudo import reader
from nst.pseudo.layout import InputLayout

K = 3
SHARD = writers.shard_name("train", 0, 1)
GARBAGE = {"ascii": b"garbage bytes, not an Example",
           # TensorFlow's parse error quotes the record: not UTF-8, its message cannot
           # even be decoded (a UnicodeDecodeError instead of an OpError).
           "binary": b"\xff\xfe\x00\x80garbage"}


def _probs(i):
    p = np.full(K, 0.1, np.float32)
    p[i % K] = 0.8
    return p


def _pseudo_labelled(n):
    return [schema.encode_pseudo_labeled(b"image %d" % i, _probs(i), image_id=f"img-{i}",
                                         true_label=i % K) for i in range(n)]


def _layout(directory, **kw):
    return InputLayout(str(directory), num_shards=1, num_classes=K, **kw)


def _config(tmp_path):
    return filter_lib.FilterConfig(input_dir=str(tmp_path / "in"),
                                   output_dir=str(tmp_path / "out"), num_shards=1,
                                   num_label_classes=K, num_image=20)


def _read_all(path, kind, layout, task=None, batch_size=None):
    return sum(len(b["index"]) for b in reader.file_batches(path, kind, layout, task,
                                                            batch_size))


def _offset(records, index):
    """Byte offset of record `index` in a TFRecord file of `records` (16 framing bytes
    each: length, its CRC, data CRC)."""
    return sum(len(r) + 16 for r in records[:index])


@pytest.mark.parametrize("where", ["header", "data", "data crc"])
def test_a_file_truncated_in_record_59_of_200_names_record_59(tmp_path, where):
    records = _pseudo_labelled(200)
    path = str(tmp_path / "in" / SHARD)
    writers.write_records(path, records)
    start = _offset(records, 59)
    cut = {"header": start + 5, "data": start + 12 + len(records[59]) // 2,
           "data crc": start + 12 + len(records[59]) + 2}[where]
    with open(path, "r+b") as f:
        f.truncate(cut)
    assert reader.read_rows(K) >= 1024  # all 200 records in the first batch
    # Cut inside the 12-byte header, TensorFlow sees a clean end of the file: only the
    # reader's byte count finds the loss.
    detail = "its last 5 bytes are not a whole record" if where == "header" else \
        "truncated record at "
    message = (f"Record 59 of {re.escape(path)} cannot be read: the file is truncated or "
               f"corrupted there \\({detail}")
    config = _config(tmp_path)
    with pytest.raises(ValueError, match=message):  # pass 1
        filter_lib.write_shard_histogram(config, 0, 0)
    with pytest.raises(ValueError, match=message):  # pass 2's reader
        list(join_lib.joined_batches(config.layout, 0, 0))
    assert not os.path.exists(config.histogram_path(0, 0))


def test_a_corrupted_record_is_named(tmp_path):
    records = _pseudo_labelled(200)
    path = str(tmp_path / SHARD)
    writers.write_records(path, records)
    with open(path, "r+b") as f:  # flip a byte of record 120's data: its CRC fails
        f.seek(_offset(records, 120) + 12 + 3)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=f"Record 120 of {re.escape(path)} cannot be read: "
                                         f"the file is truncated or corrupted there"):
        _read_all(path, "pseudo_labelled", _layout(tmp_path))


@pytest.mark.parametrize("garbage", sorted(GARBAGE))
def test_a_record_that_does_not_parse_is_named_whatever_the_batch_size(tmp_path, garbage):
    records = _pseudo_labelled(1500)
    records[700] = GARBAGE[garbage]  # framed by the writer: the file reads, 700 won't parse
    path = str(tmp_path / "in" / SHARD)
    writers.write_records(path, records)
    message = (f"Record 700 of {path} is not a pseudo-labelled record: it is not a "
               f"serialized tf.train.Example.")
    for batch_size in (None, 64, 7, 1):  # default: 1,024
        with pytest.raises(ValueError) as error:
            _read_all(path, "pseudo_labelled", _layout(tmp_path / "in"),
                      batch_size=batch_size)
        assert str(error.value) == message, batch_size
    with pytest.raises(ValueError) as error:
        filter_lib.write_shard_histogram(_config(tmp_path), 0, 0)
    assert str(error.value) == message


def test_the_first_of_several_bad_records_is_named(tmp_path):
    records = _pseudo_labelled(1500)
    records[300] = schema.encode_pseudo_labeled(b"x", [0.5, 0.5], image_id="short")  # K = 2
    records[200] = GARBAGE["ascii"]
    path = str(tmp_path / SHARD)
    writers.write_records(path, records)
    layout = _layout(tmp_path)
    with pytest.raises(ValueError, match=f"^Record 200 of {re.escape(path)} is not a "):
        _read_all(path, "pseudo_labelled", layout)
    # Without the garbage: the schema's verdict on record 300; a truncation before it
    # comes first.
    records[200] = records[201]
    writers.write_records(path, records)
    with pytest.raises(ValueError) as error:
        _read_all(path, "pseudo_labelled", layout)
    assert str(error.value) == (
        f"Record 300 of {path} is not valid as a pseudo-labelled record: feature "
        f"probabilities has 2 values, expected num_classes={K}.")
    with open(path, "r+b") as f:
        f.truncate(_offset(records, 250) + 3)
    with pytest.raises(ValueError, match=f"^Record 250 of {re.escape(path)} cannot be read"):
        _read_all(path, "pseudo_labelled", layout)


def test_messages_name_the_kind_of_record_of_each_layout(tmp_path):
    """Pseudo-labelled layout: pseudo-labelled records; separate layout: image records
    (format 'unlabeled') and prediction records."""
    layout = _layout(tmp_path)
    kinds = {
        "pseudo_labelled": ("a pseudo-labelled record", _pseudo_labelled(1000)),
        "images": ("an image record", [schema.encode_unlabeled(b"image %d" % i,
                                                               image_id=f"img-{i}")
                                       for i in range(1000)]),
        "predictions": ("a prediction record", [schema.encode_prediction(
            _probs(i), image_id=f"img-{i}") for i in range(1000)]),
    }
    for kind, (what, records) in kinds.items():
        path = str(tmp_path / kind)
        writers.write_records(path, records[:700] + [GARBAGE["binary"]] + records[700:])
        with pytest.raises(ValueError) as error:
            _read_all(path, kind, layout)
        assert str(error.value) == (f"Record 700 of {path} is not {what}: it is not a "
                                    f"serialized tf.train.Example."), kind
    # Through pass 2 of the separate layout (images joined with predictions).
    images = str(tmp_path / "in" / SHARD)
    writers.write_records(images, kinds["images"][1][:700] + [GARBAGE["binary"]])
    writers.write_records(str(tmp_path / "pred" / writers.prediction_name(0, 1, 0)),
                          kinds["predictions"][1][:701])
    separate = _layout(tmp_path / "in", prediction_dir=str(tmp_path / "pred"))
    with pytest.raises(ValueError) as error:
        list(join_lib.joined_batches(separate, 0, 0))
    assert str(error.value) == (f"Record 700 of {images} is not an image record: it is not "
                                f"a serialized tf.train.Example.")


def test_a_record_stored_with_another_type_is_named(tmp_path):
    example = tf.train.Example()
    example.features.feature[schema.IMAGE_KEY].bytes_list.value.append(b"x")
    example.features.feature[schema.PROBABILITIES_KEY].int64_list.value.extend([1, 2, 3])
    records = _pseudo_labelled(1000)
    records[700] = example.SerializeToString()
    path = str(tmp_path / SHARD)
    writers.write_records(path, records)
    with pytest.raises(ValueError) as error:
        _read_all(path, "pseudo_labelled", _layout(tmp_path))
    text = str(error.value)
    assert text.startswith(f"Record 700 of {path} is not a pseudo-labelled record: "
                           f"TensorFlow cannot parse it as the 'unlabeled' record format (")
    assert "Key: probabilities" in text and "Index:" not in text and "[[" not in text


def test_a_sliced_file_names_the_bad_record_of_its_slice(tmp_path):
    """Task t of R reads the records with index mod R == t; the others are read but not
    parsed (as in the fast pass), so garbage outside the slice is not this task's."""
    records = _pseudo_labelled(1500)
    records[700] = records[703] = GARBAGE["ascii"]
    path = str(tmp_path / SHARD)
    writers.write_records(path, records)
    layout = _layout(tmp_path, total_replicas=2)
    with pytest.raises(ValueError, match=f"^Record 700 of {re.escape(path)} is not a "):
        _read_all(path, "pseudo_labelled", layout, task=0)
    with pytest.raises(ValueError, match=f"^Record 703 of {re.escape(path)} is not a "):
        _read_all(path, "pseudo_labelled", layout, task=1)
    records[703] = records[705]
    writers.write_records(path, records)
    assert _read_all(path, "pseudo_labelled", layout, task=1) == 750
