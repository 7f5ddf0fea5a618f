"""Small file helpers over `tf.io.gfile` (local paths and `gs://` alike).

Paths: `join`, `split`, `dirname` and `basename` are those of `os.path`, but keep '/' for
URLs such as gs://bucket/dir (`posixpath`) on every OS.

Writes: `atomic_write_bytes` (and the text and JSON writers built on it) writes through
the temporary name `<path>.tmp-<hex>` next to `path` and renames it, so a reader never
sees a partial file under `path`, even if the writer dies. (Record shards have their own
hidden temporaries, `nst.data.writers.temporary_path`.)
"""

import json
import os
import posixpath
import uuid

import tensorflow as tf


def _paths(path: str):
    return posixpath if "://" in path else os.path


def join(*parts: str) -> str:
    """os.path.join, but '/' for URLs such as gs://bucket/dir."""
    return _paths(parts[0]).join(*parts)


def split(path: str):
    return _paths(path).split(path)


def dirname(path: str) -> str:
    return _paths(path).dirname(path)


def basename(path: str) -> str:
    return _paths(path).basename(path)


def atomic_write_bytes(path: str, data: bytes):
    """Writes `data` to `path` through a temporary name and a rename (module doc)."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(data)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def atomic_write_text(path: str, text: str):
    """`atomic_write_bytes` of `text` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj, indent: int = 2):
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def read_json(path: str):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)
