"""RMSProp with the TF1 `tf.train.RMSPropOptimizer` semantics (spec §5.5).

Keras 3's `RMSprop` also adds epsilon inside the square root, but its
defaults differ (epsilon 1e-7, momentum 0) and, decisively, its
mean-square accumulator starts at 0, so its first update is
lr * g / sqrt(0.1 g^2) = 3.16 lr sign(g) whatever the gradient's scale;
the original's accumulator starts at 1.0, making early updates about lr * g.
"""

import keras
import tensorflow as tf
from keras import ops


def _resource_handle(variable):
    """The resource handle of a Keras or tf variable (the local copy under a strategy)."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle


@keras.saving.register_keras_serializable(package="nst")
class TF1RMSProp(keras.optimizers.Optimizer):
    """RMSProp with momentum exactly as TF1's `RMSPropOptimizer` (non-centered).

    Per variable w with gradient g, learning rate lr:

        ms  <- rho * ms + (1 - rho) * g^2          # ms starts at 1.0
        mom <- momentum * mom + lr * g / sqrt(ms + epsilon)   # mom starts at 0
        w   <- w - mom

    Slots (one per trainable variable, same shape/dtype, checkpointed with
    the optimizer): `mean_squares[i]` ("rms", TF1 `<var>/RMSProp`) and
    `momentums[i]` ("momentum", TF1 `<var>/RMSProp_1`).

    Keras' own regularisation and averaging extras (`weight_decay`,
    `clipnorm`, `clipvalue`, `global_clipnorm`, `use_ema`, ...) are accepted
    as keyword arguments but off by default: the original's L2 is a loss
    term (`objective.l2_regularization`) and its EMA (`ema.py`) also
    averages BN statistics with a step-dependent decay.

    Under `tf.distribute`, Keras sums the replicas' gradients; scale each
    replica's loss by 1 / num_replicas to get the mean.

    Args:
      learning_rate: float or `LearningRateSchedule` (e.g.
        `schedule.NoisyStudentSchedule`), evaluated at `iterations`.
      rho: decay of the mean-square accumulator (0.9).
      momentum: momentum coefficient (0.9).
      epsilon: added to the mean square inside the square root (1e-3).
      fused: apply dense float32 updates with TensorFlow's fused
        `ResourceApplyRMSProp` kernel (the very kernel TF1's optimizer ran:
        one op per variable instead of ~10); False uses Keras ops.
      name: optimizer name (variable name scope).
    """

    def __init__(self, learning_rate, rho=0.9, momentum=0.9, epsilon=1e-3,
                 fused=True, name="TF1RMSProp", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.rho = rho
        self.momentum = momentum
        self.epsilon = epsilon
        self.fused = fused

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        # TF1 initialises the mean square to ones: the first updates are
        # about lr * g, not lr * g / |g|.
        self._mean_squares = self.add_optimizer_variables(var_list, "rms", initializer="ones")
        self._momentums = self.add_optimizer_variables(var_list, "momentum")

    @property
    def mean_squares(self):
        """Mean-square slots, in the order of the variables the optimizer was built with."""
        return list(self._mean_squares)

    @property
    def momentums(self):
        """Momentum slots, in the order of the variables the optimizer was built with."""
        return list(self._momentums)

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        mean_square = self._mean_squares[index]
        mom = self._momentums[index]
        lr = ops.cast(learning_rate, variable.dtype)
        if (self.fused and keras.backend.backend() == "tensorflow"
                and not isinstance(gradient, tf.IndexedSlices)):
            tf.raw_ops.ResourceApplyRMSProp(
                var=_resource_handle(variable), ms=_resource_handle(mean_square),
                mom=_resource_handle(mom), lr=lr,
                rho=tf.constant(self.rho, variable.dtype),
                momentum=tf.constant(self.momentum, variable.dtype),
                epsilon=tf.constant(self.epsilon, variable.dtype),
                grad=tf.cast(gradient, variable.dtype))
            return
        gradient = ops.cast(gradient, variable.dtype)
        # ms + (g^2 - ms)(1 - rho): the TF1 kernel's form of rho*ms + (1-rho)*g^2.
        self.assign(mean_square,
                    mean_square + (ops.square(gradient) - mean_square) * (1.0 - self.rho))
        self.assign(mom, self.momentum * mom
                    + lr * gradient / ops.sqrt(mean_square + self.epsilon))
        self.assign_sub(variable, mom)

    def get_config(self):
        config = super().get_config()
        config.update(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon,
                      fused=self.fused)
        return config
