"""Tests of nst/robustness/corruptions.py against independent references.

References: closed-form statistics for the noise families, scipy.ndimage for the
gaussian blur, hand-computed kernels and pixel values, PIL for JPEG. Images are small
(the whole file runs in well under a minute on a 2-core machine).
"""

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from nst.robustness import corruptions as C


def natural_image(size, seed=0):
    """A smooth, textured [size, size, 3] uint8 image: sinusoids at octaves 1..16
    with random orientations and phases (a stand-in for a photograph)."""
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3))
    for frequency in (1, 2, 4, 8, 16):
        for channel in range(3):
            a, b, phase = rng.normal(size=3)
            image[..., channel] += np.sin(2 * np.pi * frequency * (a * x + b * y) + phase) / frequency
    return np.clip((0.5 + 0.2 * image) * 255, 0, 255).astype(np.uint8)


def grey(size, value=128, count=1):
    return np.full((count, size, size, 3), value, np.uint8)


# ----------------------------------------------------------------------- API


def test_names_and_severities():
    assert C.CORRUPTIONS == (
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "gaussian_blur",
        "motion_blur", "zoom_blur", "contrast", "brightness", "saturate",
        "jpeg_compression", "pixelate", "elastic_transform", "fog")
    assert C.SEVERITIES == (1, 2, 3, 4, 5)
    assert set(C.PARAMS) == set(C.CORRUPTIONS)
    assert all(len(C.PARAMS[name]) == 5 for name in C.CORRUPTIONS)


def test_bad_names_and_severities_raise():
    with pytest.raises(ValueError, match="'frost'.*known corruptions: gaussian_noise"):
        C.check(["gaussian_noise", "frost"], [1])
    for severity in (0, 6, 2.5, True, "3"):
        with pytest.raises(ValueError, match="outside 1-5"):
            C.check(["fog"], [severity])
    C.check(list(C.CORRUPTIONS), list(C.SEVERITIES))
    with pytest.raises(ValueError, match="Unknown corruption 'snow'"):
        C.corrupt(grey(8), "snow", 1, 0)
    with pytest.raises(ValueError, match="outside 1-5"):
        C.corrupt(grey(8), "fog", 6, 0)


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_shape_and_dtype_every_severity(name, size):
    image = natural_image(size)
    for severity in C.SEVERITIES:
        out = C.corrupt(image, name, severity, seed=3)
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
    batch = C.corrupt(image[None], name, 5, seed=3)
    assert batch.shape == (1, size, size, 3) and batch.dtype == np.uint8


def test_non_square_image():
    image = natural_image(48)[:40]
    for name in C.CORRUPTIONS:
        assert C.corrupt(image, name, 3, seed=0).shape == (40, 48, 3)


# -------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "motion_blur",
                                  "elastic_transform", "fog"])
def test_deterministic_and_batch_independent(name):
    images = np.stack([natural_image(32, seed) for seed in range(4)])
    first = C.corrupt(images, name, 3, seed=7)
    np.testing.assert_array_equal(first, C.corrupt(images, name, 3, seed=7))
    assert not np.array_equal(first, C.corrupt(images, name, 3, seed=8))
    singles = [C.corrupt(images[i], name, 3, seed=7, indices=[i]) for i in range(4)]
    np.testing.assert_array_equal(first, np.stack(singles))
    # Indices, not batch positions, pick the randomness.
    np.testing.assert_array_equal(C.corrupt(images[2:], name, 3, seed=7, indices=[2, 3]),
                                  first[2:])
    if name == "motion_blur":
        return  # at 32x32 its 2-tap line has few distinct angles: twins may coincide
    # Two copies of one image at different indices get different draws.
    twins = C.corrupt(np.stack([images[0], images[0]]), name, 3, seed=7)
    assert not np.array_equal(twins[0], twins[1])


# -------------------------------------------------------------------- noise


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_gaussian_noise_std_and_mean(severity):
    c = C.PARAMS["gaussian_noise"][severity - 1]
    # Mid-grey, and c small enough that clipping is negligible at +-0.5 for s <= 3;
    # for the larger levels compare against the clipped normal's moments instead.
    out = C.corrupt(grey(64, 128, 8), "gaussian_noise", severity, seed=1).astype(float)
    residual = (out - 128) / 255
    if severity <= 3:
        assert abs(residual.std() - c) < 0.02 * c + 0.002
    else:
        draws = np.clip(128 / 255 + np.random.default_rng(0).normal(0, c, 10 ** 6), 0, 1)
        assert abs(residual.std() - (draws - 128 / 255).std()) < 0.01
    assert abs(residual.mean()) < 0.003


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_shot_noise_is_poisson(severity):
    rate = C.PARAMS["shot_noise"][severity - 1]
    p = 64 / 255
    out = C.corrupt(grey(64, 64, 8), "shot_noise", severity, seed=2).astype(float) / 255
    counts = out * rate  # back to Poisson counts (rounding to uint8 costs < 0.5/255)
    mean = p * rate
    assert abs(counts.mean() - mean) < 0.02 * mean + 0.02 * rate / 255
    assert abs(counts.var() - mean) < 0.05 * mean + 0.02


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_impulse_noise_fraction(severity):
    amount = C.PARAMS["impulse_noise"][severity - 1]
    out = C.corrupt(grey(64, 128, 4), "impulse_noise", severity, seed=3)
    salt, pepper = (out == 255).mean(), (out == 0).mean()
    assert abs(salt + pepper - amount) < 0.1 * amount
    assert abs(salt - pepper) < 0.1 * amount
    assert np.all((out == 0) | (out == 255) | (out == 128))


# --------------------------------------------------------------------- blur


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_gaussian_blur_matches_scipy(size, severity):
    image = np.random.default_rng(severity).integers(0, 256, (size, size, 3), np.uint8)
    sigma = C.PARAMS["gaussian_blur"][severity - 1] * size / 224
    reference = ndimage.gaussian_filter(image / 255.0, sigma=(sigma, sigma, 0),
                                        mode="nearest", truncate=4.0)
    reference = np.rint(np.clip(reference, 0, 1) * 255)
    out = C.corrupt(image, "gaussian_blur", severity, seed=0).astype(float)
    assert np.abs(out - reference).max() <= 1


def test_disk_kernel_sums_to_one_and_matches_hand_computed():
    for radius, alias in C.PARAMS["defocus_blur"]:
        for scale in (1, 32 / 224):
            assert abs(C.disk_kernel(radius * scale, alias).sum() - 1) < 1e-12
    # Radius 1 with an (almost) zero anti-alias blur: the five-pixel plus, 1/5 each.
    kernel = C.disk_kernel(1.0, 1e-3)
    expected = np.zeros((5, 5))
    expected[2, 1:4] = expected[1:4, 2] = 0.2
    np.testing.assert_allclose(kernel, expected, atol=1e-12)
    # Radius 1.5 includes the corners of the 3x3 block: nine pixels, 1/9 each (side 7).
    kernel = C.disk_kernel(1.5, 1e-3)
    assert kernel.shape == (7, 7)
    expected = np.zeros((7, 7))
    expected[2:5, 2:5] = 1 / 9
    np.testing.assert_allclose(kernel, expected, atol=1e-12)


def test_defocus_blur_is_disk_correlation():
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)
    radius, alias = C.PARAMS["defocus_blur"][3]
    kernel = C.disk_kernel(radius * 40 / 224, alias)
    reference = np.stack([ndimage.convolve(image[..., k] / 255.0, kernel[::-1, ::-1],
                                           mode="mirror") for k in range(3)], -1)
    out = C.corrupt(image, "defocus_blur", 4, seed=0).astype(float)
    assert np.abs(out - np.rint(np.clip(reference, 0, 1) * 255)).max() <= 1


def test_motion_kernel_is_a_normalised_line():
    dy, dx, weights = C.motion_kernel_offsets(10, 3, 0.0)
    np.testing.assert_array_equal(dy, 0)
    np.testing.assert_array_equal(dx, np.arange(10))
    assert abs(weights.sum() - 1) < 1e-12 and np.all(np.diff(weights) < 0)
    dy, dx, _ = C.motion_kernel_offsets(5, 3, 45.0)
    np.testing.assert_array_equal(dy, dx)
    # A constant image stays constant; a single bright dot becomes a streak.
    np.testing.assert_array_equal(C.corrupt(grey(32, 90)[0], "motion_blur", 5, 0), 90)
    dot = np.zeros((64, 64, 3), np.uint8)
    dot[32, 32] = 255
    assert (C.corrupt(dot, "motion_blur", 5, 0)[..., 0] > 0).sum() >= 4


def test_zoom_blur_keeps_constant_and_centre():
    np.testing.assert_array_equal(C.corrupt(grey(32, 77)[0], "zoom_blur", 5, 0), 77)
    image = natural_image(33)
    out = C.corrupt(image, "zoom_blur", 5, 0).astype(int)
    # The centre pixel is a fixed point of every zoom.
    assert np.abs(out[16, 16] - image[16, 16]).max() <= 1


# ------------------------------------------------------------- photometric


def test_contrast_hand_computed():
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 0] = 200
    image[1, 1] = 40  # channel means (200 + 40) / 4 = 60
    for severity, c in enumerate(C.PARAMS["contrast"], start=1):
        out = C.corrupt(image, "contrast", severity, 0).astype(float)
        expected = np.rint((image / 255 - 60 / 255) * c * 255 + 60)
        np.testing.assert_allclose(out, expected, atol=1)


def test_brightness_hand_computed():
    # (200, 100, 50): V = 200/255, S = 0.75, hue sector unchanged. Severity 1 adds 0.1
    # to V: max 225.5, min 225.5 * 0.25 = 56.375, middle 56.375 + 169.125 / 3 = 112.75.
    image = np.array([[[200, 100, 50]]], np.uint8)
    np.testing.assert_allclose(C.corrupt(image, "brightness", 1, 0)[0, 0], [225.5, 112.75, 56.375],
                               atol=0.6)
    # Severity 5 on white stays white; on black gives grey 0.5 * 255.
    np.testing.assert_array_equal(C.corrupt(grey(2, 255)[0], "brightness", 5, 0), 255)
    np.testing.assert_allclose(C.corrupt(grey(2, 0)[0], "brightness", 5, 0), 127.5, atol=0.6)


def test_saturate_hand_computed():
    image = np.array([[[200, 100, 50]]], np.uint8)  # S = 0.75, V = 200
    # Severity 1: S = 0.225 -> min = 200 * 0.775 = 155, middle 155 + 45 / 3 = 170.
    np.testing.assert_allclose(C.corrupt(image, "saturate", 1, 0)[0, 0], [200, 170, 155], atol=0.6)
    # Severity 5: S = min(0.75 * 20 + 0.2, 1) = 1 -> min 0, middle 200 / 3.
    np.testing.assert_allclose(C.corrupt(image, "saturate", 5, 0)[0, 0], [200, 66.67, 0], atol=0.6)


def test_hsv_round_trip():
    x = np.random.default_rng(0).random((100, 3))
    np.testing.assert_allclose(C.hsv_to_rgb(C.rgb_to_hsv(x)), x, atol=1e-12)


# --------------------------------------------------------------- JPEG, pixelate


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_jpeg_matches_pil(severity):
    image = natural_image(32, seed=severity)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=C.PARAMS["jpeg_compression"][severity - 1])
    reference = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(C.corrupt(image, "jpeg_compression", severity, 0), reference)


def test_pixelate_makes_blocks():
    image = natural_image(32)
    out = C.corrupt(image, "pixelate", 5, 0)  # 32 * 0.25 = 8: 4x4 blocks
    blocks = out.reshape(8, 4, 8, 4, 3)
    assert np.all(blocks == blocks[:, :1, :, :1])


# ------------------------------------------------------------- severity order

# The benchmark's saturate levels desaturate (1, 2) then oversaturate (3-5), and its
# elastic levels 1-2 are large smooth warps, 3-5 small local ones: neither is ordered by
# pixel deviation, so they are left out here. Fog levels 3 and 4 share the strength 2.5
# and differ only in the fractal's decay, so fog is checked on levels 1, 3, 5.
ORDERED = [n for n in C.CORRUPTIONS if n not in ("saturate", "elastic_transform")]


@pytest.mark.parametrize("name", ORDERED)
def test_severity_monotone(name):
    size = 96
    image = natural_image(size)
    deviation = [np.abs(C.corrupt(image, name, s, seed=5).astype(float) - image).mean()
                 for s in C.SEVERITIES]
    if name == "fog":
        deviation = deviation[::2]
    assert all(b > a for a, b in zip(deviation, deviation[1:])), deviation


# ------------------------------------------------------------------ tf.data


def test_corrupted_dataset_matches_numpy():
    import tensorflow as tf

    images = np.stack([natural_image(32, seed) for seed in range(6)])
    labels = np.arange(6)
    for name in ("gaussian_noise", "fog"):
        expected = C.corrupt(images, name, 2, seed=4)
        pairs = C.corrupted_dataset(tf.data.Dataset.from_tensor_slices((images, labels)),
                                    name, 2, seed=4)
        got = list(pairs.batch(4).as_numpy_iterator())
        np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), expected)
        np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), labels)
    dicts = C.corrupted_dataset(tf.data.Dataset.from_tensor_slices({"image": images}),
                                "contrast", 3, seed=0)
    np.testing.assert_array_equal(np.stack([d["image"] for d in dicts.as_numpy_iterator()]),
                                  C.corrupt(images, "contrast", 3, seed=0))
    with pytest.raises(ValueError, match="outside 1-5"):
        C.corrupted_dataset(tf.data.Dataset.from_tensor_slices(images), "fog", 0, 0)
