"""Small file helpers over `tf.io.gfile` (local paths and `gs://` alike).

Paths: `join`, `split`, `dirname` and `basename` are those of `os.path`, but keep '/' for
URLs such as gs://bucket/dir (`posixpath`) on every OS.

Writes: `atomic_write_bytes` (and the text and JSON writers built on it) writes through
a hidden temporary name next to `path` (`temporary_path`: `<dir>/.<name>.tmp-<32 hex>`)
and renames it, so a reader never sees a partial file under `path`, even if the writer
dies. Every atomic writer of the project (record shards, `nst.data.writers`, included)
names its temporaries with `temporary_path`, so `remove_temporaries` finds exactly the
ones a killed writer of a given path left.
"""

import json
import math
import os
import posixpath
import re
import uuid

from absl import logging

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


_TEMPORARY_SUFFIX = ".tmp-"
_TEMPORARY_HEX = "[0-9a-f]{32}"  # uuid4().hex
_GLOB_SPECIAL = re.compile(r"[*?\[\]\\]")


def temporary_path(path: str) -> str:
    """A fresh hidden temporary name next to `path`: `<dir>/.<name>.tmp-<32 hex>`. Hidden
    so that readers listing a directory (`nst.data.readers`) skip it; next to `path` so
    that the final rename stays within one directory (atomic on a local file system)."""
    directory, name = split(path)
    return join(directory, f".{name}{_TEMPORARY_SUFFIX}{uuid.uuid4().hex}")


def temporaries(path: str) -> list:
    """The existing `temporary_path` names of `path` (exactly that pattern: not
    `.<name>.tmp-notes`, nor another path's temporaries)."""
    directory, name = split(path)
    prefix = f".{name}{_TEMPORARY_SUFFIX}"
    exact = re.compile(re.escape(prefix) + _TEMPORARY_HEX)
    # The glob only narrows the listing (a prefix listing on gs://); the regex decides.
    # Glob metacharacters in the name would change its meaning: glob up to the first one.
    literal = prefix[:m.start()] if (m := _GLOB_SPECIAL.search(prefix)) else prefix
    candidates = tf.io.gfile.glob(join(directory, literal + "*"))
    return sorted(p for p in candidates if exact.fullmatch(basename(p)))


def remove_temporaries(path: str) -> int:
    """Deletes the temporaries of `path` that a killed writer left (`temporaries`);
    returns how many.

    Only for an output that one job owns: it would also delete the temporary of a writer
    of `path` that is still running, whose rename would then fail. That is why the atomic
    writers below do not call it themselves: they cannot tell whether their caller owns
    `path`, and two processes publishing the same file at once is safe with the rename
    alone. The owners call it before they write (the filter's steps, predict's slices)."""
    stale = temporaries(path)
    for tmp in stale:
        logging.info("Removing %s, left by an earlier run", tmp)
        tf.io.gfile.remove(tmp)
    return len(stale)


def atomic_write_bytes(path: str, data: bytes):
    """Writes `data` to `path` through a temporary name and a rename (module doc). A
    failed write deletes its temporary; one left by a killed process stays (see
    `remove_temporaries` for why this writer does not delete it)."""
    tmp = temporary_path(path)
    try:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        try:
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
        except tf.errors.OpError as e:  # keep the original error visible
            logging.warning("Could not remove temporary file %s: %s", tmp, e)
        raise


def atomic_write_text(path: str, text: str):
    """`atomic_write_bytes` of `text` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _non_finite_at(obj, where=""):
    """The location (e.g. `[3]["loss"]`) of the first NaN or Inf float in `obj`, or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "the top level"
    items = (obj.items() if isinstance(obj, dict)
             else enumerate(obj) if isinstance(obj, (list, tuple)) else ())
    for key, value in items:
        found = _non_finite_at(value, f"{where}[{key!r}]")
        if found:
            return found
    return None


def atomic_write_json(path: str, obj, indent: int = 2):
    """Writes `obj` as strict JSON (`atomic_write_bytes`).

    Raises:
      ValueError: `obj` holds NaN or Inf, which strict JSON parsers reject
        (write None for a missing value); nothing is written.
    """
    try:
        text = json.dumps(obj, indent=indent, sort_keys=True, allow_nan=False)
    except ValueError as e:
        where = _non_finite_at(obj)
        if where is None:
            raise
        raise ValueError(f"Not writing {path}: non-finite number at {where} (strict JSON "
                         f"has no NaN or Infinity; use None for a missing value)") from e
    atomic_write_text(path, text + "\n")


def read_json(path: str):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)
