"""RandAugment (`augment_name=v1`) of the original Noisy Student code, spec §7.5.

Every function works on ONE image: a uint8 tensor `[H, W, 3]`, returned as a
uint8 tensor of the same shape. Everything is plain TensorFlow, so it runs
inside `tf.data.Dataset.map` (graph mode, CPU) with no Python-side randomness:

    ds = ds.map(lambda img: distort_image_with_randaugment(img, 2, 27))

    # small (32 px) images, spec §7.4: RandAugment, then an extra Cutout
    c = small_image_constants(32)
    img = distort_image_with_randaugment(
        img, 2, 5, translate_const=c["translate_const"],
        cutout_const=c["cutout_const"])
    img = cutout(img, c["extra_cutout_pad"])

Policy (as the original)
  * For each of `num_layers` (N) layers, one op is drawn uniformly from
    `op_names(cutout_op)` (16 ops with Cutout, 15 without), independently for
    every image, and applied with probability 1. Only the chosen op runs
    (`tf.switch_case`).
  * Magnitude M gives level L = M / 10; M > 10 is extrapolated, not clipped.
    `op_arguments` lists the resulting argument of every op.
  * Rotate, ShearX/Y and TranslateX/Y get a fresh 50 % sign flip per
    application. Pixels that geometric ops pull from outside the image, and
    Cutout squares, are gray 128.
  * Contrast blends towards the constant gray `min(H·W // 256, 255)`, not the
    mean intensity (the original's bug, kept; tensorflow/tpu #825, #1057).
  * Color, Contrast, Brightness and Sharpness use factor L·1.8 + 0.1, never
    randomised: identity at M = 5, stronger above.

Out-of-range integer arguments (`out_of_range`)
  The original converted some Python ints to uint8 tensors, which wrapped in
  its TF1 + NumPy 1.x stack (spec §7.5, bold entries). Two modes:

  * "original" (default) reproduces those wraps: the Solarize threshold is
    `int(L·256) % 256` (M = 10 inverts every pixel, M = 12 gives 51, M = 27
    gives 179); Posterize with `int(L·4)` > 8 bits keeps 1 bit (each channel
    becomes 0 or 128), because the shift `8 - bits` wraps to 254/255 and TF's
    uint8 shift kernels clamp shifts to 7.
  * "clamp": threshold `min(int(L·256), 256)` (identity from M = 10 on) and
    bits `min(int(L·4), 8)` (identity from M = 20 on).

  Both modes agree everywhere else, in particular: bits = 0 (M < 2.5) keeps
  1 bit, as TF's clamped shift by 8 did in the original (not a wrap, so not
  changed by "clamp"); SolarizeAdd saturates at 255 (the original computes it
  in int64 and clips, no wrap).

Numerical conventions
  * Blend(a, b, f): `a + f·(b − a)` in float32, clipped to [0, 255], truncated
    to uint8; f = 0 gives a and f = 1 gives b exactly.
  * AutoContrast: per channel with lo < hi, `x·s + o` in float32 with
    `s = 255 / (hi − lo)`, `o = −lo·s`, clipped, truncated. Like the original
    float arithmetic, the channel maximum can come out as 254 (for about 16 %
    of (lo, hi) pairs).
  * Color: grayscale exactly as `tf.image.rgb_to_grayscale` on uint8 (luma
    weights 0.2989, 0.587, 0.114 on x/255, then ×255.5, truncated).
  * Sharpness: the 3×3 kernel [[1,1,1],[1,5,1],[1,1,1]]/13 is evaluated
    exactly (integer sum, floor division by 13); the 1-pixel border keeps the
    original pixels. The original convolved with float weights 1/13 and 5/13,
    whose rounding depends on the convolution kernel's summation order: it
    can give one level less where the weighted sum is an exact multiple of 13
    (TF 2.21's CPU depthwise conv does so for ~3 % of those pixels, ~0.4 % of
    all). The exact form is the same on every machine.
  * Geometric ops use `ImageProjectiveTransformV3` with NEAREST (round half
    away from zero) and constant fill 128; output (x, y) samples input:
      Rotate(θ°):     about the centre ((W−1)/2, (H−1)/2):
                      x' = cos θ·(x−cx) − sin θ·(y−cy) + cx,
                      y' = sin θ·(x−cx) + cos θ·(y−cy) + cy
                      (θ > 0 turns the content counter-clockwise on screen;
                      coefficients computed in float64, rounded to float32)
      ShearX(a):      (x + a·y, y)        ShearY(a):     (x, a·x + y)
      TranslateX(t):  (x + t, y)          TranslateY(t): (x, y + t)
    with the origin at the top-left pixel.

Randomness
  `seed=None` uses stateful `tf.random.uniform`. A stateless seed (shape [2]
  int32/int64) makes the result a pure function of (image, seed). Each call
  draws one float32 uniform tensor `[N, 4]`; row n gives layer n's op
  (`floor(u·num_ops)`), sign (negative when u < 0.5) and Cutout centre
  (`floor(u·H)`, `floor(u·W)`). The original drew its random numbers
  differently, so individual outputs are not reproducible against it, only
  their distribution. The original's unused per-op probability is not drawn.
"""

import math
import numbers

import numpy as np
import tensorflow as tf

OP_NAMES = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
    "TranslateX", "TranslateY", "SolarizeAdd", "Cutout")

SIGNED_OPS = frozenset(
    {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})

OUT_OF_RANGE_MODES = ("original", "clamp")

FILL_VALUE = 128

_MAX_LEVEL = 10.0

# Columns of the per-layer random draw.
_U_OP, _U_SIGN, _U_ROW, _U_COL = range(4)


def op_names(cutout_op=True):
    """The op list in the original order; index = value of the uniform choice."""
    return OP_NAMES if cutout_op else OP_NAMES[:-1]


def small_image_constants(image_size):
    """Constants of the small-image training view (spec §7.4) for side S.

    Returns a dict: `translate_const` = `cutout_const` = S // 8 for
    RandAugment, and `extra_cutout_pad` = S // 4, the half-size of the Cutout
    applied after RandAugment.
    """
    return {"translate_const": image_size // 8,
            "cutout_const": image_size // 8,
            "extra_cutout_pad": image_size // 4}


def op_arguments(magnitude, translate_const=100, cutout_const=40,
                 out_of_range="original"):
    """The effective argument of every op at magnitude M (spec §7.5 table).

    Args:
      magnitude: M >= 0, a Python number (`randaug_mag`); above 10 it is
        extrapolated.
      translate_const: pixels of TranslateX/Y at M = 10.
      cutout_const: Cutout half-size at M = 10.
      out_of_range: "original" or "clamp" (module docstring).

    Returns:
      A dict in `OP_NAMES` order, op name -> Python number (None for the ops
      without argument): Rotate degrees, Posterize bits actually kept (1..8),
      Solarize threshold (pixels below it are kept, 0..256), the enhance
      factor of Color/Contrast/Brightness/Sharpness, shear coefficient,
      translate pixels, SolarizeAdd addition, Cutout half-size. The signed
      ops list the magnitude; the sign is drawn per application.
    """
    _check_mode(out_of_range)
    m = float(magnitude)
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"magnitude must be a finite number >= 0, got {magnitude}")
    level = m / _MAX_LEVEL
    enhance = level * 1.8 + 0.1
    bits = int(level * 4)
    threshold = int(level * 256)
    if out_of_range == "original":
        shift = (8 - bits) % 256  # the uint8 conversion of a negative shift
        threshold %= 256
    else:
        shift = 8 - min(bits, 8)
        threshold = min(threshold, 256)
    # TF's uint8 shift kernels clamp the count to 7 (also bits = 0, shift 8).
    shift = min(shift, 7)
    return {
        "AutoContrast": None,
        "Equalize": None,
        "Invert": None,
        "Rotate": level * 30.0,
        "Posterize": 8 - shift,
        "Solarize": threshold,
        "Color": enhance,
        "Contrast": enhance,
        "Brightness": enhance,
        "Sharpness": enhance,
        "ShearX": level * 0.3,
        "ShearY": level * 0.3,
        "TranslateX": level * float(translate_const),
        "TranslateY": level * float(translate_const),
        "SolarizeAdd": int(level * 110),
        "Cutout": int(level * cutout_const),
    }


def distort_image_with_randaugment(image, num_layers, magnitude,
                                   translate_const=100, cutout_const=40,
                                   cutout_op=True, seed=None,
                                   out_of_range="original",
                                   return_op_indices=False):
    """Applies `num_layers` randomly chosen ops to one image.

    Args:
      image: uint8 `[H, W, 3]`.
      num_layers: N (`randaug_layer`), a Python int >= 0.
      magnitude: M (`randaug_mag`), a Python number >= 0.
      translate_const, cutout_const: 100 and 40 for ImageNet-style views,
        S // 8 for small images (`small_image_constants`).
      cutout_op: include Cutout in the op list (16 ops) or not (15).
      seed: None (stateful randomness) or a stateless seed, shape [2] int.
      out_of_range: "original" or "clamp" (module docstring).
      return_op_indices: also return the chosen op per layer.

    Returns:
      uint8 `[H, W, 3]`; with `return_op_indices`, also an int32 `[N]` tensor
      of indices into `op_names(cutout_op)`, in application order.
    """
    image = _as_image(image)
    if int(num_layers) != num_layers or num_layers < 0:
        raise ValueError(f"num_layers must be an int >= 0, got {num_layers}")
    num_layers = int(num_layers)
    args = op_arguments(magnitude, translate_const, cutout_const, out_of_range)
    names = op_names(cutout_op)
    if num_layers == 0:
        no_ops = tf.zeros([0], tf.int32)
        return (image, no_ops) if return_op_indices else image

    u = _uniform([num_layers, 4], seed)
    # u <= 1 - 2^-23, so u * n < n in float32 for any n < 2^23 and the cast
    # (truncation) is floor: no clamping needed.
    op_indices = tf.cast(u[:, _U_OP] * len(names), tf.int32)
    static_shape = image.shape
    for layer in range(num_layers):
        u_layer = u[layer]
        branches = [_branch(name, image, args[name], u_layer) for name in names]
        image = tf.switch_case(op_indices[layer], branches)
        image.set_shape(static_shape)
    return (image, op_indices) if return_op_indices else image


def _branch(name, image, arg, u_layer):
    """The op as a `switch_case` branch; `u_layer` is the layer's float32 [4]."""
    # Randomness derived here only costs ops when this branch runs.
    def run():
        if name in SIGNED_OPS:
            negative = u_layer[_U_SIGN] < 0.5
            affine = _SIGNED_AFFINES[name]
            transform = tf.where(negative, _affine_tensor(affine(image, -arg)),
                                 _affine_tensor(affine(image, arg)))
            return _project(image, transform, FILL_VALUE)
        if name == "Cutout":
            center = _random_center(image, u_layer[_U_ROW:])
            return _cutout_at(image, arg, center, FILL_VALUE)
        if arg is None:
            return _OPS[name](image)
        return _OPS[name](image, arg)
    return run


# ----------------------------------------------------------------------------
# Pixel ops. All take and return uint8 [H, W, 3].

def autocontrast(image):
    """Per channel with min < max: maps min to 0 and max to 255 (see module doc)."""
    image = _as_image(image)
    x = tf.cast(image, tf.float32)
    lo = tf.reduce_min(x, axis=[0, 1])
    hi = tf.reduce_max(x, axis=[0, 1])
    stretch = hi > lo
    scale = 255.0 / tf.where(stretch, hi - lo, 1.0)
    # x·s − lo·s equals x·s + o bit for bit; it is >= 0 because rounding is
    # monotone (x >= lo) and < 256 (at most 255 plus rounding), so the
    # truncating cast needs no clip.
    return tf.where(stretch, tf.cast(x * scale - lo * scale, tf.uint8), image)


def equalize(image):
    """PIL-style histogram equalisation of each channel.

    With n = H·W and c the count of the channel's largest value,
    step = (n − c) // 255. If step = 0 the channel is unchanged; otherwise
    value v becomes min((count(x < v) + step // 2) // step, 255), i.e. the
    rounded cumulative histogram shifted right by one bin.
    """
    image = _as_image(image)
    pixels = tf.reshape(tf.cast(image, tf.int32), [-1, 3])
    # One bincount for all three channels: channel c owns bins [256c, 256c+256).
    binned = pixels + tf.constant([0, 256, 512])
    hist = tf.reshape(
        tf.math.bincount(binned, minlength=768, maxlength=768), [3, 256])
    num_pixels = tf.shape(pixels)[0]
    # The last non-zero histogram bin is the channel maximum's bin.
    top_count = tf.gather(hist, tf.reduce_max(pixels, axis=0), batch_dims=1)
    step = (num_pixels - top_count) // 255
    safe_step = tf.maximum(step, 1)[:, None]
    below = tf.cumsum(hist, axis=1, exclusive=True)  # #pixels < v
    lut = tf.minimum((below + safe_step // 2) // safe_step, 255)
    lut = tf.where((step == 0)[:, None], tf.range(256)[None, :], lut)
    out = tf.gather(tf.reshape(lut, [-1]), binned)
    return tf.reshape(tf.cast(out, tf.uint8), tf.shape(image))


def invert(image):
    """255 − x."""
    image = _as_image(image)
    return tf.constant(255, tf.uint8) - image


def posterize(image, bits):
    """Keeps the top `bits` (0..8, int or int32 scalar) bits of every value."""
    image = _as_image(image)
    if _is_number(bits):
        if int(bits) != bits or not 0 <= bits <= 8:
            raise ValueError(f"bits must be an int in [0, 8], got {bits}")
        mask = (0xFF << (8 - int(bits))) & 0xFF
        return tf.bitwise.bitwise_and(image, tf.constant(mask, tf.uint8))
    shift = 8 - tf.cast(bits, tf.int32)
    mask = tf.bitwise.bitwise_and(tf.bitwise.left_shift(255, shift), 0xFF)
    return tf.bitwise.bitwise_and(image, tf.cast(mask, tf.uint8))


def solarize(image, threshold=128):
    """Values below `threshold` (int, 0..256) are kept, the others inverted."""
    image = _as_image(image)
    if _is_number(threshold):
        v = np.arange(256)
        return _map_values(image, np.where(v < threshold, v, 255 - v))
    keep = tf.cast(image, tf.int32) < tf.cast(threshold, tf.int32)
    return tf.where(keep, image, tf.constant(255, tf.uint8) - image)


def solarize_add(image, addition=0, threshold=128):
    """Values below `threshold` get `clip(x + addition, 0, 255)`."""
    image = _as_image(image)
    if _is_number(addition) and _is_number(threshold):
        v = np.arange(256)
        return _map_values(
            image, np.where(v < threshold, np.clip(v + int(addition), 0, 255), v))
    x = tf.cast(image, tf.int32)
    added = tf.cast(
        tf.clip_by_value(x + tf.cast(addition, tf.int32), 0, 255), tf.uint8)
    return tf.where(x < tf.cast(threshold, tf.int32), added, image)


def blend(image1, image2, factor):
    """image1 at factor 0, image2 at factor 1, extrapolated beyond (module doc).

    `image1` may be anything broadcastable to `image2` (a scalar, `[H, W, 1]`).
    """
    image2 = _as_image(image2)
    if _is_number(factor):
        if factor == 1.0:
            return image2
        if factor == 0.0:
            return tf.broadcast_to(tf.cast(image1, tf.uint8), tf.shape(image2))
    return _blend_float(tf.cast(image1, tf.float32), tf.cast(image2, tf.float32),
                        factor)


def _blend_float(a, b, factor):
    """`blend` on float32 pixel values a, b (integers in 0..255) -> uint8."""
    out = a + tf.cast(factor, tf.float32) * (b - a)
    # Between a and b for 0 <= factor <= 1, so only extrapolation can leave
    # [0, 255].
    if not (_is_number(factor) and 0.0 <= factor <= 1.0):
        out = tf.clip_by_value(out, 0.0, 255.0)
    return tf.cast(out, tf.uint8)


def _blend_values(gray, factor):
    """`blend(gray, v, factor)` for every value v in 0..255, as NumPy uint8."""
    # The same float32 operations as `_blend_float`, so the table is exact.
    a = np.float32(gray)
    b = np.arange(256, dtype=np.float32)
    out = a + np.float32(factor) * (b - a)
    return np.clip(out, 0, 255).astype(np.uint8)


def grayscale(image):
    """uint8 `[H, W, 1]`, bit-identical to `tf.image.rgb_to_grayscale`."""
    image = _as_image(image)
    return tf.cast(_grayscale_float(tf.cast(image, tf.float32)), tf.uint8)


def _grayscale_float(x):
    """Grayscale of float32 pixels x, already truncated to integers."""
    # tf.image's uint8 path: x/255, luma weights, ×255.5, truncated. A 3-term
    # reduce_sum instead of its tensordot gives the same float32 values (a
    # test checks all 2^24 colours) without a matmul per image.
    luma = tf.reduce_sum(
        x * (1.0 / 255.0) * tf.constant([0.2989, 0.5870, 0.1140]),
        axis=-1, keepdims=True)
    return tf.floor(luma * 255.5)


def color(image, factor):
    """Blend from the grayscale image (factor 0) to the image (factor 1)."""
    image = _as_image(image)
    if _is_number(factor) and factor == 1.0:
        return image
    x = tf.cast(image, tf.float32)
    return _blend_float(_grayscale_float(x), x, factor)


def contrast(image, factor):
    """Blend from gray `min(H·W // 256, 255)` to the image (original's bug)."""
    image = _as_image(image)
    height, width = image.shape[0], image.shape[1]
    if _is_number(factor) and height is not None and width is not None:
        return _map_values(
            image, _blend_values(min(height * width // 256, 255), factor))
    shape = tf.shape(image)
    gray = tf.minimum(shape[0] * shape[1] // 256, 255)
    return blend(gray, image, factor)


def brightness(image, factor):
    """Blend from black to the image."""
    image = _as_image(image)
    if _is_number(factor):
        return _map_values(image, _blend_values(0, factor))
    return blend(0, image, factor)


def sharpness(image, factor):
    """Blend from a 3×3-smoothed image to the image; needs H, W >= 3."""
    image = _as_image(image)
    if _is_number(factor) and factor == 1.0:
        return image
    x = tf.cast(image, tf.float32)
    # Exact sum of the kernel [[1,1,1],[1,5,1],[1,1,1]] (integers < 2^24): a
    # separable 3x3 box sum plus 4 × the centre. floor(total / 13) is then the
    # exact integer quotient (module doc).
    rows = x[:-2] + x[1:-1] + x[2:]
    box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    centre = x[1:-1, 1:-1]
    smooth = tf.floor((box + 4.0 * centre) / 13.0)
    # The degenerate image is x with the interior replaced by `smooth`; its
    # 1-pixel border equals x, so blending leaves the border unchanged.
    degenerate = x + tf.pad(smooth - centre, [[1, 1], [1, 1], [0, 0]])
    return _blend_float(degenerate, x, factor)


def _map_values(image, values):
    """Applies a table of 256 uint8 values (NumPy) to every pixel value.

    Pointwise ops with Python arguments use this: one gather costs less than
    the chain of elementwise ops it replaces, whose per-op overhead dominates
    on small images inside `Dataset.map`.
    """
    table = tf.constant(np.asarray(values).astype(np.uint8))
    return tf.gather(table, tf.cast(image, tf.int32))


# ----------------------------------------------------------------------------
# Geometric ops: NEAREST, fill `replace` (module doc for the conventions).

def rotate(image, degrees, replace=FILL_VALUE):
    """Rotation by `degrees` (float or float32 scalar) about the image centre."""
    image = _as_image(image)
    return _project(image, _affine_tensor(_rotate_affine(image, degrees)),
                    replace)


def shear_x(image, level, replace=FILL_VALUE):
    """Output (x, y) samples input (x + level·y, y)."""
    image = _as_image(image)
    return _project(image, _affine_tensor(_shear_x_affine(image, level)),
                    replace)


def shear_y(image, level, replace=FILL_VALUE):
    """Output (x, y) samples input (x, level·x + y)."""
    image = _as_image(image)
    return _project(image, _affine_tensor(_shear_y_affine(image, level)),
                    replace)


def translate_x(image, pixels, replace=FILL_VALUE):
    """Output (x, y) samples input (x + pixels, y): content moves left."""
    image = _as_image(image)
    return _project(image, _affine_tensor(_translate_x_affine(image, pixels)),
                    replace)


def translate_y(image, pixels, replace=FILL_VALUE):
    """Output (x, y) samples input (x, y + pixels): content moves up."""
    image = _as_image(image)
    return _project(image, _affine_tensor(_translate_y_affine(image, pixels)),
                    replace)


# Each returns the 6 affine coefficients [a0, a1, a2, b0, b1, b2]: output
# (x, y) samples input (a0·x + a1·y + a2, b0·x + b1·y + b2).

def _rotate_affine(image, degrees):
    height, width = image.shape[0], image.shape[1]
    if _is_number(degrees) and height is not None and width is not None:
        # Known at trace time: a constant, computed in double precision.
        radians = degrees * math.pi / 180.0
        cos, sin = math.cos(radians), math.sin(radians)
        h1, w1 = height - 1.0, width - 1.0
    else:
        # float64 like the constant path, so both give the same float32
        # coefficients; `_affine_tensor` rounds them.
        radians = tf.cast(degrees, tf.float64) * (math.pi / 180.0)
        cos, sin = tf.cos(radians), tf.sin(radians)
        shape = tf.cast(tf.shape(image), tf.float64)
        h1, w1 = shape[0] - 1.0, shape[1] - 1.0
    # Offsets that keep the centre ((W-1)/2, (H-1)/2) fixed.
    x_offset = (w1 - (cos * w1 - sin * h1)) / 2.0
    y_offset = (h1 - (sin * w1 + cos * h1)) / 2.0
    return [cos, -sin, x_offset, sin, cos, y_offset]


def _shear_x_affine(image, level):
    return [1.0, level, 0.0, 0.0, 1.0, 0.0]


def _shear_y_affine(image, level):
    return [1.0, 0.0, 0.0, level, 1.0, 0.0]


def _translate_x_affine(image, pixels):
    return [1.0, 0.0, pixels, 0.0, 1.0, 0.0]


def _translate_y_affine(image, pixels):
    return [1.0, 0.0, 0.0, 0.0, 1.0, pixels]


_SIGNED_AFFINES = {
    "Rotate": _rotate_affine,
    "ShearX": _shear_x_affine,
    "ShearY": _shear_y_affine,
    "TranslateX": _translate_x_affine,
    "TranslateY": _translate_y_affine,
}


def _affine_tensor(affine):
    """float32 [8] projective transform from 6 affine coefficients."""
    if all(_is_number(a) for a in affine):
        return tf.constant(list(affine) + [0.0, 0.0], tf.float32)
    return tf.stack([tf.cast(a, tf.float32) for a in affine] + [0.0, 0.0])


def _project(image, transform, replace):
    height, width = image.shape[0], image.shape[1]
    if height is not None and width is not None:
        output_shape = tf.constant([height, width], tf.int32)
    else:
        output_shape = tf.shape(image)[:2]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None],
        output_shape=output_shape, fill_value=tf.cast(replace, tf.float32),
        interpolation="NEAREST", fill_mode="CONSTANT")
    return out[0]


# ----------------------------------------------------------------------------
# Cutout

def cutout(image, pad_size, replace=FILL_VALUE, seed=None, center=None):
    """Sets a square of side up to 2·pad_size to `replace`.

    The square covers rows [cy − p, cy + p) and columns [cx − p, cx + p),
    clipped to the image, with the centre (cy, cx) uniform over the pixels
    unless `center` is given.

    Args:
      image: uint8 `[H, W, 3]`.
      pad_size: p, int or int32 scalar (0 leaves the image unchanged).
      replace: fill value, int scalar or 3 per-channel values.
      seed: None (stateful) or a stateless seed, shape [2] int.
      center: optional int `[2]` (row, column) instead of a random centre.
    """
    image = _as_image(image)
    if center is None:
        center = _random_center(image, _uniform([2], seed))
    return _cutout_at(image, pad_size, tf.cast(center, tf.int32), replace)


def _random_center(image, u):
    """int32 [2] (row, col) from float32 uniforms u [2]: floor(u · (H, W))."""
    height, width = image.shape[0], image.shape[1]
    if height is not None and width is not None:
        height_width = tf.constant([height, width], tf.float32)
    else:
        height_width = tf.cast(tf.shape(image)[:2], tf.float32)
    # As for the op index: u · H < H in float32, and the cast floors.
    return tf.cast(u * height_width, tf.int32)


def _cutout_at(image, pad_size, center, replace):
    height, width = image.shape[0], image.shape[1]
    if height is not None and width is not None:
        rows = tf.constant(np.arange(height, dtype=np.int32)[:, None, None])
        cols = tf.constant(np.arange(width, dtype=np.int32)[None, :, None])
    else:
        shape = tf.shape(image)
        rows = tf.range(shape[0])[:, None, None]
        cols = tf.range(shape[1])[None, :, None]
    p = tf.cast(pad_size, tf.int32)
    first, stop = center - p, center + p
    inside = (((rows >= first[0]) & (rows < stop[0]))
              & ((cols >= first[1]) & (cols < stop[1])))
    return tf.where(inside, tf.cast(replace, tf.uint8), image)


# ----------------------------------------------------------------------------

_OPS = {
    "AutoContrast": autocontrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "Solarize": solarize,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "SolarizeAdd": solarize_add,
    "Cutout": cutout,
}


def _as_image(image):
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype.name}")
    if image.shape.rank is not None and (
            image.shape.rank != 3 or image.shape[-1] not in (None, 3)):
        raise ValueError(f"expected an image [H, W, 3], got {image.shape}")
    return image


def _uniform(shape, seed):
    if seed is None:
        return tf.random.uniform(shape, dtype=tf.float32)
    return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_mode(out_of_range):
    if out_of_range not in OUT_OF_RANGE_MODES:
        raise ValueError(
            f"out_of_range must be one of {OUT_OF_RANGE_MODES}, "
            f"got {out_of_range!r}")
