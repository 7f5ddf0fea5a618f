"""The threaded TFRecord writer writes tf.io.TFRecordWriter's bytes and fails loudly."""

import os

import numpy as np
import pytest
import tensorflow as tf

from nst.data import record_file, writers


def _records(rng, n):
    sizes = [0, 1, 7, 255, 256, 70000] + list(rng.integers(0, 9000, n))
    return [rng.bytes(int(s)) for s in sizes]


@pytest.mark.parametrize("chunk_bytes", [1, 1000, record_file.CHUNK_BYTES])
def test_bytes_equal_tfrecordwriter_and_read_back(tmp_path, chunk_bytes):
    records = _records(np.random.default_rng(chunk_bytes), 300)
    with tf.io.TFRecordWriter(str(tmp_path / "reference")) as w:
        for r in records:
            w.write(r)
    writer = record_file.RecordFileWriter(str(tmp_path / "ours"), chunk_bytes=chunk_bytes)
    for r in records[:100]:
        writer.write(r)
    writer.write_many(records[100:200])
    writer.write_many([])
    for r in records[200:]:
        writer.write(r)
    writer.close()
    assert (tmp_path / "ours").read_bytes() == (tmp_path / "reference").read_bytes()
    # TFRecordDataset checks both CRCs of every record.
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "ours"))] == records


def test_masked_crc_matches_the_format_constant():
    # CRC32C("123456789") = 0xE3069283 (the standard check value), then masked.
    crc = 0xE3069283
    assert record_file.masked_crc32c(b"123456789") == \
        ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_background_write_errors_surface(tmp_path, monkeypatch):
    class Broken:  # a non-local file (gs://...): chunks go through its write
        def write(self, _):
            raise OSError("disk full")

        def close(self):
            pass

    def broken_writev(fd, buffers):  # a local file: chunks go through os.writev
        raise OSError("no space left")

    for name, message in (("remote", "disk full"), ("local", "no space left")):
        writer = record_file.RecordFileWriter(str(tmp_path / name), chunk_bytes=1)
        if name == "remote":
            writer._file.close()
            writer._file, writer._fd = Broken(), None
        else:
            monkeypatch.setattr(record_file.os, "writev", broken_writev)
        writer.write(b"a")  # handed to the thread, which fails
        with pytest.raises(OSError, match=f"Writing .*{name} failed: {message}"):
            for _ in range(100):
                writer.write(b"b")
            writer.close()


def test_short_writev_writes_the_rest(tmp_path, monkeypatch):
    real_writev = os.writev

    def short_writev(fd, buffers):  # the kernel may write less than asked
        return real_writev(fd, [bytes(b)[:3] for b in buffers[:1]])

    monkeypatch.setattr(record_file.os, "writev", short_writev)
    records = [bytes([i]) * (i * 7) for i in range(50)]
    path = str(tmp_path / "short")
    writer = record_file.RecordFileWriter(path, chunk_bytes=100)
    writer.write_many(records)
    writer.close()
    assert list(tf.data.TFRecordDataset(path).as_numpy_iterator()) == records


def test_shard_writer_abort_publishes_nothing(tmp_path):
    path = str(tmp_path / "out" / "train-00000-of-00001")
    with pytest.raises(RuntimeError):
        with writers.ShardWriter(path) as w:
            w.write(b"x" * 100)
            raise RuntimeError("killed")
    assert not os.path.exists(path) and os.listdir(tmp_path / "out") == []
