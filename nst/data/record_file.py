"""A TFRecord file writer that keeps the writing off the Python thread.

`tf.io.TFRecordWriter.write` holds the GIL for the whole write, ~15 µs for a 7 KB record
on our 2-core machine: for the filter, which writes half of its input again, that is as
long as reading the input. `RecordFileWriter` frames each record itself (the TFRecord
format: uint64 length, masked CRC32C of the length, data, masked CRC32C of the data,
little endian) with `google_crc32c`, collects the parts of ~4 MiB of framed records and
hands them to a background thread, whose writes release the GIL: `os.writev` of the
parts as they are for a local file (no copy into one buffer first: that copy cost the
Python thread ~1 µs per 4 KB record), one joined buffer through `tf.io.gfile.GFile` for
other paths (gs://...). The bytes are those of `tf.io.TFRecordWriter` (tested).
"""

import functools
import os
import queue
import struct
import threading

import google_crc32c
import tensorflow as tf

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
CHUNK_BYTES = 4 << 20
_IOV_MAX = 1024  # buffers per writev call (Linux's limit)


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC32C rotated right by 15 bits plus a constant (mod 2^32)."""
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


@functools.lru_cache(maxsize=1 << 16)
def _header(size: int) -> bytes:
    """uint64 length + masked CRC32C of those 8 bytes (record sizes repeat: cached)."""
    length = struct.pack("<Q", size)
    return length + struct.pack("<I", masked_crc32c(length))


def frame(record: bytes):
    """The three parts of one framed record (joined by the writer, not here: a join per
    record would copy the data twice)."""
    return _header(len(record)), record, struct.pack("<I", masked_crc32c(record))


class RecordFileWriter:
    """write(record: bytes) ... close(). Errors of the background writes are raised by the
    next `write` or by `close`; `abort` stops without flushing (the caller deletes the
    file)."""

    def __init__(self, path: str, chunk_bytes: int = CHUNK_BYTES):
        self.path = path
        self._chunk_bytes = chunk_bytes
        self._parts = []
        self._size = 0
        self._error = None
        local = "://" not in path
        self._file = open(path, "wb", buffering=0) if local else tf.io.gfile.GFile(path, "wb")
        self._fd = self._file.fileno() if local else None
        self._queue = queue.Queue(maxsize=2)  # bounds memory to ~3 chunks
        self._thread = threading.Thread(target=self._drain, name="RecordFileWriter",
                                        daemon=True)
        self._thread.start()

    def _drain(self):
        while True:
            parts = self._queue.get()
            if parts is None:
                return
            if self._error is None:
                try:
                    self._write(parts)
                except BaseException as e:  # pylint: disable=broad-except
                    self._error = e

    def _write(self, parts):
        """Writes a chunk's parts: a local file takes them as they are (`os.writev`, no
        copy into one buffer first), others joined."""
        if self._fd is None:
            self._file.write(b"".join(parts))
            return
        for i in range(0, len(parts), _IOV_MAX):
            group = parts[i:i + _IOV_MAX]
            written = os.writev(self._fd, group)
            size = sum(map(len, group))
            if written < size:  # a short write: the rest as one buffer
                rest = memoryview(b"".join(group))[written:]
                while len(rest):
                    rest = rest[os.write(self._fd, rest):]

    def _raise_pending(self):
        if self._error is not None:
            error, self._error = self._error, None
            raise OSError(f"Writing {self.path} failed: {error}") from error

    def write(self, record: bytes):
        self.write_many((record,))

    def write_many(self, records):
        """Frames the records and hands every full chunk to the writer thread."""
        self._raise_pending()
        parts, size, limit = self._parts, self._size, self._chunk_bytes
        for record in records:
            parts.extend(frame(record))
            size += len(record) + 16
            if size >= limit:
                self._queue.put(parts)  # the writer thread's now
                parts = self._parts = []
                size = 0
        self._size = size

    def _stop(self, flush: bool):
        if self._thread is None:
            return
        if flush and self._parts:
            self._queue.put(self._parts)
        self._parts, self._size = [], 0
        self._queue.put(None)
        self._thread.join()
        self._thread = None
        self._file.close()

    def close(self):
        """Writes what is buffered and closes the file."""
        self._stop(flush=True)
        self._raise_pending()

    def abort(self):
        """Closes the file without writing what is buffered."""
        self._stop(flush=False)
        self._error = None
