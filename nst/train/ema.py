"""Exponential moving average of all model weights (spec §5.7).

    ema = ExponentialMovingAverage(model, decay=0.9999)   # under strategy.scope()
    ...                                   # each step, after optimizer.apply:
    ema.update(optimizer.iterations)      # cross-replica or replica context
    with ema.swapped(model):              # eval / predict on EMA weights
        logits = model(images, training=False)
    tf.train.Checkpoint(ema=ema.shadows_by_path())   # the `ema` group

Unlike Keras' optimizer EMA, the decay ramps up with the step and BN
moving statistics are averaged too, as in the original.
"""

import contextlib
from typing import Dict

import tensorflow as tf


def _path(variable) -> str:
    path = getattr(variable, "path", None)
    return path if path is not None else variable.name.split(":")[0]


def _tf_variable(variable):
    # A Keras variable wraps a tf.Variable (a MirroredVariable under a strategy).
    value = getattr(variable, "value", None)
    return value if isinstance(value, tf.Variable) else variable


def _apply(target, fn, *args):
    """Runs `fn(target, *args)` once per device copy of `target`.

    Distributed targets go through `extended.update`, which hands `fn` the
    copy on each device and unwraps mirrored `args` to the same device, so
    replicas whose values differ (Keras keeps BN statistics per replica)
    are each handled locally. It works in cross-replica context and, via a
    merge call, in replica context.
    """
    if isinstance(target, tf.distribute.DistributedValues):
        return target.distribute_strategy.extended.update(target, fn, args=args)
    return fn(target, *args)


class ExponentialMovingAverage:
    """Shadow copies of a model's weights, averaged after every step.

    One float32 shadow per weight: every `model.weights` entry, i.e. all
    trainable variables and the BN `moving_mean` / `moving_variance`
    (frozen layers included). Optimizer slots and the step are not
    averaged. Shadows start at the weights' values at creation time.

    At update t (the global step after the optimizer's increment, so the
    first update has t = 1):

        decay_t = min(decay, (1 + t) / (10 + t))
        shadow <- shadow - (1 - decay_t) * (shadow - variable)

    Create it in the same `strategy.scope()` as the model: the shadows are
    then mirrored like the weights and updated per device.

    Args:
      model_or_variables: a Keras model (its `weights` are averaged) or a
        list of Keras variables.
      decay: the `moving_average_decay` flag; <= 0 disables the EMA (no
        shadows; `update` is a no-op, asking for shadows raises).

    Raises:
      ValueError: two variables share a path.
    """

    def __init__(self, model_or_variables, decay: float):
        self.decay = float(decay)
        variables = getattr(model_or_variables, "weights", model_or_variables)
        self._variables: Dict[str, object] = {}
        self._shadows: Dict[str, tf.Variable] = {}
        if not self.enabled:
            return
        for variable in variables:
            path = _path(variable)
            if path in self._variables:
                raise ValueError(f"Two weights share the path {path!r}; "
                                 "EMA shadows are keyed by path")
            if not tf.as_dtype(variable.dtype).is_floating:
                continue  # e.g. integer counters: nothing to average
            self._variables[path] = variable
            source = _tf_variable(variable)
            # init_scope: creation is eager even if first reached while tracing.
            with tf.init_scope():
                self._shadows[path] = tf.Variable(
                    lambda source=source: tf.identity(source.read_value()),
                    trainable=False, dtype=source.dtype,
                    name=path.replace("/", "_") + "_ema")

    @property
    def enabled(self) -> bool:
        """False when `decay <= 0`: no shadows are kept."""
        return self.decay > 0

    def _require_enabled(self):
        if not self.enabled:
            raise ValueError(f"EMA is disabled (moving_average_decay={self.decay} <= 0): "
                             "there are no shadow weights; evaluate the raw weights instead")

    def shadows_by_path(self) -> Dict[str, tf.Variable]:
        """{Keras variable path: shadow variable}; checkpoint it as the `ema` group."""
        self._require_enabled()
        return dict(self._shadows)

    def shadow(self, variable_or_path) -> tf.Variable:
        """The shadow of one weight, by variable or path."""
        self._require_enabled()
        path = variable_or_path if isinstance(variable_or_path, str) else _path(variable_or_path)
        if path not in self._shadows:
            raise KeyError(f"No EMA shadow for {path!r}")
        return self._shadows[path]

    def decay_at(self, step):
        """`min(decay, (1 + t) / (10 + t))` at step t: float32 scalar."""
        t = tf.cast(tf.convert_to_tensor(step), tf.float32)
        return tf.minimum(tf.constant(self.decay, tf.float32), (1.0 + t) / (10.0 + t))

    def update(self, step):
        """Moves every shadow towards its weight; call after the optimizer step.

        Args:
          step: the global step after the optimizer's increment (int, tensor
            or variable, e.g. `optimizer.iterations`).
        """
        if not self.enabled:
            return
        decay = self.decay_at(step)

        def move(shadow, variable):
            # TF1's form: shadow -= (1 - decay) * (shadow - variable).
            return shadow.assign_sub((1.0 - decay) * (shadow - tf.cast(variable, shadow.dtype)))

        for path, shadow in self._shadows.items():
            _apply(shadow, move, _tf_variable(self._variables[path]))

    def reset(self):
        """Restarts every shadow at its weight's current value.

        For weights loaded after the EMA was created (e.g. `init_model`):
        the original's shadows start from the initialised values.
        No-op when disabled.
        """
        if not self.enabled:
            return
        for path, shadow in self._shadows.items():
            _apply(shadow, lambda s, v: s.assign(tf.cast(v, s.dtype)),
                   _tf_variable(self._variables[path]))

    def _matched(self, model):
        theirs = {_path(v): v for v in getattr(model, "weights", model)}
        missing = sorted(set(self._shadows) - set(theirs))
        if missing:
            raise ValueError(f"The model lacks {len(missing)} averaged weights, e.g. {missing[:3]}")
        return [(_tf_variable(theirs[p]), shadow) for p, shadow in self._shadows.items()]

    def copy_to(self, model):
        """Assigns the shadows to `model`'s weights of the same paths (for good)."""
        self._require_enabled()
        for variable, shadow in self._matched(model):
            _apply(variable, lambda v, s: v.assign(s), shadow)

    @contextlib.contextmanager
    def swapped(self, model):
        """Context in which `model` holds the EMA weights; the originals come back after.

        Implemented as a swap of values (no extra copy of the weights), so
        do not change the model's variables inside the context (e.g. by a
        `training=True` call): whatever they hold on exit becomes the shadow.
        """
        self._require_enabled()
        pairs = self._matched(model)

        def swap(variable, shadow):
            held = tf.identity(variable.read_value())
            variable.assign(shadow.read_value())
            return shadow.assign(held)

        for variable, shadow in pairs:
            # A swap must pair device copies one to one.
            if (isinstance(variable, tf.distribute.DistributedValues)
                    != isinstance(shadow, tf.distribute.DistributedValues)):
                raise ValueError("swapped() needs the model and the EMA created under the same "
                                 "strategy; use copy_to() for another model")

        def swap_all():
            for variable, shadow in pairs:
                _apply(variable, swap, shadow)

        swap_all()
        try:
            yield model
        finally:
            swap_all()
