"""Small file helpers over `tf.io.gfile` (local paths and `gs://` alike)."""

import json
import uuid

import tensorflow as tf


def atomic_write_text(path: str, text: str):
    """Writes `text` to `path` through a temporary name and a rename.

    A reader never sees a partial file under `path`, even if the writer dies.
    """
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def atomic_write_json(path: str, obj, indent: int = 2):
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def read_json(path: str):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)
