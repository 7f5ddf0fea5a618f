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

from nst.models import config as config_lib
from nst.models import names

TEACHER_PREFIX = "teacher_model/"
# Optimizer slots and bookkeeping that share the model's scope but are not
# model tensors.
_NON_MODEL_SUFFIXES = ("/RMSProp", "/RMSProp_1", "/Momentum", "/Adam", "/Adam_1")
_STEM_KEY = "stem/conv2d/kernel"
USE_EMA_CHOICES = ("auto", True, False)
# Enough names to find the pattern in a list of hundreds.
_SHOWN_NAMES = 5


class CheckpointMismatchError(ValueError):
    """Weights that do not fit a model: lists every problem at once."""

    def __init__(self, source: str, missing=(), unexpected=(), shape_mismatches=(),
                 hint: str = "", reason: str = ""):
        self.source = source
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatches = list(shape_mismatches)
        lines = [reason or f"Weights in {source} do not match the model."]
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


class EmaShadowError(CheckpointMismatchError):
    """The checkpoint's EMA shadows do not fit what `use_ema` asked for.

    Attributes:
      missing_shadows: names of the shadows that would be needed.
      use_ema: the setting that refused the checkpoint.
    """

    def __init__(self, source: str, reason: str, missing_shadows=(), use_ema="auto"):
        super().__init__(source, reason=reason)
        self.missing_shadows = list(missing_shadows)
        self.use_ema = use_ema


def _some(names_, count=_SHOWN_NAMES) -> str:
    shown = ", ".join(names_[:count])
    return shown + (f" and {len(names_) - count} more" if len(names_) > count else "")


def check_use_ema(use_ema):
    """Raises ValueError unless `use_ema` is "auto", True or False."""
    # `is`, not `in`: 1 == True and 0 == False would slip through `in`.
    if not any(use_ema is choice for choice in USE_EMA_CHOICES):
        raise ValueError(f"use_ema must be 'auto', True or False, got {use_ema!r}")


def choose_ema(source: str, use_ema, raw, shadowed, shadow_name=lambda n: n) -> bool:
    """Decides between EMA shadows and raw values; True means the shadows.

    One rule for every checkpoint format, so that a model is never built
    from a mix of averaged and raw tensors: a shadow can be far from its raw
    value, and a mix is neither the averaged nor the raw network.

      use_ema=True   every tensor needs a shadow;
      use_ema="auto" shadows when every tensor has one, raw values when
                     none has, an error for a partial set;
      use_ema=False  raw values only; shadows are ignored.

    Args:
      source: the checkpoint, for messages.
      use_ema: "auto", True or False.
      raw: names of the model tensors the checkpoint holds raw values for.
      shadowed: names of the model tensors it holds EMA shadows for.
      shadow_name: the checkpoint's name for a tensor's shadow, for messages.

    Raises:
      EmaShadowError: the shadows do not fit `use_ema`.
      ValueError: `use_ema` is none of the three.
    """
    check_use_ema(use_ema)
    present = set(raw) | set(shadowed)
    if use_ema is False:
        shadow_only = sorted(present - set(raw))
        if shadow_only:
            raise EmaShadowError(
                source, use_ema=use_ema, missing_shadows=[],
                reason=f"use_ema=False loads raw values, but {len(shadow_only)} of "
                       f"{len(present)} tensors in {source} exist only as EMA shadows "
                       f"({_some([shadow_name(n) for n in shadow_only])}); "
                       f"pass use_ema='auto' to load the shadows.")
        return False
    unshadowed = sorted(present - set(shadowed))
    if not unshadowed:
        return bool(shadowed)
    missing = [shadow_name(n) for n in unshadowed]
    if use_ema is True:
        if not shadowed:
            reason = (f"use_ema=True, but {source} holds no EMA shadows; "
                      f"pass use_ema='auto' or False to load raw values.")
        else:
            reason = (f"use_ema=True needs an EMA shadow for every tensor, but "
                      f"{len(missing)} of {len(present)} in {source} have none "
                      f"(missing: {_some(missing)}).")
        raise EmaShadowError(source, reason, missing, use_ema)
    if shadowed:
        raise EmaShadowError(
            source, use_ema=use_ema, missing_shadows=missing,
            reason=f"{source} has EMA shadows for only {len(present) - len(missing)} of "
                   f"{len(present)} tensors (missing: {_some(missing)}); "
                   f"pass use_ema=False to load raw values.")
    return False


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


def scope_model_name(root: str) -> Optional[str]:
    """The model a checkpoint scope is named after ('teacher_model/efficientnet-b7/'
    -> 'efficientnet-b7'), or None when the scope is not a known model name."""
    name = root.rstrip("/").split("/")[-1]
    return name if name in config_lib.MODEL_TABLE else None


def load_original_checkpoint(model, path: str, *, source: str = "auto",
                             root: Optional[str] = None,
                             use_ema="auto") -> LoadReport:
    """Loads an original (TF1 name-based) EfficientNet checkpoint into `model`.

    Reads `<root><name>/ExponentialMovingAverage` or `<root><name>` as
    `use_ema` and `choose_ema` decide; skips optimizer slots and
    `global_step`. A student-run checkpoint with an online teacher holds the
    teacher under `teacher_model/<name>/`; `source="teacher"` takes it.

    Args:
      model: an `EfficientNet`.
      path: checkpoint prefix (`.../model.ckpt-1000`) or a directory with a
        `checkpoint` file; local or `gs://`.
      source: "student", "teacher", or "auto" (the student if present).
      root: the scope to read, e.g. "efficientnet-b0/"; overrides `source`.
      use_ema: "auto" (shadows when every tensor has one, raw values when
        none has; the original evaluates, predicts and teaches with the
        shadows), True (shadows required) or False (raw values only).

    Returns:
      A `LoadReport`.

    Raises:
      CheckpointMismatchError: names or shapes do not fit; nothing is assigned.
        When the scope is named after another model, the message says so first.
      EmaShadowError: the shadows do not fit `use_ema`; nothing is assigned.
    """
    check_use_ema(use_ema)
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
    key_of = {our_path: root + suffix for our_path, suffix in name_map.items()}

    raw = {k for k in key_of.values() if k in shapes}
    shadowed = {k for k in key_of.values() if k + names.EMA_SUFFIX in shapes}
    missing = [k for k in key_of.values() if k not in raw and k not in shadowed]

    wanted = set(key_of.values())
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

    # Shapes come from the index, so a misfit fails before any tensor is read.
    mismatched = []
    for variable in model.weights:
        key = key_of[variable.path]
        for stored_key in (key, key + names.EMA_SUFFIX):
            if stored_key in shapes and tuple(shapes[stored_key]) != tuple(variable.shape):
                mismatched.append((key, tuple(variable.shape), tuple(shapes[stored_key])))
                break

    theirs = scope_model_name(root)
    other_model = theirs is not None and theirs != model.config.name
    if missing or unexpected or mismatched:
        reason = ""
        if other_model:
            # Said first: otherwise it hides behind lists of missing blocks.
            reason = f"Checkpoint {path} holds {theirs}, the model is {model.config.name}."
        found = re.sub(r"/$", "", root) or "(no scope)"
        raise CheckpointMismatchError(
            path, missing, unexpected, mismatched, reason=reason,
            hint=f"Model {model.config.name} ({model.config.num_classes} classes, "
                 f"{len(model.config.blocks())} blocks) vs checkpoint scope {found}.")
    if other_model:
        logging.warning("%s: scope %s is named after %s but every tensor fits %s; loading it",
                        path, root, theirs, model.config.name)

    take_shadows = choose_ema(path, use_ema, raw, shadowed,
                              shadow_name=lambda key: key + names.EMA_SUFFIX)
    suffix = names.EMA_SUFFIX if take_shadows else ""
    values = {our_path: reader.get_tensor(key + suffix) for our_path, key in key_of.items()}
    _assign_all(model, values)
    return LoadReport(source=path, root=root, num_loaded=len(values),
                      num_from_ema=len(values) if take_shadows else 0)


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
