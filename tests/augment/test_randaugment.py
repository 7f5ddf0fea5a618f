"""RandAugment against §7.5 / §7.4 of the spec, op by op, with NumPy references.

Every op is compared with an independent NumPy implementation written here
from the spec's wording (PIL's algorithm for Equalize), on small random images
of two sizes and at several magnitudes. The expected argument table is typed
in from §7.5, never derived from the library.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from nst.augment import randaugment as ra

SHAPES = [(8, 9), (32, 32)]
MAGNITUDES = [2, 5, 10, 12, 27]
MODES = ["original", "clamp"]

F32 = np.float32


def _constants(shape):
    """(translate_const, cutout_const): ImageNet-style for 8x9, §7.4 for 32 px."""
    return (100, 40) if shape == (8, 9) else (4, 4)


def _images(shape, seed=0):
    """Random uint8 [H, W, 3] images exercising the ops' special cases."""
    rng = np.random.default_rng(seed + 1000 * shape[0] + shape[1])
    h, w = shape
    full = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    lo = rng.integers(0, 100, 3)
    hi = rng.integers(150, 256, 3)
    narrow = (lo + rng.random((h, w, 3)) * (hi - lo)).astype(np.uint8)
    flat_channel = full.copy()
    flat_channel[..., 1] = 77
    few = rng.choice(np.array([0, 13, 127, 128, 200, 255], np.uint8), (h, w, 3))
    skewed = rng.binomial(255, 0.2, (h, w, 3)).astype(np.uint8)
    return [full, narrow, flat_channel, few, skewed]


# ----------------------------------------------------------------------------
# NumPy references, written from the spec.

def ref_blend(a, b, factor):
    a = np.broadcast_to(np.asarray(a), b.shape)
    if factor == 0:
        return a.astype(np.uint8)
    if factor == 1:
        return b.copy()
    a32, b32 = a.astype(F32), b.astype(F32)
    out = a32 + F32(factor) * (b32 - a32)
    return np.clip(out, 0, 255).astype(np.uint8)


def ref_autocontrast(x):
    out = x.copy()
    for c in range(3):
        lo, hi = F32(x[..., c].min()), F32(x[..., c].max())
        if hi > lo:
            scale = F32(255) / (hi - lo)
            offset = -lo * scale
            v = x[..., c].astype(F32) * scale + offset
            out[..., c] = np.clip(v, 0, 255).astype(np.uint8)
    return out


def ref_equalize(x):
    """PIL's ImageOps.equalize, band by band, with the LUT clipped to 255."""
    out = x.copy()
    for c in range(3):
        band = x[..., c]
        h = np.bincount(band.ravel(), minlength=256)
        histo = [int(v) for v in h if v]
        if len(histo) <= 1:
            continue
        step = (sum(histo) - histo[-1]) // 255
        if not step:
            continue
        lut, n = [], step // 2
        for i in range(256):
            lut.append(min(n // step, 255))
            n += int(h[i])
        out[..., c] = np.array(lut, np.uint8)[band]
    return out


def ref_invert(x):
    return (255 - x.astype(np.int32)).astype(np.uint8)


def ref_posterize(x, bits):
    shift = 8 - bits
    return ((x.astype(np.int32) >> shift) << shift).astype(np.uint8)


def ref_solarize(x, threshold):
    return np.where(x.astype(np.int32) < threshold, x, 255 - x).astype(np.uint8)


def ref_solarize_add(x, addition, threshold=128):
    added = np.clip(x.astype(np.int64) + addition, 0, 255).astype(np.uint8)
    return np.where(x < threshold, added, x)


def ref_grayscale(x):
    """TF luma on x/255, scaled by 255.5 and truncated (tf.image's uint8 path)."""
    f = x.astype(F32) * F32(1.0 / 255.0)
    g = (f[..., 0] * F32(0.2989) + f[..., 1] * F32(0.5870)) + f[..., 2] * F32(0.1140)
    return (g * F32(255.5)).astype(np.uint8)[..., None]


def ref_color(x, factor):
    return ref_blend(np.repeat(ref_grayscale(x), 3, axis=-1), x, factor)


def ref_contrast(x, factor):
    # The histogram of the grayscale image sums to H·W; the original divides
    # that sum by 256 and calls it the mean.
    hist = np.bincount(ref_grayscale(x).ravel(), minlength=256)
    mean = F32(hist.sum()) / F32(256.0)
    gray = np.clip(mean, 0, 255).astype(np.uint8)
    return ref_blend(np.full(x.shape, gray, np.uint8), x, factor)


def ref_brightness(x, factor):
    return ref_blend(np.zeros_like(x), x, factor)


def ref_sharpness(x, factor):
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]])
    h, w = x.shape[:2]
    degenerate = x.copy()
    for i in range(1, h - 1):
        for j in range(1, w - 1):
            for c in range(3):
                s = int((x[i - 1:i + 2, j - 1:j + 2, c].astype(np.int64) * kernel).sum())
                degenerate[i, j, c] = s // 13
    return ref_blend(degenerate, x, factor)


def _round_half_away(v):
    v = np.asarray(v, np.float64)
    return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)


def ref_sample(x, x_in, y_in, fill=128):
    """Nearest-neighbour inverse mapping: output pixel takes input (x_in, y_in)."""
    h, w = x.shape[:2]
    xi, yi = _round_half_away(x_in), _round_half_away(y_in)
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    out = np.full(x.shape, fill, np.uint8)
    out[inside] = x[yi[inside], xi[inside]]
    return out


def _grid(x):
    h, w = x.shape[:2]
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return xx.astype(F32), yy.astype(F32)


def ref_shear_x(x, a):
    xx, yy = _grid(x)
    return ref_sample(x, xx + F32(a) * yy, yy)


def ref_shear_y(x, a):
    xx, yy = _grid(x)
    return ref_sample(x, xx, F32(a) * xx + yy)


def ref_translate_x(x, t):
    xx, yy = _grid(x)
    return ref_sample(x, xx + F32(t), yy)


def ref_translate_y(x, t):
    xx, yy = _grid(x)
    return ref_sample(x, xx, yy + F32(t))


def rotate_coordinates(shape, degrees):
    """Input coordinates (float64) of a rotation about the centre."""
    h, w = shape
    theta = math.radians(degrees)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x_in = math.cos(theta) * (xx - cx) - math.sin(theta) * (yy - cy) + cx
    y_in = math.sin(theta) * (xx - cx) + math.cos(theta) * (yy - cy) + cy
    return x_in, y_in


def ref_rotate_float32(x, degrees):
    """Rotation with float32 transform coefficients evaluated in float32.

    ImageProjectiveTransform takes float32 coefficients and evaluates
    a0·x + a1·y + a2 in float32, so this is the rotation exactly as the
    kernel computes it; `ref_rotate` checks the geometry independently.
    """
    h, w = x.shape[:2]
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    a = [F32(cos), F32(-sin), F32(cx - cos * cx + sin * cy)]
    b = [F32(sin), F32(cos), F32(cy - sin * cx - cos * cy)]
    xx, yy = _grid(x)
    return ref_sample(x, (a[0] * xx + a[1] * yy) + a[2], (b[0] * xx + b[1] * yy) + b[2])


def ref_cutout(x, pad, row, col, fill=128):
    out = x.copy()
    out[max(0, row - pad):max(0, row + pad), max(0, col - pad):max(0, col + pad)] = fill
    return out


# ----------------------------------------------------------------------------
# §7.5 effective-argument table.

# M: Rotate°, Posterize bits, Solarize thr, SolarizeAdd, enhance, shear,
#    translate (ImageNet, 32 px), cutout half-size (ImageNet, 32 px).
SPEC_TABLE = {
    5: (15, 2, 128, 55, 1.00, 0.15, 50, 2.0, 20, 2),
    6: (18, 2, 153, 66, 1.18, 0.18, 60, 2.4, 24, 2),
    12: (36, 4, 51, 132, 2.26, 0.36, 120, 4.8, 48, 4),
    15: (45, 6, 128, 165, 2.80, 0.45, 150, 6.0, 60, 6),
    18: (54, 7, 204, 198, 3.34, 0.54, 180, 7.2, 72, 7),
    24: (72, 1, 102, 264, 4.42, 0.72, 240, 9.6, 96, 9),
    27: (81, 1, 179, 297, 4.96, 0.81, 270, 10.8, 108, 10),
}
# The unwrapped values of the bold entries (what "clamp" fixes).
SPEC_RAW = {12: (4, 307), 15: (6, 384), 18: (7, 460), 24: (9, 614), 27: (10, 691)}


@pytest.mark.parametrize("magnitude", sorted(SPEC_TABLE))
def test_op_arguments_match_spec_table(magnitude):
    (rot, bits, thr, add, enh, shear, tr_in, tr_32, cut_in, cut_32) = SPEC_TABLE[magnitude]
    big = ra.op_arguments(magnitude, translate_const=100, cutout_const=40)
    small = ra.op_arguments(magnitude, translate_const=4, cutout_const=4)
    assert list(big) == list(ra.OP_NAMES)
    for args in (big, small):
        assert args["AutoContrast"] is None
        assert args["Equalize"] is None
        assert args["Invert"] is None
        assert args["Rotate"] == pytest.approx(rot)
        assert args["Posterize"] == bits
        assert args["Solarize"] == thr
        assert args["SolarizeAdd"] == add
        for name in ("Color", "Contrast", "Brightness", "Sharpness"):
            assert args[name] == pytest.approx(enh)
        assert args["ShearX"] == pytest.approx(shear)
        assert args["ShearY"] == pytest.approx(shear)
    assert big["TranslateX"] == big["TranslateY"] == pytest.approx(tr_in)
    assert small["TranslateX"] == small["TranslateY"] == pytest.approx(tr_32)
    assert big["Cutout"] == cut_in
    assert small["Cutout"] == cut_32
    assert isinstance(big["Posterize"], int) and isinstance(big["Cutout"], int)


def test_enhance_factor_is_exactly_one_at_magnitude_5():
    args = ra.op_arguments(5)
    for name in ("Color", "Contrast", "Brightness", "Sharpness"):
        assert args[name] == 1.0


def test_small_image_constants():
    assert ra.small_image_constants(32) == {
        "translate_const": 4, "cutout_const": 4, "extra_cutout_pad": 8}


@pytest.mark.parametrize("magnitude", sorted(SPEC_RAW))
def test_clamp_mode_arguments(magnitude):
    raw_bits, raw_thr = SPEC_RAW[magnitude]
    args = ra.op_arguments(magnitude, out_of_range="clamp")
    assert args["Posterize"] == min(raw_bits, 8)
    assert args["Solarize"] == min(raw_thr, 256)


def test_out_of_range_modes_differ_exactly_where_spec_says():
    for tenths in range(0, 401):
        m = tenths / 10
        original = ra.op_arguments(m)
        clamp = ra.op_arguments(m, out_of_range="clamp")
        level = m / 10
        differs = {k for k in original if original[k] != clamp[k]}
        expected = set()
        if int(level * 256) >= 256:  # uint8 wrap of the threshold
            expected.add("Solarize")
            assert original["Solarize"] == int(level * 256) % 256
            assert clamp["Solarize"] == 256
        if int(level * 4) > 8:  # negative shift wraps to 254/255, clamped to 7
            expected.add("Posterize")
            assert original["Posterize"] == 1
            assert clamp["Posterize"] == 8
        assert differs == expected, m
    # Below 2.5, bits = 0: TF's clamped shift by 8 keeps 1 bit in both modes.
    for mode in MODES:
        assert ra.op_arguments(2, out_of_range=mode)["Posterize"] == 1
    assert ra.op_arguments(10)["Solarize"] == 0  # inverts every pixel
    assert ra.op_arguments(20)["Posterize"] == 8  # bits = 8: identity


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        ra.op_arguments(5, out_of_range="wrap")
    with pytest.raises(ValueError):
        ra.op_arguments(-1)
    with pytest.raises(TypeError):
        ra.invert(tf.zeros([4, 4, 3], tf.float32))
    with pytest.raises(ValueError):
        ra.distort_image_with_randaugment(tf.zeros([4, 4, 3], tf.uint8), 1.5, 5)
    with pytest.raises(ValueError):
        ra.posterize(tf.zeros([4, 4, 3], tf.uint8), 9)


# ----------------------------------------------------------------------------
# Pixel ops.

ARGLESS = {
    "AutoContrast": (ra.autocontrast, ref_autocontrast),
    "Equalize": (ra.equalize, ref_equalize),
    "Invert": (ra.invert, ref_invert),
}

WITH_ARG = {
    "Posterize": (ra.posterize, ref_posterize),
    "Solarize": (ra.solarize, ref_solarize),
    "Color": (ra.color, ref_color),
    "Contrast": (ra.contrast, ref_contrast),
    "Brightness": (ra.brightness, ref_brightness),
    "Sharpness": (ra.sharpness, ref_sharpness),
    "SolarizeAdd": (ra.solarize_add, ref_solarize_add),
}


def _check(got, want):
    got = got.numpy() if hasattr(got, "numpy") else got
    assert got.dtype == np.uint8
    assert got.shape == want.shape
    bad = np.argwhere(got != want)
    assert bad.size == 0, (
        f"{len(bad)} pixel values differ, first at {bad[0]}: "
        f"{got[tuple(bad[0])]} != {want[tuple(bad[0])]}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(ARGLESS))
def test_argless_op_matches_numpy(name, shape):
    op, ref = ARGLESS[name]
    for image in _images(shape):
        _check(op(tf.constant(image)), ref(image))


def test_autocontrast_over_many_value_ranges():
    # Each channel spans its own random [lo, hi], both ends present, so the
    # float32 rounding of the stretch (max -> 254 for some ranges) is covered.
    rng = np.random.default_rng(11)
    n = 2000
    lo = rng.integers(0, 255, (n, 1, 1, 3))
    hi = lo + 1 + (rng.random((n, 1, 1, 3)) * (255 - lo)).astype(int)
    images = (lo + rng.random((n, 8, 9, 3)) * (hi - lo + 1)).astype(np.int64)
    images = np.minimum(images, hi)
    images[:, 0, 0] = lo[:, 0, 0]
    images[:, -1, -1] = hi[:, 0, 0]
    images = images.astype(np.uint8)
    got = next(iter(tf.data.Dataset.from_tensor_slices(images)
                    .map(ra.autocontrast).batch(n))).numpy()
    want = np.stack([ref_autocontrast(image) for image in images])
    np.testing.assert_array_equal(got, want)
    assert (want.max(axis=(1, 2)) == 254).any()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("name", sorted(WITH_ARG))
def test_op_matches_numpy(name, magnitude, shape):
    op, ref = WITH_ARG[name]
    for mode in MODES:
        arg = ra.op_arguments(magnitude, *_constants(shape), out_of_range=mode)[name]
        for image in _images(shape):
            _check(op(tf.constant(image), arg), ref(image, arg))


def test_pixel_ops_at_extra_arguments():
    image = _images((32, 32))[0]
    x = tf.constant(image)
    for bits in range(0, 9):
        _check(ra.posterize(x, bits), ref_posterize(image, bits))
        _check(ra.posterize(x, tf.constant(bits)), ref_posterize(image, bits))
    for thr in (0, 1, 100, 255, 256):
        _check(ra.solarize(x, thr), ref_solarize(image, thr))
    for add in (0, 1, 110, 254, 255, 1000):
        _check(ra.solarize_add(x, add), ref_solarize_add(image, add))
    for factor in (0.0, 0.1, 0.5, 0.999, 1.0, 1.3, 4.96, 27.1):
        _check(ra.color(x, factor), ref_color(image, factor))
        _check(ra.contrast(x, factor), ref_contrast(image, factor))
        _check(ra.brightness(x, factor), ref_brightness(image, factor))
        _check(ra.sharpness(x, factor), ref_sharpness(image, factor))
        _check(ra.color(x, tf.constant(factor)), ref_color(image, factor))


def test_spec_wrap_effects_on_pixels():
    image = _images((32, 32))[0]
    x = tf.constant(image)
    # M = 24 / 27 in "original": each channel becomes 0 or 128.
    for m in (24, 27):
        out = ra.posterize(x, ra.op_arguments(m)["Posterize"]).numpy()
        np.testing.assert_array_equal(out, np.where(image >= 128, 128, 0))
        out = ra.posterize(x, ra.op_arguments(m, out_of_range="clamp")["Posterize"])
        np.testing.assert_array_equal(out.numpy(), image)
    # M = 10 inverts everything in "original", nothing in "clamp".
    out = ra.solarize(x, ra.op_arguments(10)["Solarize"]).numpy()
    np.testing.assert_array_equal(out, 255 - image)
    np.testing.assert_array_equal(
        ra.solarize(x, ra.op_arguments(10, out_of_range="clamp")["Solarize"]).numpy(), image)
    # M >= 24: every pixel below 128 saturates to 255.
    out = ra.solarize_add(x, ra.op_arguments(24)["SolarizeAdd"]).numpy()
    np.testing.assert_array_equal(out, np.where(image < 128, 255, image))


def test_contrast_uses_the_constant_not_the_mean():
    # 32x32 -> gray 1024 / 256 = 4; 8x9 -> 72 / 256 -> 0; 224x224 -> 196.
    for (h, w), gray in (((32, 32), 4), ((8, 9), 0), ((224, 224), 196), ((512, 512), 255)):
        image = np.full((h, w, 3), 200, np.uint8)
        out = ra.contrast(tf.constant(image), 0.5).numpy()
        assert (out == int(gray + 0.5 * (200 - gray))).all()


def test_blend_semantics():
    a = _images((8, 9))[0]
    b = _images((8, 9))[1]
    for factor in (0.0, 1.0, 0.25, 0.7, 1.5, 3.0):
        _check(ra.blend(tf.constant(a), tf.constant(b), factor), ref_blend(a, b, factor))
    np.testing.assert_array_equal(ra.blend(a, b, 0.0).numpy(), a)
    np.testing.assert_array_equal(ra.blend(a, b, 1.0).numpy(), b)


def test_grayscale_is_tf_image_rgb_to_grayscale_for_all_colours():
    v = np.arange(256, dtype=np.uint8)
    r, g, b = np.meshgrid(v, v, v, indexing="ij")
    colours = np.stack([r, g, b], -1).reshape(4096, 4096, 3)
    for rows in np.split(colours, 4):
        got = ra.grayscale(tf.constant(rows)).numpy()
        np.testing.assert_array_equal(got, tf.image.rgb_to_grayscale(rows).numpy())
        np.testing.assert_array_equal(got, ref_grayscale(rows))


def test_tensor_arguments_and_unknown_shapes():
    image = _images((32, 32))[3]
    spec = [tf.TensorSpec([None, None, 3], tf.uint8)]
    cases = [
        (ra.posterize, ref_posterize, 3),
        (ra.solarize, ref_solarize, 179),
        (ra.solarize_add, ref_solarize_add, 66),
        (ra.color, ref_color, 2.26),
        (ra.contrast, ref_contrast, 2.26),
        (ra.contrast, ref_contrast, 0.4),
        (ra.brightness, ref_brightness, 1.18),
        (ra.sharpness, ref_sharpness, 4.96),
        (ra.sharpness, ref_sharpness, 0.1),
    ]
    for op, ref, arg in cases:
        want = ref(image, arg)
        dynamic = tf.function(lambda x: op(x, arg), input_signature=spec)
        _check(dynamic(image), want)
        _check(op(tf.constant(image), tf.constant(arg)), want)
    dynamic = tf.function(lambda x: ra.cutout(x, 5, center=[30, 2]), input_signature=spec)
    _check(dynamic(image), ref_cutout(image, 5, 30, 2))


def test_equalize_matches_pil_if_available():
    image_module = pytest.importorskip("PIL.Image")
    image_ops = pytest.importorskip("PIL.ImageOps")
    for shape in SHAPES + [(64, 48)]:
        for image in _images(shape, seed=7):
            want = np.asarray(image_ops.equalize(image_module.fromarray(image)))
            _check(ra.equalize(tf.constant(image)), want)


def test_pil_point_ops_if_available():
    image_module = pytest.importorskip("PIL.Image")
    image_ops = pytest.importorskip("PIL.ImageOps")
    image = _images((32, 32))[0]
    pil = image_module.fromarray(image)
    _check(ra.invert(tf.constant(image)), np.asarray(image_ops.invert(pil)))
    for bits in range(1, 9):
        _check(ra.posterize(tf.constant(image), bits), np.asarray(image_ops.posterize(pil, bits)))
    for thr in (0, 51, 128, 179, 256):
        _check(ra.solarize(tf.constant(image), thr), np.asarray(image_ops.solarize(pil, thr)))


# ----------------------------------------------------------------------------
# Geometric ops.

GEOMETRIC = {
    "ShearX": (ra.shear_x, ref_shear_x),
    "ShearY": (ra.shear_y, ref_shear_y),
    "TranslateX": (ra.translate_x, ref_translate_x),
    "TranslateY": (ra.translate_y, ref_translate_y),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_shear_translate_match_numpy(name, magnitude, shape):
    op, ref = GEOMETRIC[name]
    arg = ra.op_arguments(magnitude, *_constants(shape))[name]
    for image in _images(shape)[:2]:
        for sign in (1.0, -1.0):
            _check(op(tf.constant(image), sign * arg), ref(image, sign * arg))
            # The same with a float32 tensor argument (as inside RandAugment).
            _check(op(tf.constant(image), tf.constant(sign * arg, tf.float32)),
                   ref(image, sign * arg))


def test_translate_rounds_half_away_from_zero():
    image = _images((8, 9))[0]
    for t in (0.5, -0.5, 2.5, -2.5, 1.49, -1.51):
        _check(ra.translate_x(tf.constant(image), t), ref_translate_x(image, t))
        _check(ra.translate_y(tf.constant(image), t), ref_translate_y(image, t))
    # -2.5 at x = 2 samples -0.5 -> -1: outside, gray (banker's rounding would give 0).
    out = ra.translate_x(tf.constant(image), -2.5).numpy()
    assert (out[:, :3] == 128).all() and (out[:, 3] == image[:, 1]).all()


def test_translate_direction_and_fill():
    image = _images((8, 9))[0]
    out = ra.translate_x(tf.constant(image), 2.0).numpy()
    np.testing.assert_array_equal(out[:, :-2], image[:, 2:])
    assert (out[:, -2:] == 128).all()
    out = ra.translate_y(tf.constant(image), -3.0).numpy()
    np.testing.assert_array_equal(out[3:], image[:-3])
    assert (out[:3] == 128).all()
    # M = 27 on an ImageNet-style image: 270 px, entirely gray.
    out = ra.translate_x(tf.constant(image), ra.op_arguments(27)["TranslateX"]).numpy()
    assert (out == 128).all()


@pytest.mark.parametrize("shape", SHAPES + [(33, 20)])
@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_rotate_matches_numpy(magnitude, shape):
    degrees = ra.op_arguments(magnitude)["Rotate"]
    for image in _images(shape)[:2]:
        for sign in (1.0, -1.0):
            got = ra.rotate(tf.constant(image), sign * degrees).numpy()
            _check(got, ref_rotate_float32(image, sign * degrees))
            # Independent float64 geometry. A pixel whose sampling coordinate
            # lies within 1e-4 of a rounding boundary (x.5) is decided by
            # float32 rounding of the coefficients, so it is left out; there
            # must be very few of them.
            x_in, y_in = rotate_coordinates(shape, sign * degrees)
            want = ref_sample(image, x_in, y_in)
            near = lambda v: np.abs(np.abs(v - np.floor(v)) - 0.5) < 1e-4
            ambiguous = near(x_in) | near(y_in)
            assert ambiguous.mean() < 0.02
            np.testing.assert_array_equal(got[~ambiguous], want[~ambiguous])
            # The same with a float32 tensor argument.
            got_t = ra.rotate(tf.constant(image), tf.constant(sign * degrees, tf.float32)).numpy()
            np.testing.assert_array_equal(got_t[~ambiguous], want[~ambiguous])


def test_rotate_quarter_turn_and_fill():
    image = np.random.default_rng(5).integers(0, 256, (9, 9, 3), dtype=np.uint8)
    out = ra.rotate(tf.constant(image), 90.0).numpy()
    # x' = -(y - 4) + 4 = 8 - y, y' = x: output[y, x] = input[x, 8 - y].
    np.testing.assert_array_equal(out, np.transpose(image, (1, 0, 2))[::-1])
    wide = np.random.default_rng(6).integers(0, 128, (8, 16, 3), dtype=np.uint8)
    out = ra.rotate(tf.constant(wide), 90.0).numpy()
    assert (out[:, :4] == 128).all() and (out[:, -4:] == 128).all()


# ----------------------------------------------------------------------------
# Cutout.

@pytest.mark.parametrize("shape", SHAPES)
def test_cutout_matches_numpy(shape):
    image = _images(shape)[0]
    h, w = shape
    for pad in (0, 1, 2, 4, 8, 40, 108):
        for row, col in ((0, 0), (h - 1, w - 1), (h // 2, w // 3), (1, w - 2)):
            got = ra.cutout(tf.constant(image), pad, center=[row, col])
            _check(got, ref_cutout(image, pad, row, col))
    got = ra.cutout(tf.constant(image), 2, replace=7, center=[3, 3])
    _check(got, ref_cutout(image, 2, 3, 3, fill=7))


def test_random_cutout_centre_is_uniform():
    h, w = 8, 9
    zeros = tf.zeros([h, w, 3], tf.uint8)
    n = 7200
    ds = tf.data.Dataset.range(n).map(
        lambda i: ra.cutout(zeros, 1, seed=tf.stack([i, tf.constant(11, tf.int64)])))
    masks = np.stack(list(ds.batch(n).as_numpy_iterator())[0])[..., 0] == 128
    counts = np.zeros((h, w))
    for m in masks:
        rows, cols = np.nonzero(m)
        # pad 1 covers rows [cy - 1, cy] and cols [cx - 1, cx], clipped.
        assert rows.max() - rows.min() <= 1 and cols.max() - cols.min() <= 1
        counts[rows.max(), cols.max()] += 1
    expected = n / (h * w)
    assert counts.min() > 0.6 * expected and counts.max() < 1.4 * expected
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 130  # 71 degrees of freedom; p ~ 1e-5


def test_cutout_stateless_seed_is_deterministic():
    image = tf.constant(_images((32, 32))[0])
    a = ra.cutout(image, 8, seed=[1, 2])
    b = ra.cutout(image, 8, seed=[1, 2])
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    outs = {ra.cutout(image, 8, seed=[1, s]).numpy().tobytes() for s in range(10)}
    assert len(outs) > 5


# ----------------------------------------------------------------------------
# The whole policy.

REFS = {
    "AutoContrast": lambda x, a: ref_autocontrast(x),
    "Equalize": lambda x, a: ref_equalize(x),
    "Invert": lambda x, a: ref_invert(x),
    "Rotate": ref_rotate_float32,
    "Posterize": ref_posterize,
    "Solarize": ref_solarize,
    "Color": ref_color,
    "Contrast": ref_contrast,
    "Brightness": ref_brightness,
    "Sharpness": ref_sharpness,
    "ShearX": ref_shear_x,
    "ShearY": ref_shear_y,
    "TranslateX": ref_translate_x,
    "TranslateY": ref_translate_y,
    "SolarizeAdd": ref_solarize_add,
}


def ref_randaugment(image, num_layers, magnitude, translate_const, cutout_const,
                    cutout_op, seed, out_of_range):
    """The policy in NumPy, from the documented use of the random draw."""
    names = ra.op_names(cutout_op)
    args = ra.op_arguments(magnitude, translate_const, cutout_const, out_of_range)
    u = tf.random.stateless_uniform([num_layers, 4], seed=seed).numpy()
    h, w = image.shape[:2]
    chosen, signs = [], []
    for layer in range(num_layers):
        name = names[int(math.floor(u[layer, 0] * len(names)))]
        sign = -1.0 if u[layer, 1] < 0.5 else 1.0
        arg = args[name]
        if name == "Cutout":
            row = int(math.floor(u[layer, 2] * h))
            col = int(math.floor(u[layer, 3] * w))
            image = ref_cutout(image, arg, row, col)
        else:
            if name in ra.SIGNED_OPS:
                arg = sign * arg
                signs.append(sign)
            image = REFS[name](image, arg)
        chosen.append(name)
    return image, chosen, signs


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("magnitude", [5, 12, 27])
@pytest.mark.parametrize("mode", MODES)
def test_randaugment_matches_numpy_policy(mode, magnitude, shape):
    translate_const, cutout_const = _constants(shape)
    num_layers = 3
    images = _images(shape)

    @tf.function(input_signature=[tf.TensorSpec(shape + (3,), tf.uint8),
                                  tf.TensorSpec([2], tf.int32)])
    def augment(image, seed):
        return ra.distort_image_with_randaugment(
            image, num_layers, magnitude, translate_const, cutout_const,
            seed=seed, out_of_range=mode, return_op_indices=True)

    seen, signs = set(), set()
    for s in range(40):
        image = images[s % len(images)]
        seed = tf.constant([s, magnitude], tf.int32)
        got, indices = augment(tf.constant(image), seed)
        want, chosen, layer_signs = ref_randaugment(
            image, num_layers, magnitude, translate_const, cutout_const, True, seed, mode)
        assert [ra.OP_NAMES[i] for i in indices.numpy()] == chosen
        _check(got, want)
        seen.update(chosen)
        signs.update(layer_signs)
    assert len(seen) >= 14
    assert signs == {-1.0, 1.0}


def test_both_modes_differ_only_through_solarize_and_posterize():
    image = _images((32, 32))[0]
    differ, same = 0, 0
    for s in range(60):
        outs = {}
        for mode in MODES:
            outs[mode], idx = ra.distort_image_with_randaugment(
                tf.constant(image), 2, 27, 4, 4, seed=[s, 1], out_of_range=mode,
                return_op_indices=True)
        names = {ra.OP_NAMES[i] for i in idx.numpy()}
        equal = np.array_equal(outs["original"].numpy(), outs["clamp"].numpy())
        if names & {"Solarize", "Posterize"}:
            differ += not equal
        else:
            assert equal
            same += 1
    assert differ > 0 and same > 0


def test_cutout_op_flag():
    assert ra.op_names() == ra.OP_NAMES and len(ra.OP_NAMES) == 16
    assert ra.op_names(cutout_op=False) == ra.OP_NAMES[:15]
    image = tf.constant(_images((8, 9))[0])
    for s in range(50):
        _, idx = ra.distort_image_with_randaugment(
            image, 2, 10, cutout_op=False, seed=[s, 5], return_op_indices=True)
        assert idx.numpy().max() < 15


def test_num_layers_zero_is_identity():
    image = tf.constant(_images((8, 9))[0])
    out, idx = ra.distort_image_with_randaugment(image, 0, 10, return_op_indices=True)
    np.testing.assert_array_equal(out.numpy(), image.numpy())
    assert idx.shape == (0,)


def test_op_choice_is_per_image_and_uniform():
    num_ops = 16
    image = tf.constant(_images((8, 9))[0])
    n = 4000
    ds = tf.data.Dataset.range(n).map(
        lambda i: ra.distort_image_with_randaugment(
            image, 2, 10, seed=tf.stack([i, tf.constant(3, tf.int64)]),
            return_op_indices=True)[1],
        num_parallel_calls=tf.data.AUTOTUNE)
    indices = next(iter(ds.batch(n))).numpy()
    # One batch of 16 images already holds many different ops.
    assert len(set(indices[:16, 0])) >= 6
    counts = np.bincount(indices.ravel(), minlength=num_ops)
    expected = indices.size / num_ops
    assert np.abs(counts / expected - 1).max() < 0.15
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 45  # 15 degrees of freedom; p ~ 1e-4


def test_stateful_randomness_in_dataset_map():
    image = _images((32, 32))[0]
    ds = (tf.data.Dataset.from_tensors(image).repeat(64)
          .map(lambda x: ra.distort_image_with_randaugment(
              x, 2, 10, 4, 4, return_op_indices=True)).batch(64))
    for batch, idx in ds:
        assert len(set(idx.numpy()[:, 0])) >= 8
        assert len({b.tobytes() for b in batch.numpy()}) >= 20


@pytest.mark.parametrize("cutout_op", [True, False])
def test_runs_in_dataset_map_graph_mode(cutout_op):
    images = np.stack(_images((32, 32)) * 4)
    seeds = np.stack([np.arange(len(images)), np.zeros(len(images), np.int64)], 1)
    ds = tf.data.Dataset.from_tensor_slices((images, seeds)).map(
        lambda x, s: ra.distort_image_with_randaugment(
            x, 2, 27, 4, 4, cutout_op=cutout_op, seed=s),
        num_parallel_calls=2)
    assert ds.element_spec == tf.TensorSpec([32, 32, 3], tf.uint8)
    first = np.stack(list(ds.as_numpy_iterator()))
    second = np.stack(list(ds.as_numpy_iterator()))
    assert first.dtype == np.uint8 and first.shape == images.shape
    np.testing.assert_array_equal(first, second)  # stateless seeds: reproducible
    # §7.4 extra cutout after RandAugment, still in the map.
    c = ra.small_image_constants(32)
    ds2 = ds.map(lambda x: ra.cutout(x, c["extra_cutout_pad"]))
    assert ds2.element_spec == tf.TensorSpec([32, 32, 3], tf.uint8)
    assert len(list(ds2)) == len(images)


def test_unknown_static_shape():
    images = [_images((8, 9))[0], _images((32, 32))[1], _images((33, 20))[0]]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    ds = ds.enumerate().map(lambda i, x: ra.distort_image_with_randaugment(
        x, 3, 12, seed=tf.stack([i, tf.constant(9, tf.int64)])))
    assert ds.element_spec.shape.as_list() == [None, None, 3]
    for i, (out, image) in enumerate(zip(ds, images)):
        seed = tf.constant([i, 9], tf.int64)
        want, _, _ = ref_randaugment(image, 3, 12, 100, 40, True, seed, "original")
        _check(out, want)


def test_stateless_seed_determinism():
    image = tf.constant(_images((32, 32))[0])
    a = ra.distort_image_with_randaugment(image, 2, 15, 4, 4, seed=[4, 2])
    b = ra.distort_image_with_randaugment(image, 2, 15, 4, 4, seed=[4, 2])
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    outs = {ra.distort_image_with_randaugment(image, 2, 15, 4, 4, seed=[4, s]).numpy().tobytes()
            for s in range(12)}
    assert len(outs) >= 8
