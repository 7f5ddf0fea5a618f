"""Image views: the original's crops, resizes, flips and augmentation order.

Every function works on ONE image inside `tf.data.Dataset.map` (graph mode)
and returns `[S, S, 3]` float32 pixels on the 0..255 scale (not clipped: the
legacy bicubic resize may overshoot, as in the original). Normalisation
happens inside the model.

| view | ImageNet style (§7.2, §7.3) | small images, 32x32 (§7.4) |
|---|---|---|
| train | inception crop (fallback: eval crop), legacy bicubic resize, flip, RandAugment | RandAugment, extra Cutout, reflect-pad-4 crop, flip unless SVHN |
| eval / teacher / predict | centre crop with crop padding 32, legacy bicubic resize | the image as is |

Randomness: pass `seed` (int32 `[2]`) for stateless, reproducible draws
(e.g. derived from a global seed and the record index); None uses TF's
stateful RNG.
"""

from typing import Optional

import tensorflow as tf

from nst.augment import randaugment

CROP_PADDING = 32
SMALL_IMAGE_PAD = 4


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """JPEG (or PNG) bytes -> uint8 `[H, W, 3]`."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize_bicubic_legacy(image: tf.Tensor, size: int) -> tf.Tensor:
    """TF1 `resize_bicubic`: no half-pixel centres, float32 output, no clipping.

    `[H, W, 3]` any dtype -> `[size, size, 3]` float32.
    """
    resized = tf.raw_ops.ResizeBicubic(
        images=tf.cast(image, tf.float32)[tf.newaxis], size=[size, size],
        align_corners=False, half_pixel_centers=False)
    return resized[0]


def center_crop_box(height, width, size: int, crop_padding: int = CROP_PADDING):
    """(offset_y, offset_x, side) of the eval crop for output resolution `size`.

    side = int(size / (size + crop_padding) * min(H, W)), computed in float32
    like the original; the offset rounds up.
    """
    fraction = tf.constant(size / (size + crop_padding), tf.float32)
    side = tf.cast(fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    return ((height - side) + 1) // 2, ((width - side) + 1) // 2, side


def eval_view(image: tf.Tensor, size: int, small_image: bool = False,
              crop_padding: int = CROP_PADDING) -> tf.Tensor:
    """Eval / teacher / predict view: uint8 `[H, W, 3]` -> float32 `[size, size, 3]`.

    Small images are used as they are and must already be `size` x `size`.
    """
    if small_image:
        return tf.reshape(tf.cast(image, tf.float32), [size, size, 3])
    shape = tf.shape(image)
    offset_y, offset_x, side = center_crop_box(shape[0], shape[1], size, crop_padding)
    crop = tf.image.crop_to_bounding_box(image, offset_y, offset_x, side, side)
    return resize_bicubic_legacy(crop, size)


def _seeds(seed, count):
    if seed is None:
        return [None] * count
    return list(tf.unstack(tf.random.experimental.stateless_split(seed, count)))


def _uniform(seed, shape=(), minval=0.0, maxval=1.0, dtype=tf.float32):
    if seed is None:
        return tf.random.uniform(shape, minval, maxval, dtype=dtype)
    return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype=dtype)


def inception_crop(image: tf.Tensor, size: int, seed=None) -> tf.Tensor:
    """Random area/aspect crop resized to `size` (the original's training crop).

    Samples a box covering 8%..100% of the area with aspect ratio 3/4..4/3 and
    at least 10% of the image, in 10 attempts. When the sample is the whole
    image (including a failed sampling), falls back to the eval centre crop.

    uint8 `[H, W, 3]` -> float32 `[size, size, 3]`.
    """
    shape = tf.shape(image)
    whole = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
    kwargs = dict(bounding_boxes=whole, min_object_covered=0.1,
                  aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0), area_range=(0.08, 1.0),
                  max_attempts=10, use_image_if_no_bounding_boxes=True)
    if seed is None:
        begin, crop_size, _ = tf.image.sample_distorted_bounding_box(shape, **kwargs)
    else:
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, seed=seed, **kwargs)
    is_whole = tf.reduce_all(tf.equal(shape, crop_size))

    def random_crop():
        crop = tf.slice(image, begin, crop_size)
        return resize_bicubic_legacy(crop, size)

    return tf.cond(is_whole, lambda: eval_view(image, size), random_crop)


def random_flip(image: tf.Tensor, seed=None) -> tf.Tensor:
    """Horizontal flip with probability 1/2."""
    flip = _uniform(seed) < 0.5
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def _to_uint8(image):
    # The original clips, then casts (truncating) before RandAugment.
    return tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)


def train_view(image: tf.Tensor, size: int, *, augment_name: Optional[str] = None,
               randaug_layer: int = 2, randaug_mag: int = 27, cutout_op: bool = True,
               small_image: bool = False, flip: bool = True,
               out_of_range: str = "original", seed=None) -> tf.Tensor:
    """The student's (noised) training view.

    Args:
      image: uint8 `[H, W, 3]` decoded image.
      size: output side S.
      augment_name: None/"" (crop and flip only) or "v1" (RandAugment).
      randaug_layer, randaug_mag: RandAugment N and M.
      cutout_op: include Cutout among the RandAugment ops.
      small_image: the 32x32 recipe of §7.4 instead of the ImageNet one.
      flip: random horizontal flip (the original disables it for SVHN).
      out_of_range: RandAugment's integer-overflow behaviour (see
        `nst.augment.randaugment`).
      seed: optional stateless seed, int32 `[2]`.

    Returns:
      float32 `[size, size, 3]` on the 0..255 scale.
    """
    if augment_name not in (None, "", "v1"):
        raise ValueError(f"Unknown augment_name {augment_name!r}: use None or 'v1'")
    crop_seed, flip_seed, aug_seed, cutout_seed = _seeds(seed, 4)
    if small_image:
        return _small_train_view(image, size, augment_name, randaug_layer, randaug_mag,
                                 cutout_op, flip, out_of_range,
                                 (crop_seed, flip_seed, aug_seed, cutout_seed))
    view = inception_crop(image, size, seed=crop_seed)
    if flip:
        view = random_flip(view, seed=flip_seed)
    if augment_name:
        augmented = randaugment.distort_image_with_randaugment(
            _to_uint8(view), randaug_layer, randaug_mag, translate_const=100,
            cutout_const=40, cutout_op=cutout_op, seed=aug_seed, out_of_range=out_of_range)
        view = tf.cast(augmented, tf.float32)
    return view


def _small_train_view(image, size, augment_name, randaug_layer, randaug_mag, cutout_op,
                      flip, out_of_range, seeds):
    crop_seed, flip_seed, aug_seed, cutout_seed = seeds
    view = tf.reshape(tf.cast(image, tf.float32), [size, size, 3])
    if augment_name:
        augmented = randaugment.distort_image_with_randaugment(
            _to_uint8(view), randaug_layer, randaug_mag, translate_const=size // 8,
            cutout_const=size // 8, cutout_op=cutout_op, seed=aug_seed,
            out_of_range=out_of_range)
        augmented = randaugment.cutout(augmented, size // 4, replace=128, seed=cutout_seed)
        view = tf.cast(augmented, tf.float32)
    view = reflect_pad_crop(view, size, SMALL_IMAGE_PAD, seed=crop_seed)
    if flip:
        view = random_flip(view, seed=flip_seed)
    return view


def reflect_pad_crop(image: tf.Tensor, size: int, pad: int = SMALL_IMAGE_PAD,
                     seed=None) -> tf.Tensor:
    """Reflect-pads `pad` pixels per side, then crops a random `size` square."""
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    if seed is None:
        return tf.image.random_crop(padded, [size, size, 3])
    return tf.image.stateless_random_crop(padded, [size, size, 3], seed=seed)
