"""The nst weight format, format-sniffing loads, and serving exports.

nst checkpoints are `tf.train.Checkpoint`s whose `model` group is keyed by
Keras variable path (`blocks_3/expand_bn/gamma`), next to a
`model_config.json` that says which `EfficientNetConfig` they belong to.
Path keys make a checkpoint readable by name and let a load check every name
and shape against the model before it assigns anything. Training
checkpoints add an `ema` group with the same keys (EMA shadows), which
`load_weights` prefers, like the original's eval and predict.
"""

import os
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from nst import fileio
from nst.models import config as config_lib
from nst.models import convert
from nst.models.efficientnet import EfficientNet

CONFIG_FILE = "model_config.json"
_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def variables_by_path(model):
    """{Keras variable path: variable} for every model weight."""
    return {v.path: v for v in model.weights}


def unescape_object_name(name: str) -> str:
    """Undoes tf.train's escaping of an object name ('blocks_0.Sbn' -> 'blocks_0/bn')."""
    # tf.train escapes '/' as '.S' and '.' as '..' in object names.
    out, i = [], 0
    while i < len(name):
        if name[i] == "." and i + 1 < len(name):
            out.append("/" if name[i + 1] == "S" else name[i + 1])
            i += 2
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def checkpoint_group(path: str, group: str):
    """{variable path: shape} of one group (`model`, `ema`) of an nst checkpoint."""
    shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    prefix = group + "/"
    return {unescape_object_name(k[len(prefix):-len(_VALUE_SUFFIX)]): tuple(s)
            for k, s in shapes.items()
            if k.startswith(prefix) and k.endswith(_VALUE_SUFFIX)}


def write_model_config(model: EfficientNet, directory: str):
    tf.io.gfile.makedirs(directory)
    fileio.atomic_write_json(os.path.join(directory, CONFIG_FILE),
                             {"config": model.config.to_dict(),
                              "image_size": model.image_size})


def read_model_config(directory: str):
    """Returns (EfficientNetConfig, image_size) stored in `directory`."""
    path = os.path.join(directory, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"No {CONFIG_FILE} in {directory}: not an nst model directory")
    data = fileio.read_json(path)
    return config_lib.EfficientNetConfig.from_dict(data["config"]), data.get("image_size")


def checkpoint_exists(path: str) -> bool:
    """Whether `path` (a directory, a checkpoint prefix or a file) holds a checkpoint."""
    if tf.io.gfile.isdir(path):
        return tf.train.latest_checkpoint(path) is not None
    return tf.io.gfile.exists(path + ".index") or tf.io.gfile.exists(path)


def stored_model_config(path: str):
    """(EfficientNetConfig, image_size) from the `model_config.json` beside an nst
    checkpoint (`path` a directory or a checkpoint prefix), or None (e.g. an
    original TF1 checkpoint, which does not say which network it holds)."""
    directory = path if tf.io.gfile.isdir(path) else os.path.dirname(path)
    if not tf.io.gfile.exists(os.path.join(directory, CONFIG_FILE)):
        return None
    return read_model_config(directory)


def save_weights(model: EfficientNet, directory: str, step: int = 0) -> str:
    """Writes `<directory>/ckpt-<step>` and `model_config.json`; returns the prefix."""
    write_model_config(model, directory)
    checkpoint = tf.train.Checkpoint(model=variables_by_path(model))
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=None)
    return manager.save(checkpoint_number=step)


def _resolve(path: str) -> str:
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"No checkpoint in directory {path}")
        return latest
    return path


def _is_object_based(path: str) -> bool:
    return "_CHECKPOINTABLE_OBJECT_GRAPH" in tf.train.load_checkpoint(path).get_variable_to_shape_map()


def _load_nst_checkpoint(model, path: str, use_ema) -> convert.LoadReport:
    groups = {g: checkpoint_group(path, g) for g in ("model", "ema")}
    if not (groups["model"] or groups["ema"]):
        raise convert.CheckpointMismatchError(
            path, hint="No nst model weights in this object-based checkpoint")
    # The architecture check looks at both groups so that a partial `ema`
    # group is reported as such by the EMA rule, not as missing tensors.
    stored = {**groups["ema"], **groups["model"]}
    ours = variables_by_path(model)
    missing = sorted(set(ours) - set(stored))
    unexpected = sorted(set(stored) - set(ours))
    mismatched = [(p, tuple(v.shape), shape) for p, v in ours.items()
                  for shape in {groups[g][p] for g in groups if p in groups[g]}
                  if tuple(v.shape) != shape]
    if missing or unexpected or mismatched:
        hint = f"Model {model.config.name} ({model.config.num_classes} classes)."
        config_dir = os.path.dirname(path)
        if tf.io.gfile.exists(os.path.join(config_dir, CONFIG_FILE)):
            theirs, _ = read_model_config(config_dir)
            hint += (f" The checkpoint belongs to {theirs.name} (width {theirs.width}, "
                     f"depth {theirs.depth}, {theirs.num_classes} classes).")
        raise convert.CheckpointMismatchError(path, missing, unexpected, mismatched, hint=hint)
    take_shadows = convert.choose_ema(path, use_ema, set(groups["model"]), set(groups["ema"]),
                                      shadow_name=lambda p: f"ema/{p}")
    group = "ema" if take_shadows else "model"
    tf.train.Checkpoint(**{group: ours}).read(path).expect_partial()
    return convert.LoadReport(source=path, root=group, num_loaded=len(ours),
                              num_from_ema=len(ours) if take_shadows else 0)


def load_weights(model: EfficientNet, path: str, *, use_ema="auto",
                 source: str = "auto") -> convert.LoadReport:
    """Loads weights of any supported format into `model`, checking first.

    Formats (sniffed): nst checkpoints (`save_weights`, training
    checkpoints), original TF1 name-based checkpoints, Keras `.weights.h5`.

    Args:
      model: an `EfficientNet`.
      path: checkpoint prefix, a directory holding checkpoints, or a
        `.weights.h5` file.
      use_ema: "auto" reads the EMA shadows when every tensor has one and
        the raw values when none has; True requires a shadow for every
        tensor; False reads raw values only. A checkpoint with shadows for
        only some tensors fails under "auto" and True rather than loading a
        mix (see `convert.choose_ema`; one rule for all formats).
      source: for original checkpoints, "student", "teacher" or "auto".

    Raises:
      CheckpointMismatchError: the weights belong to another architecture.
      convert.EmaShadowError: the EMA shadows do not fit `use_ema`.
      FileNotFoundError: nothing at `path`.
      ValueError: `use_ema` is not "auto", True or False.
    """
    convert.check_use_ema(use_ema)
    if path.endswith(".weights.h5"):
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"No weights file {path}")
        # A weights file has no shadows: fine for "auto" and False, not for True.
        convert.choose_ema(path, use_ema, set(variables_by_path(model)), set())
        # Keras assigns layer by layer and raises only at the first misfit;
        # undo what it assigned so a failed load leaves the model unchanged.
        before = [v.numpy() for v in model.weights]
        try:
            model.load_weights(path)
        except ValueError as e:
            for variable, value in zip(model.weights, before):
                variable.assign(value)
            raise convert.CheckpointMismatchError(
                path, hint=f"Model {model.config.name} ({model.config.num_classes} classes). "
                           f"Keras: {e}") from e
        return convert.LoadReport(source=path, num_loaded=len(model.weights))
    path = _resolve(path)
    if _is_object_based(path):
        return _load_nst_checkpoint(model, path, use_ema)
    return convert.load_original_checkpoint(model, path, source=source, use_ema=use_ema)


def load_model(directory: str, image_size="config", use_ema="auto") -> EfficientNet:
    """Builds the model described by `<directory>/model_config.json` and loads
    the latest checkpoint of `directory` into it."""
    config, stored_size = read_model_config(directory)
    size = stored_size if image_size == "config" else image_size
    model = EfficientNet(config, image_size=size)
    load_weights(model, directory, use_ema=use_ema)
    return model


def export_serving(model: EfficientNet, path: str, format: str = "saved_model"):
    """Exports `model` for serving, in inference mode.

    format="saved_model": a TF SavedModel with signature `serve(images)` ->
      {"logits": [B, K], "probabilities": [B, K]}, images `[B, S, S, 3]`
      float32 pixels in 0..255 (S fixed unless the model is size-agnostic).
    format="keras": a `.keras` archive (`path` must end in `.keras`) that
      `keras.models.load_model` restores without nst-specific arguments once
      `nst` is imported.
    """
    if format == "keras":
        if not path.endswith(".keras"):
            raise ValueError(f"A .keras export needs a path ending in .keras, got {path}")
        model.save(path)
        return path
    if format != "saved_model":
        raise ValueError(f"format must be 'saved_model' or 'keras', got {format!r}")
    size = model.image_size

    def serve(images):
        logits = model(images, training=False)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve", fn=serve,
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
    archive.write_out(path, verbose=False)
    return path
