"""Import weights from original TF1 checkpoints and `keras.applications` models.

Every import first matches *all* names and shapes and only then assigns, so
a checkpoint of another architecture fails with one error that lists what
is missing, unexpected and mis-shaped, and never leaves a half-loaded model.
"""

import dataclasses
import re
from typing import Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from nst.models import names

TEACHER_PREFIX = "teacher_model/"
# Optimizer slots and bookkeeping that share the model's scope but are not
# model tensors.
_NON_MODEL_SUFFIXES = ("/RMSProp", "/RMSProp_1", "/Momentum", "/Adam", "/Adam_1")
_STEM_KEY = "stem/conv2d/kernel"


class CheckpointMismatchError(ValueError):
    """Weights that do not fit a model: lists every problem at once."""

    def __init__(self, source: str, missing=(), unexpected=(), shape_mismatches=(),
                 hint: str = ""):
        self.source = source
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatches = list(shape_mismatches)
        lines = [f"Weights in {source} do not match the model."]
        if hint:
            lines.append(hint)
        for title, items in (("missing from the source", self.missing),
                             ("unexpected in the source", self.unexpected)):
            if items:
                shown = ", ".join(items[:20])
                more = f" ... and {len(items) - 20} more" if len(items) > 20 else ""
                lines.append(f"{len(items)} {title}: {shown}{more}")
        if self.shape_mismatches:
            shown = "; ".join(f"{n}: model {m} vs source {s}"
                              for n, m, s in self.shape_mismatches[:20])
            lines.append(f"{len(self.shape_mismatches)} shape mismatches: {shown}")
        super().__init__("\n".join(lines))


@dataclasses.dataclass
class LoadReport:
    """What an import read.

    Attributes:
      source: the file or model read.
      root: the scope the weights were taken from (original checkpoints).
      num_loaded: number of model tensors assigned.
      num_from_ema: how many of them came from `/ExponentialMovingAverage`.
    """
    source: str
    root: str = ""
    num_loaded: int = 0
    num_from_ema: int = 0


def _assign_all(model, values: Dict[str, np.ndarray]):
    for variable in model.weights:
        variable.assign(values[variable.path])


def _check_shapes(model, values: Dict[str, np.ndarray], key_of) -> List[Tuple[str, tuple, tuple]]:
    bad = []
    for variable in model.weights:
        value = values.get(variable.path)
        if value is not None and tuple(value.shape) != tuple(variable.shape):
            bad.append((key_of(variable.path), tuple(variable.shape), tuple(value.shape)))
    return bad


def find_roots(checkpoint_keys) -> List[str]:
    """Scopes in a checkpoint that hold an EfficientNet ('efficientnet-b0/', ...)."""
    roots = set()
    for key in checkpoint_keys:
        if key.endswith(names.EMA_SUFFIX):
            key = key[:-len(names.EMA_SUFFIX)]
        if key.endswith(_STEM_KEY):
            roots.add(key[:-len(_STEM_KEY)])
    return sorted(roots)


def _choose_root(roots, source, model_name, path):
    if source not in ("auto", "student", "teacher"):
        raise ValueError(f"source must be 'auto', 'student' or 'teacher', got {source!r}")
    if not roots:
        raise CheckpointMismatchError(
            path, hint=f"No EfficientNet found: no variable ends in '{_STEM_KEY}'. "
                       "Is this an original (TF1 name-based) checkpoint?")
    students = [r for r in roots if not r.startswith(TEACHER_PREFIX)]
    teachers = [r for r in roots if r.startswith(TEACHER_PREFIX)]
    pool = {"student": students, "teacher": teachers,
            "auto": students or teachers}[source]
    if not pool:
        raise CheckpointMismatchError(
            path, hint=f"No {source} model in the checkpoint; it holds: {roots}")
    if len(pool) > 1:
        same_name = [r for r in pool if r.rstrip("/").split("/")[-1] == model_name]
        if len(same_name) != 1:
            raise CheckpointMismatchError(
                path, hint=f"Several models in the checkpoint ({pool}); pass root=")
        pool = same_name
    return pool[0]


def load_original_checkpoint(model, path: str, *, source: str = "auto",
                             root: Optional[str] = None,
                             prefer_ema: bool = True) -> LoadReport:
    """Loads an original (TF1 name-based) EfficientNet checkpoint into `model`.

    Takes `<root><name>/ExponentialMovingAverage` when present (and
    `prefer_ema`), else `<root><name>`; skips optimizer slots and
    `global_step`. A student-run checkpoint with an online teacher holds the
    teacher under `teacher_model/<name>/`; `source="teacher"` takes it.

    Args:
      model: an `EfficientNet`.
      path: checkpoint prefix (`.../model.ckpt-1000`) or a directory with a
        `checkpoint` file; local or `gs://`.
      source: "student", "teacher", or "auto" (the student if present).
      root: the scope to read, e.g. "efficientnet-b0/"; overrides `source`.
      prefer_ema: read EMA shadows first (the original evaluates, predicts and
        teaches with them).

    Returns:
      A `LoadReport`.

    Raises:
      CheckpointMismatchError: names or shapes do not fit; nothing is assigned.
    """
    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    if "_CHECKPOINTABLE_OBJECT_GRAPH" in shapes:
        raise CheckpointMismatchError(
            path, hint="This is an object-based (TF2 / nst) checkpoint, not an "
                       "original name-based one; use nst.models.saving.load_weights.")
    if root is None:
        root = _choose_root(find_roots(shapes), source, model.config.name, path)
    elif root and not root.endswith("/"):
        root += "/"
    name_map = names.original_names(model)

    values, missing, from_ema = {}, [], 0
    for our_path, suffix in name_map.items():
        key = root + suffix
        ema_key = key + names.EMA_SUFFIX
        if prefer_ema and ema_key in shapes:
            values[our_path] = reader.get_tensor(ema_key)
            from_ema += 1
        elif key in shapes:
            values[our_path] = reader.get_tensor(key)
        elif ema_key in shapes:
            values[our_path] = reader.get_tensor(ema_key)
            from_ema += 1
        else:
            missing.append(key)

    wanted = {root + s for s in name_map.values()}
    unexpected = []
    for key in sorted(shapes):
        if not key.startswith(root) or key.endswith(_NON_MODEL_SUFFIXES):
            continue
        if root == "" and key.startswith(TEACHER_PREFIX):
            continue
        base = key[:-len(names.EMA_SUFFIX)] if key.endswith(names.EMA_SUFFIX) else key
        if base in wanted or base == "global_step" or base.endswith("/global_step"):
            continue
        if base not in unexpected:
            unexpected.append(base)

    reverse = {p: root + s for p, s in name_map.items()}
    mismatched = _check_shapes(model, values, reverse.get)
    if missing or unexpected or mismatched:
        found = re.sub(r"/$", "", root) or "(no scope)"
        raise CheckpointMismatchError(
            path, missing, unexpected, mismatched,
            hint=f"Model {model.config.name} ({model.config.num_classes} classes, "
                 f"{len(model.config.blocks())} blocks) vs checkpoint scope {found}.")
    _assign_all(model, values)
    if 0 < from_ema < len(values):
        logging.warning("%s: %d of %d tensors came from EMA shadows, the rest are raw values",
                        path, from_ema, len(values))
    return LoadReport(source=path, root=root, num_loaded=len(values), num_from_ema=from_ema)


def load_keras_applications(model, keras_model) -> LoadReport:
    """Copies weights from a `keras.applications.EfficientNetB0..B7` model.

    Only the network weights move: `keras.applications` models carry their
    own input rescaling/normalisation layers, while nst models apply the
    fixed constants of `normalization.py`.

    Raises:
      CheckpointMismatchError: layers or shapes do not fit; nothing is assigned.
    """
    source = f"keras model {keras_model.name!r}"
    theirs = {v.path: v for v in keras_model.weights}
    name_map = names.keras_applications_names(model)
    values, missing = {}, []
    for our_path, their_path in name_map.items():
        if their_path in theirs:
            values[our_path] = np.asarray(theirs[their_path].numpy())
        else:
            missing.append(their_path)
    # Their input-statistics layer (named "normalization", "normalization_1", ...
    # depending on the session) is replaced by nst's fixed constants.
    ignored = {v.path for layer in keras_model.layers
               if isinstance(layer, keras.layers.Normalization) for v in layer.weights}
    wanted = set(name_map.values())
    unexpected = sorted(p for p in theirs if p not in wanted and p not in ignored)
    mismatched = _check_shapes(model, values, name_map.get)
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(source, missing, unexpected, mismatched,
                                      hint=f"Target model: {model.config.name}.")
    _assign_all(model, values)
    return LoadReport(source=source, num_loaded=len(values))
