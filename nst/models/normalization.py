"""Input normalisation: the one place where pixel statistics live.

Every nst EfficientNet takes images as float pixels in 0..255 and
normalises them as its first layer, in float32 even under a bfloat16 policy
(as the original normalises before its bfloat16 cast matters).
"""

import keras
from keras import ops

# Per-channel RGB mean and standard deviation on the 0..255 scale.
NORMALIZATION = {
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255),
                 (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    "svhn": ((0.4376821 * 255, 0.4437697 * 255, 0.47280442 * 255),
             (0.19803012 * 255, 0.20101562 * 255, 0.19703614 * 255)),
    # The 60,000 Fashion-MNIST train images zero-padded to 32x32, gray in all three
    # channels (dataset_info.json of tools/make_fashion_mnist.py records the same values).
    "fashion_mnist": ((0.219 * 255,) * 3, (0.331811 * 255,) * 3),
}


def normalization_constants(name):
    """Returns (mean, std), each a 3-tuple on the 0..255 scale.

    Raises:
      ValueError: for an unknown name.
    """
    if name not in NORMALIZATION:
        raise ValueError(f"Unknown normalization {name!r}; known: {sorted(NORMALIZATION)} "
                         "or None for inputs that are already normalised")
    return NORMALIZATION[name]


@keras.saving.register_keras_serializable(package="nst")
class Normalize(keras.layers.Layer):
    """Checks the image batch and maps 0..255 pixels to `(x - mean) / std`.

    Input: `[B, H, W, 3]` float pixels in 0..255 (any float or integer dtype).
    Output: `[B, H, W, 3]` float32, normalised per channel.

    Args:
      normalization: key of `NORMALIZATION`, or None to pass values through.
      image_size: expected H = W, or None to accept any spatial size.
    """

    def __init__(self, normalization="imagenet", image_size=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.normalization = normalization
        self.image_size = image_size
        if normalization is None:
            self._mean = self._std = None
        else:
            self._mean, self._std = normalization_constants(normalization)

    def _check_shape(self, shape):
        shape = tuple(shape)
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(
                f"{self.name}: expected images of shape [batch, height, width, 3] "
                f"(RGB, channels last), got shape {shape}")
        if self.image_size is not None:
            for side in shape[1:3]:
                if side is not None and side != self.image_size:
                    raise ValueError(
                        f"{self.name}: this model was built for "
                        f"{self.image_size}x{self.image_size} images, got shape {shape}; "
                        "build it with image_size=None to accept any size")

    def build(self, input_shape):
        self._check_shape(input_shape)

    def call(self, images):
        self._check_shape(images.shape)
        images = ops.cast(images, "float32")
        if self._mean is None:
            return images
        mean = ops.convert_to_tensor(self._mean, "float32")
        std = ops.convert_to_tensor(self._std, "float32")
        return (images - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(normalization=self.normalization, image_size=self.image_size)
        return config
