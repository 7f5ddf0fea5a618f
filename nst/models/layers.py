"""EfficientNet building blocks as Keras 3 layers.

Layer and sub-layer names follow the roles of the original scopes
(`stem`, `blocks_i`, `head`) so that `names.py` can map every variable to
the original checkpoint names and to `keras.applications` names by rule.

Noise (stochastic depth here, head dropout in the model) is active only when
the layer is called with `training=True`. A block or stem whose `trainable`
is False always runs in inference mode: its batch norm uses moving statistics
and its stochastic depth is off (the original's `fix_layer_num`).
"""

import keras
from keras import ops

from nst.models import config as config_lib
from nst.models.group_norm import GroupBatchNormalization


def conv_kernel_initializer():
    """normal(0, sqrt(2 / fan_out)), fan_out = kh * kw * out_channels.

    For a depthwise kernel `[k, k, C, 1]` Keras counts fan_out = k * k, the
    same as the original.
    """
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal")


def dense_kernel_initializer():
    """uniform(-1/sqrt(K), 1/sqrt(K)) with K the number of outputs."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_out", distribution="uniform")


def batch_norm(name, group_size=1):
    """Batch norm with momentum 0.99 and epsilon 1e-3 (§5.8).

    `group_size` 1 gives plain `keras.layers.BatchNormalization`
    (per-replica statistics); g > 1 gives a `GroupBatchNormalization` that
    shares training statistics among g consecutive replicas. Both have the
    same variables and names.
    """
    kwargs = dict(momentum=config_lib.BATCH_NORM_MOMENTUM,
                  epsilon=config_lib.BATCH_NORM_EPSILON, name=name)
    if group_size == 1:
        return keras.layers.BatchNormalization(**kwargs)
    return GroupBatchNormalization(group_size=group_size, **kwargs)


def conv(filters, kernel_size, name, strides=1, use_bias=False):
    """A 'SAME'-padded convolution with the original's initialiser."""
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=use_bias,
        kernel_initializer=conv_kernel_initializer(), name=name)


def _inference_if_frozen(layer, training):
    return False if not layer.trainable else training


@keras.saving.register_keras_serializable(package="nst")
class StochasticDepth(keras.layers.Layer):
    """Drops a residual branch per sample.

    In training, sample b keeps its branch with probability `keep = 1 - rate`:
    mask_b = floor(keep + U[0, 1)), output = x / keep * mask_b.
    In inference, or with rate 0, the input passes unchanged.

    Input and output: `[B, H, W, C]`.
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"stochastic depth rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None

    def call(self, x, training=None):
        if not training or self.rate == 0:
            return x
        keep = 1.0 - self.rate
        batch = ops.shape(x)[0]
        noise = keras.random.uniform((batch, 1, 1, 1), seed=self.seed_generator, dtype=x.dtype)
        mask = ops.floor(keep + noise)
        return x / ops.cast(keep, x.dtype) * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="nst")
class Stem(keras.layers.Layer):
    """3x3 stride-2 conv -> BN -> swish.

    Input `[B, S, S, 3]` normalised pixels; output `[B, ceil(S/2), ceil(S/2), filters]`.
    `bn_group_size`: replicas sharing BN statistics (`batch_norm`).
    """

    def __init__(self, filters, bn_group_size=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.bn_group_size = bn_group_size
        self.conv = conv(filters, 3, strides=2, name="conv")
        self.bn = batch_norm("bn", bn_group_size)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, x, training=None):
        training = _inference_if_frozen(self, training)
        return ops.silu(self.bn(self.conv(x), training=training))

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, bn_group_size=self.bn_group_size)
        return config


@keras.saving.register_keras_serializable(package="nst")
class MBConvBlock(keras.layers.Layer):
    """Mobile inverted bottleneck with squeeze-excitation (§6.4 of the spec).

    expand 1x1 (if expand_ratio != 1) -> BN -> swish -> depthwise kxk ->
    BN -> swish -> SE -> project 1x1 -> BN -> [stochastic depth + input].

    Input `[B, H, W, input_filters]`; output
    `[B, ceil(H/stride), ceil(W/stride), output_filters]`.
    `bn_group_size`: replicas sharing BN statistics (`batch_norm`).
    """

    def __init__(self, input_filters, output_filters, expand_ratio, kernel_size,
                 strides, se_filters, id_skip=True, drop_rate=0.0, bn_group_size=1,
                 **kwargs):
        super().__init__(**kwargs)
        self.bn_group_size = bn_group_size
        self.input_filters = input_filters
        self.output_filters = output_filters
        self.expand_ratio = expand_ratio
        self.kernel_size = kernel_size
        self.strides = tuple(strides)
        self.se_filters = se_filters
        self.id_skip = id_skip
        self.drop_rate = drop_rate
        mid = input_filters * expand_ratio
        self.has_residual = (id_skip and self.strides == (1, 1)
                             and input_filters == output_filters)

        if expand_ratio != 1:
            self.expand_conv = conv(mid, 1, name="expand_conv")
            self.expand_bn = batch_norm("expand_bn", bn_group_size)
        self.depthwise_conv = keras.layers.DepthwiseConv2D(
            kernel_size, strides=self.strides, padding="same", use_bias=False,
            depthwise_initializer=conv_kernel_initializer(), name="depthwise_conv")
        self.depthwise_bn = batch_norm("depthwise_bn", bn_group_size)
        if se_filters:
            self.se_reduce = conv(se_filters, 1, use_bias=True, name="se_reduce")
            self.se_expand = conv(mid, 1, use_bias=True, name="se_expand")
        self.project_conv = conv(output_filters, 1, name="project_conv")
        self.project_bn = batch_norm("project_bn", bn_group_size)
        if self.has_residual and drop_rate > 0:
            self.stochastic_depth = StochasticDepth(drop_rate, name="stochastic_depth")
        else:
            self.stochastic_depth = None

    @classmethod
    def from_args(cls, args: config_lib.BlockArgs, bn_group_size=1):
        return cls(args.input_filters, args.output_filters, args.expand_ratio,
                   args.kernel_size, args.strides, args.se_filters, args.id_skip,
                   args.drop_rate, bn_group_size=bn_group_size, name=f"blocks_{args.index}")

    def build(self, input_shape):
        shape = tuple(input_shape)
        mid = self.input_filters * self.expand_ratio
        if self.expand_ratio != 1:
            self.expand_conv.build(shape)
            shape = shape[:-1] + (mid,)
            self.expand_bn.build(shape)
        self.depthwise_conv.build(shape)
        shape = self.depthwise_conv.compute_output_shape(shape)
        self.depthwise_bn.build(shape)
        if self.se_filters:
            self.se_reduce.build((shape[0], 1, 1, mid))
            self.se_expand.build((shape[0], 1, 1, self.se_filters))
        self.project_conv.build(shape)
        self.project_bn.build(shape[:-1] + (self.output_filters,))

    def call(self, inputs, training=None):
        training = _inference_if_frozen(self, training)
        x = inputs
        if self.expand_ratio != 1:
            x = ops.silu(self.expand_bn(self.expand_conv(x), training=training))
        x = ops.silu(self.depthwise_bn(self.depthwise_conv(x), training=training))
        if self.se_filters:
            squeezed = ops.mean(x, axis=(1, 2), keepdims=True)
            squeezed = self.se_expand(ops.silu(self.se_reduce(squeezed)))
            x = ops.sigmoid(squeezed) * x
        x = self.project_bn(self.project_conv(x), training=training)
        if self.has_residual:
            if self.stochastic_depth is not None:
                x = self.stochastic_depth(x, training=training)
            x = x + inputs
        return x

    def compute_output_shape(self, input_shape):
        shape = self.depthwise_conv.compute_output_shape(
            tuple(input_shape[:-1]) + (self.input_filters * self.expand_ratio,))
        return shape[:-1] + (self.output_filters,)

    def get_config(self):
        config = super().get_config()
        config.update(input_filters=self.input_filters, output_filters=self.output_filters,
                      expand_ratio=self.expand_ratio, kernel_size=self.kernel_size,
                      strides=list(self.strides), se_filters=self.se_filters,
                      id_skip=self.id_skip, drop_rate=self.drop_rate,
                      bn_group_size=self.bn_group_size)
        return config


@keras.saving.register_keras_serializable(package="nst")
class Head(keras.layers.Layer):
    """1x1 conv -> BN -> swish, before pooling.

    Input `[B, H, W, C_last]`; output `[B, H, W, filters]`.
    `bn_group_size`: replicas sharing BN statistics (`batch_norm`).
    """

    def __init__(self, filters, bn_group_size=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.bn_group_size = bn_group_size
        self.conv = conv(filters, 1, name="conv")
        self.bn = batch_norm("bn", bn_group_size)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(tuple(input_shape[:-1]) + (self.filters,))

    def call(self, x, training=None):
        return ops.silu(self.bn(self.conv(x), training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, bn_group_size=self.bn_group_size)
        return config
