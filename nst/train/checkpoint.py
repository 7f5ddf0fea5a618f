"""Training checkpoints: what is saved, and the checks before resuming.

A training checkpoint is a `tf.train.Checkpoint` with
  model      {variable path: variable}  student weights (nst format, see
                                        `nst.models.saving`)
  ema        {variable path: shadow}    EMA shadows (absent when EMA is off)
  optimizer  the optimizer with its slots and iteration counter
  rng        the student's noise seed generators' states
and `model_config.json` beside it. The online teacher is not saved (it is
restored from its own checkpoint at start), unlike the original (§11).
"""

import os
from typing import Optional

import tensorflow as tf
from absl import logging

from nst.models import convert, saving


def make_checkpoint(model, optimizer, ema=None) -> tf.train.Checkpoint:
    groups = dict(model=saving.variables_by_path(model), optimizer=optimizer)
    seeds = {f"{i}": v for i, v in enumerate(
        v for v in model.non_trainable_variables if "seed_generator" in v.path)}
    if seeds:
        groups["rng"] = seeds
    if ema is not None and ema.enabled:
        groups["ema"] = ema.shadows_by_path()
    return tf.train.Checkpoint(**groups)


def check_model_dir(model, model_dir: str):
    """Fails before any step if `model_dir` holds another architecture's checkpoint.

    Raises:
      convert.CheckpointMismatchError: naming the stored and the requested model.
    """
    latest = tf.train.latest_checkpoint(model_dir)
    config_path = os.path.join(model_dir, saving.CONFIG_FILE)
    if tf.io.gfile.exists(config_path):
        stored, _ = saving.read_model_config(model_dir)
        ours = model.config
        keys = ("name", "width", "depth", "num_classes", "small_image", "block_strings")
        diff = {k: (getattr(stored, k), getattr(ours, k)) for k in keys
                if getattr(stored, k) != getattr(ours, k)}
        if diff:
            raise convert.CheckpointMismatchError(
                model_dir, hint="model_dir belongs to another architecture: "
                + ", ".join(f"{k} stored {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
                + ". Use a new --model_dir.")
    if latest is None:
        return None
    stored = saving.checkpoint_group(latest, "model")
    ours = saving.variables_by_path(model)
    missing = sorted(set(ours) - set(stored))
    unexpected = sorted(set(stored) - set(ours))
    mismatched = [(p, tuple(v.shape), stored[p]) for p, v in ours.items()
                  if p in stored and tuple(v.shape) != stored[p]]
    if missing or unexpected or mismatched:
        raise convert.CheckpointMismatchError(
            latest, missing, unexpected, mismatched,
            hint="model_dir holds a checkpoint of another architecture; use a new --model_dir.")
    return latest


def restore_or_initialize(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager,
                          model, init_model_path: Optional[str] = None,
                          directory: Optional[str] = None) -> bool:
    """Resumes from the latest checkpoint, else initialises from `init_model_path`.

    The latest checkpoint is looked up in `directory` (default: the
    manager's), so that multi-worker non-chiefs, which save into a scratch
    directory, resume from the chief's checkpoints.

    Returns True when training resumed. Initialisation loads the EMA weights
    of `init_model_path` (nst or original format) into every student weight,
    frozen layers included (the original skipped those, §5.9).
    """
    latest = (tf.train.latest_checkpoint(directory) if directory is not None
              else manager.latest_checkpoint)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("Resumed from %s", latest)
        return True
    if init_model_path:
        report = saving.load_weights(model, init_model_path, use_ema="auto")
        logging.info("Initialised the student from %s (%d tensors, %d from EMA)",
                     init_model_path, report.num_loaded, report.num_from_ema)
    return False
