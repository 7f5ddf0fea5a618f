"""The EfficientNet model: a functional Keras model built from the table.

    model, resolution = build_model("efficientnet-b0", num_classes=10)
    logits = model(images, training=False)   # clean: teacher, eval, predict
    logits = model(images, training=True)    # noised student: stochastic
                                             # depth, dropout, BN batch stats

`images` are `[B, S, S, 3]` float pixels in 0..255; logits are `[B, K]`
float32 (also under a bfloat16 policy).
"""

from typing import Optional, Tuple, Union

import keras

from nst.models import config as config_lib
from nst.models import layers
from nst.models.normalization import Normalize

_DEFAULT = object()


@keras.saving.register_keras_serializable(package="nst")
class EfficientNet(keras.Model):
    """EfficientNet as built by the original code (§6 of the spec).

    Args:
      config: an `EfficientNetConfig` (or its dict form).
      image_size: input side in pixels; defaults to `config.resolution`.
        None builds a model that accepts any spatial size.
      name: Keras model name; defaults to the config name.
      bn_group_size: g, the number of consecutive replicas that share batch-norm
        training statistics (§5.8, `group_norm.group_size`); 1 (default) =
        per-replica plain Keras batch norm. Variable names do not depend on it.

    Attributes:
      config: the `EfficientNetConfig`.
      block_layers: the MBConv blocks in global order.
    """

    def __init__(self, config, image_size=_DEFAULT, name=None, bn_group_size=1, **kwargs):
        if isinstance(config, dict):
            config = config_lib.EfficientNetConfig.from_dict(config)
        if image_size is _DEFAULT:
            image_size = config.resolution
        inputs = keras.Input((image_size, image_size, 3), name="images")
        x = Normalize(config.normalization, image_size=image_size, name="normalize")(inputs)
        x = layers.Stem(config.stem_filters, bn_group_size=bn_group_size, name="stem")(x)
        for block_args in config.blocks():
            x = layers.MBConvBlock.from_args(block_args, bn_group_size=bn_group_size)(x)
        x = layers.Head(config.head_filters, bn_group_size=bn_group_size, name="head")(x)
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if config.dropout_rate > 0:
            x = keras.layers.Dropout(config.dropout_rate, name="top_dropout")(x)
        # Logits leave the model in float32 under mixed precision, as the
        # original casts them before the softmax and loss.
        logits = keras.layers.Dense(
            config.num_classes, kernel_initializer=layers.dense_kernel_initializer(),
            dtype=_float32_output_policy(), name="logits")(x)
        super().__init__(inputs=inputs, outputs=logits,
                         name=name or config.name, **kwargs)
        self.config = config
        self.image_size = image_size
        self.bn_group_size = bn_group_size

    @property
    def block_layers(self):
        return [l for l in self.layers if isinstance(l, layers.MBConvBlock)]

    def freeze_layers(self, num_blocks: int):
        """Freezes the stem and the first `num_blocks` blocks (`fix_layer_num`).

        Frozen parts stop training and run in inference mode (moving BN
        statistics, no stochastic depth). `num_blocks=0` freezes only the stem;
        a negative value freezes nothing. The head always trains.
        """
        blocks = self.block_layers
        if num_blocks > len(blocks):
            raise ValueError(f"fix_layer_num={num_blocks} exceeds the {len(blocks)} "
                             f"blocks of {self.config.name}")
        if num_blocks < 0:
            return
        self.get_layer("stem").trainable = False
        for block in blocks[:num_blocks]:
            block.trainable = False

    def get_config(self):
        return {"config": self.config.to_dict(), "image_size": self.image_size,
                "name": self.name, "bn_group_size": self.bn_group_size}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def _float32_output_policy():
    policy = keras.config.dtype_policy()
    if policy.compute_dtype == "float32":
        return None
    return "float32"


def build_model(model: Union[str, config_lib.EfficientNetConfig],
                num_classes: Optional[int] = None,
                *,
                image_size=_DEFAULT,
                width: Optional[float] = None,
                depth: Optional[float] = None,
                resolution: Optional[int] = None,
                dropout_rate: Optional[float] = None,
                stochastic_depth_rate: Optional[float] = None,
                small_image: bool = False,
                normalization: Optional[str] = "imagenet",
                name: Optional[str] = None,
                bn_group_size: int = 1) -> Tuple[EfficientNet, int]:
    """Builds an EfficientNet by name (or from a config).

    Args:
      model: a name from `config.model_names()` or an `EfficientNetConfig`
        (then the override arguments must be left unset).
      num_classes: K; default 1000 (or the config's own count).
      image_size: input side; default = the resolution; None = any size.
      width, depth, resolution, dropout_rate, stochastic_depth_rate,
        small_image, normalization: see `config.get_config`.
      name: Keras model name.
      bn_group_size: replicas sharing batch-norm statistics; see `EfficientNet`.

    Returns:
      (model, resolution): the Keras model and the resolution S it is meant
      to see (the native one unless overridden; 32 for `small_image`).
    """
    if isinstance(model, config_lib.EfficientNetConfig):
        overrides = dict(width=width, depth=depth, resolution=resolution,
                         dropout_rate=dropout_rate,
                         stochastic_depth_rate=stochastic_depth_rate)
        if any(v is not None for v in overrides.values()) or small_image:
            raise ValueError("Pass overrides to get_config, not with a ready config")
        if num_classes is not None and num_classes != model.num_classes:
            raise ValueError(f"num_classes={num_classes} but the config has "
                             f"{model.num_classes} classes")
        config = model
    else:
        config = config_lib.get_config(
            model, num_classes=1000 if num_classes is None else num_classes, width=width, depth=depth,
            resolution=resolution, dropout_rate=dropout_rate,
            stochastic_depth_rate=stochastic_depth_rate, small_image=small_image,
            normalization=normalization)
    net = EfficientNet(config, image_size=image_size, name=name, bn_group_size=bn_group_size)
    return net, config.resolution
