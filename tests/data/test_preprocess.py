"""Image views against NumPy references and hand-computed crop boxes."""

import numpy as np
import pytest
import tensorflow as tf

from nst.data import preprocess


def _cubic_weights(t, a=-0.75):
    """Keys cubic convolution weights for taps at offsets -1, 0, 1, 2."""
    def k(x):
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        if x < 2:
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return 0.0
    return [k(t + 1), k(t), k(1 - t), k(2 - t)]


def numpy_resize_bicubic_legacy(image, out_h, out_w):
    """TF1 resize_bicubic: in = out * (in_size / out_size), A = -0.75, taps
    clamped to the border, fractional offsets quantised to 1/1024 (TF reads
    the weights from a 1024-entry table)."""
    in_h, in_w, _ = image.shape
    image = image.astype(np.float64)

    def axis_taps(out_size, in_size):
        scale = in_size / out_size
        taps = []
        for o in range(out_size):
            x = o * scale
            i = int(np.floor(x))
            w = _cubic_weights(round((x - i) * 1024) / 1024)
            idx = [min(max(i + d, 0), in_size - 1) for d in (-1, 0, 1, 2)]
            taps.append((idx, w))
        return taps

    rows = axis_taps(out_h, in_h)
    cols = axis_taps(out_w, in_w)
    out = np.zeros((out_h, out_w, image.shape[2]))
    for y, (ri, rw) in enumerate(rows):
        tmp = sum(w * image[i] for i, w in zip(ri, rw))  # [in_w, C]
        for x, (ci, cw) in enumerate(cols):
            out[y, x] = sum(w * tmp[i] for i, w in zip(ci, cw))
    return out


@pytest.mark.parametrize("in_hw,size", [((7, 9), 5), ((8, 8), 13), ((20, 11), 16)])
def test_legacy_bicubic_matches_numpy_reference(in_hw, size):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=in_hw + (3,)).astype(np.uint8)
    ours = preprocess.resize_bicubic_legacy(tf.constant(image), size).numpy()
    ref = numpy_resize_bicubic_legacy(image, size, size)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_legacy_bicubic_is_not_clipped():
    # A sharp edge overshoots with a negative-lobe kernel; the original keeps it.
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, 4:] = 255
    out = preprocess.resize_bicubic_legacy(tf.constant(image), 13).numpy()
    assert out.max() > 255.0 and out.min() < 0.0


@pytest.mark.parametrize("h,w,size,expected", [
    (256, 256, 224, (16, 16, 224)),      # 224/256 * 256 = 224
    (375, 500, 224, (24, 86, 328)),      # int(0.875 * 375) = 328; offsets round up
    (600, 800, 600, (16, 116, 569)),     # int(600/632 * 600) = 569
    (500, 333, 475, (95, 11, 311)),      # int(475/507 * 333) = int(311.98)
])
def test_center_crop_box(h, w, size, expected):
    oy, ox, side = (int(v) for v in preprocess.center_crop_box(h, w, size))
    assert (oy, ox, side) == expected


def test_eval_view_imagenet_equals_crop_then_resize():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(40, 30, 3)).astype(np.uint8)
    out = preprocess.eval_view(tf.constant(image), 16).numpy()
    side = int(np.float32(16 / 48) * np.float32(30))  # 10
    oy, ox = ((40 - side) + 1) // 2, ((30 - side) + 1) // 2
    ref = numpy_resize_bicubic_legacy(image[oy:oy + side, ox:ox + side], 16, 16)
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out, ref, atol=1e-3)


def test_eval_view_small_image_is_identity():
    image = np.random.default_rng(2).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    out = preprocess.eval_view(tf.constant(image), 32, small_image=True).numpy()
    np.testing.assert_array_equal(out, image.astype(np.float32))


def test_inception_crop_shape_and_stateless_determinism():
    image = tf.constant(np.random.default_rng(3).integers(0, 256, (50, 70, 3)).astype(np.uint8))
    a = preprocess.inception_crop(image, 24, seed=tf.constant([1, 2])).numpy()
    b = preprocess.inception_crop(image, 24, seed=tf.constant([1, 2])).numpy()
    c = preprocess.inception_crop(image, 24, seed=tf.constant([5, 9])).numpy()
    assert a.shape == (24, 24, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_inception_crop_falls_back_to_center_crop_when_box_is_whole_image(monkeypatch):
    image = tf.constant(np.random.default_rng(4).integers(0, 256, (30, 40, 3)).astype(np.uint8))

    def whole_box(image_size, **kwargs):
        return tf.zeros(3, tf.int32), tf.cast(image_size, tf.int32), tf.zeros([1, 1, 4])

    monkeypatch.setattr(tf.image, "stateless_sample_distorted_bounding_box", whole_box)
    out = preprocess.inception_crop(image, 16, seed=tf.constant([0, 1])).numpy()
    np.testing.assert_array_equal(out, preprocess.eval_view(image, 16).numpy())


def test_random_flip_is_mirror_or_identity():
    image = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    seen = set()
    for s in range(20):
        out = preprocess.random_flip(tf.constant(image), seed=tf.constant([s, 0])).numpy()
        if np.array_equal(out, image):
            seen.add("same")
        else:
            np.testing.assert_array_equal(out, image[:, ::-1])
            seen.add("flipped")
    assert seen == {"same", "flipped"}


def test_reflect_pad_crop_is_a_window_of_the_reflect_padded_image():
    image = np.random.default_rng(5).integers(0, 256, (32, 32, 3)).astype(np.float32)
    padded = np.pad(image, [(4, 4), (4, 4), (0, 0)], mode="reflect")
    offsets = set()
    for s in range(30):
        out = preprocess.reflect_pad_crop(tf.constant(image), 32, 4,
                                          seed=tf.constant([s, 7])).numpy()
        matches = [(y, x) for y in range(9) for x in range(9)
                   if np.array_equal(padded[y:y + 32, x:x + 32], out)]
        assert matches, "crop is not a window of the reflect-padded image"
        offsets.add(matches[0])
    assert len(offsets) > 5


def test_small_train_view_without_augment_is_pad_crop_and_optional_flip():
    image = np.random.default_rng(6).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    padded = np.pad(image.astype(np.float32), [(4, 4), (4, 4), (0, 0)], mode="reflect")
    for s in range(10):
        out = preprocess.train_view(tf.constant(image), 32, small_image=True, flip=False,
                                    seed=tf.constant([s, 3])).numpy()
        assert any(np.array_equal(padded[y:y + 32, x:x + 32], out)
                   for y in range(9) for x in range(9))


def test_train_view_rejects_unknown_augment_name():
    with pytest.raises(ValueError, match="augment_name"):
        preprocess.train_view(tf.zeros([32, 32, 3], tf.uint8), 32, augment_name="v2")


def test_views_run_inside_dataset_map():
    images = np.random.default_rng(7).integers(0, 256, (4, 40, 48, 3)).astype(np.uint8)
    ds = tf.data.Dataset.from_tensor_slices(images).enumerate().map(
        lambda i, img: preprocess.train_view(img, 24, seed=tf.stack([tf.cast(i, tf.int32), 11])))
    out = np.stack(list(ds.as_numpy_iterator()))
    assert out.shape == (4, 24, 24, 3) and out.dtype == np.float32
