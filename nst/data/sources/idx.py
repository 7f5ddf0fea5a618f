"""Reader of the IDX files that MNIST-style datasets ship (Fashion-MNIST, MNIST, KMNIST).

An IDX file is a big-endian header and a flat array:

  bytes 0-1   zero
  byte  2     element type: 0x08 unsigned byte (the only one these datasets use)
  byte  3     number of dimensions d
  4 * d       each dimension as a big-endian uint32
  rest        the elements in C order

so an image file has magic 0x00000803 and dimensions [N, rows, cols], a label file magic
0x00000801 and [N]. Files may be gzip-compressed (recognised by the gzip magic, whatever
the file name). Every defect is a `ValueError` naming the file and what is wrong: a bad
magic or element type, dimensions other than those expected, fewer or more bytes than
the header announces (a truncated download), a gzip stream that is damaged or cut short.
"""

import gzip
import struct
import zlib
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

GZIP_MAGIC = b"\x1f\x8b"
UBYTE = 0x08


def read_bytes(path: str) -> bytes:
    """The file's content, gunzipped when it is a gzip stream (ValueError when damaged)."""
    with tf.io.gfile.GFile(path, "rb") as f:
        raw = f.read()
    if raw[:2] != GZIP_MAGIC:
        if path.endswith(".gz"):
            raise ValueError(f"{path}: named .gz but is not a gzip file (it starts with "
                             f"{raw[:4]!r}); the download is damaged, reinstall it")
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{path}: damaged or truncated gzip stream ({e}); reinstall "
                         f"the file") from None


def parse(data: bytes, path: str, ndim: int,
          shape: Optional[Sequence[Optional[int]]] = None) -> np.ndarray:
    """IDX bytes -> uint8 array of `ndim` dimensions.

    shape: expected dimensions, None entries free (e.g. (None, 28, 28)).
    """
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes, too short for an IDX header")
    zero, dtype, dims = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise ValueError(f"{path}: not an IDX file (magic {data[:4].hex()}, expected "
                         f"0000{UBYTE:02x}{ndim:02x})")
    if dtype != UBYTE:
        raise ValueError(f"{path}: IDX element type 0x{dtype:02x}; only unsigned bytes "
                         f"(0x08) are supported")
    if dims != ndim:
        raise ValueError(f"{path}: {dims} dimensions, expected {ndim} (magic "
                         f"{data[:4].hex()}; is this an image file where a label file "
                         f"belongs, or the reverse?)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    sizes = struct.unpack(f">{ndim}I", data[4:header])
    if shape is not None:
        for axis, (got, want) in enumerate(zip(sizes, shape)):
            if want is not None and got != want:
                raise ValueError(f"{path}: dimension {axis} is {got}, expected {want} "
                                 f"(dimensions {list(sizes)})")
    expected = int(np.prod(sizes, dtype=np.int64))
    body = len(data) - header
    if body != expected:
        what = "truncated" if body < expected else "longer than its header says"
        raise ValueError(f"{path}: {what}: {body} data bytes for dimensions {list(sizes)}, "
                         f"which need {expected}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(sizes)


def read_images(path: str, height: Optional[int] = None,
                width: Optional[int] = None) -> np.ndarray:
    """An IDX image file -> uint8 [N, height, width]."""
    return parse(read_bytes(path), path, 3, (None, height, width))


def read_labels(path: str, num_classes: Optional[int] = None) -> np.ndarray:
    """An IDX label file -> int64 [N]; labels >= num_classes are an error."""
    labels = parse(read_bytes(path), path, 1).astype(np.int64)
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        index = int(np.argmax(labels >= num_classes))
        raise ValueError(f"{path}: label {labels[index]} at index {index} is outside "
                         f"[0, {num_classes})")
    return labels


def read_pair(images_path: str, labels_path: str, height: int, width: int,
              num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split; their counts must agree."""
    images = read_images(images_path, height, width)
    labels = read_labels(labels_path, num_classes)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} "
                         f"{len(labels)} labels")
    return images, labels


def encode(array: np.ndarray) -> bytes:
    """uint8 array -> IDX bytes (uncompressed): the inverse of `parse`, for test data."""
    array = np.ascontiguousarray(array, np.uint8)
    return (struct.pack(">HBB", 0, UBYTE, array.ndim)
            + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())
