"""ImageNet-C style image corruptions at severities 1-5, deterministic given a seed.

The 14 families of the ImageNet-C benchmark (Hendrycks & Dietterich, "Benchmarking
Neural Network Robustness to Common Corruptions and Perturbations", ICLR 2019) that
need no external image assets, in `CORRUPTIONS` order. Severity parameters are the
benchmark's published ones (its ImageNet-C generation script), listed in `PARAMS`;
the code here is our own (NumPy, plus PIL for JPEG and the box resize of pixelate).
Frost is left out: it blends in photographs of frost that are not part of `nst`.
Glass blur, snow, spatter and speckle noise are not in the list asked for.

Images are uint8 `[N, H, W, 3]` or `[H, W, 3]` in 0..255; the result has the same
shape and dtype. Work is done in float64 on 0..1 pixels, like the benchmark, then
clipped and rounded to the nearest integer (the benchmark truncates; rounding keeps
an all-zero perturbation an identity).

Resolution. The benchmark's pixel-valued parameters are meant for 224x224 images.
Here every parameter measured in pixels is multiplied by `s = min(H, W) / 224`:
gaussian blur sigma, defocus disk radius (the 0.1 / 0.5 pixel anti-alias blur is kept
as is: it removes aliasing of the pixel grid, which does not scale), motion blur
length and sigma, elastic displacement amplitude, smoothing sigma and affine jitter.
Parameters that are already relative are unchanged: zoom factors, the pixelate
factor (a fraction of the side), contrast, brightness, saturation, JPEG quality and
the noise levels (per pixel). The fog's plasma fractal is drawn on a power-of-two
map 256/224 times the larger side, its central 224/256 crop is resized bilinearly
to the image, so the fog has the same structure relative to the image at any size
(at 224 this is the benchmark's 256 map cropped to 224).

Motion blur: the benchmark calls ImageMagick's motion blur; here it is our own
one-sided line kernel (gaussian weights exp(-i^2 / 2 sigma^2), i = 0..radius-1, at a
random angle in [-45, 45] degrees, offsets rounded to whole pixels, edges clamped).

Determinism. Every image draws its randomness from its own NumPy generator seeded by
(seed, index, family) -- the severities of one image share their draws -- where `index` is the image's position in the data
set: `corrupt(images, ..., indices=...)` takes the indices (default 0..N-1), so one
image gives the same bytes in any batch, alone or with others.
"""

import io

import numpy as np

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "gaussian_blur", "motion_blur", "zoom_blur",
    "contrast", "brightness", "saturate",
    "jpeg_compression", "pixelate", "elastic_transform", "fog",
)
SEVERITIES = (1, 2, 3, 4, 5)

# The benchmark's published severity parameters, severity 1..5, for 224x224 images
# on 0..1 pixels (pixel-valued entries are scaled by min(H, W) / 224, see above).
PARAMS = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),   # noise std
    "shot_noise": (60, 25, 12, 5, 3),                    # Poisson rate per unit
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),     # salt & pepper fraction
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),  # radius, alias
    "gaussian_blur": (1, 2, 3, 4, 6),                    # sigma
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),  # radius, sigma
    "zoom_blur": ((1.0, 1.11, 0.01), (1.0, 1.16, 0.01), (1.0, 1.21, 0.02),
                  (1.0, 1.26, 0.02), (1.0, 1.31, 0.03)),  # arange(start, stop, step)
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),              # factor about the mean
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),             # added to HSV value
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),  # S * a + b
    "jpeg_compression": (25, 18, 15, 10, 7),             # quality
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),              # side fraction
    # amplitude, smoothing sigma, affine jitter; the benchmark writes them as
    # multiples of 244 (sic), kept here.
    "elastic_transform": ((244 * 2, 244 * 0.7, 244 * 0.1),
                          (244 * 2, 244 * 0.08, 244 * 0.2),
                          (244 * 0.05, 244 * 0.01, 244 * 0.02),
                          (244 * 0.07, 244 * 0.01, 244 * 0.02),
                          (244 * 0.12, 244 * 0.01, 244 * 0.02)),
    "fog": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),  # strength, decay
}
REFERENCE_SIZE = 224


def check(names, severities):
    """Raise ValueError for an unknown corruption name or a severity outside 1-5.

    Called before any work starts, so a typo fails at once, naming the value and
    what is allowed.
    """
    for name in names:
        if name not in CORRUPTIONS:
            raise ValueError(
                f"Unknown corruption {name!r}; known corruptions: {', '.join(CORRUPTIONS)}.")
    for severity in severities:
        if isinstance(severity, bool) or severity not in SEVERITIES:
            raise ValueError(f"Severity {severity!r} is outside 1-5 (allowed: 1, 2, 3, 4, 5).")


def _rng(seed, index, name):
    """The generator of one image: a function of (seed, index, family) only.

    The severity is left out on purpose: the five severities of one image then share
    their random draws (same noise pattern, fog map, angle), so they differ only in
    strength.
    """
    entropy = [int(seed) & 0xFFFFFFFF, int(index), CORRUPTIONS.index(name)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


# --------------------------------------------------------------------------- helpers


def _fold(idx, n, mode):
    """Map integer positions `idx` (any range) into 0..n-1 by the border `mode`.

    "nearest": clamp; "reflect": d c b a | a b c d | d c b a (edge repeated);
    "mirror": d c b | a b c d | c b a (edge not repeated).
    """
    idx = np.asarray(idx)
    if mode == "nearest" or n == 1:
        return np.clip(idx, 0, n - 1)
    if mode == "reflect":
        m = np.mod(idx, 2 * n)
        return np.where(m < n, m, 2 * n - 1 - m)
    if mode == "mirror":
        m = np.mod(idx, 2 * n - 2)
        return np.where(m < n, m, 2 * n - 2 - m)
    raise ValueError(mode)


def _filter_matrix(n, taps, mode):
    """[n, n] matrix applying the centred 1-D kernel `taps` (odd length) with `mode`.

    Correlation of a length-n signal with the kernel, borders folded into the matrix:
    y = M @ x. Lets a long kernel (elastic smoothing) cost one matrix product.
    """
    half = len(taps) // 2
    rows = np.repeat(np.arange(n), len(taps))
    cols = _fold(np.arange(n)[:, None] + np.arange(-half, half + 1)[None, :], n, mode)
    matrix = np.zeros((n, n))
    np.add.at(matrix, (rows, cols.ravel()), np.tile(taps, n))
    return matrix


def _gaussian_taps(sigma, truncate):
    """Normalised 1-D gaussian of radius int(truncate * sigma + 0.5)."""
    radius = max(int(truncate * sigma + 0.5), 0)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (t / max(sigma, 1e-12)) ** 2)
    return taps / taps.sum()


def _gaussian_filter(x, sigma, mode="nearest", truncate=4.0):
    """Separable gaussian blur over the two spatial axes of [H, W, ...] `x`."""
    taps = _gaussian_taps(sigma, truncate)
    rows = _filter_matrix(x.shape[0], taps, mode).astype(x.dtype)
    cols = _filter_matrix(x.shape[1], taps, mode).astype(x.dtype)
    x = np.tensordot(rows, x, axes=(1, 0))
    return np.moveaxis(np.tensordot(cols, x, axes=(1, 1)), 0, 1)


def _correlate2d(x, kernel, mode):
    """[H, W, C] `x` correlated with a 2-D kernel (odd sides), borders by `mode`."""
    kh, kw = kernel.shape
    h, w = x.shape[:2]
    ys = _fold(np.arange(-(kh // 2), h + kh // 2), h, mode)
    xs = _fold(np.arange(-(kw // 2), w + kw // 2), w, mode)
    padded = x[ys][:, xs]
    out = np.zeros_like(x)
    for i in range(kh):
        for j in range(kw):
            if kernel[i, j] != 0:
                out += kernel[i, j] * padded[i:i + h, j:j + w]
    return out


def _bilinear(x, ys, xs, mode):
    """Sample [H, W, C] `x` at float positions `ys`, `xs` ([H', W']), borders by `mode`."""
    h, w = x.shape[:2]
    y0, x0 = np.floor(ys), np.floor(xs)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    ya, yb = _fold(y0, h, mode), _fold(y0 + 1, h, mode)
    xa, xb = _fold(x0, w, mode), _fold(x0 + 1, w, mode)
    top = x[ya, xa] * (1 - fx) + x[ya, xb] * fx
    bottom = x[yb, xa] * (1 - fx) + x[yb, xb] * fx
    return top * (1 - fy) + bottom * fy


def _scale(image):
    """Pixel-valued parameters are multiplied by this: min(H, W) / 224."""
    return min(image.shape[:2]) / REFERENCE_SIZE


def rgb_to_hsv(x):
    """[..., 3] RGB in 0..1 -> HSV in 0..1 (hue as a fraction of a turn)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(axis=-1)
    delta = v - x.min(axis=-1)
    s = np.where(v > 0, delta / np.where(v > 0, v, 1), 0.0)
    d = np.where(delta > 0, delta, 1)
    h = np.where(v == r, (g - b) / d, np.where(v == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    h = np.where(delta > 0, np.mod(h / 6.0, 1.0), 0.0)
    return np.stack([h, s, v], axis=-1)


def hsv_to_rgb(x):
    """[..., 3] HSV in 0..1 -> RGB in 0..1 (inverse of `rgb_to_hsv`)."""
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    sector = np.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = sector.astype(np.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = [np.choose(sector, [c[k] for c in choices]) for k in range(3)]
    return np.stack(out, axis=-1)


def disk_kernel(radius, alias_sigma):
    """Defocus kernel: the pixel disk x^2 + y^2 <= radius^2, normalised, then blurred
    by a 3x3 gaussian of `alias_sigma` and normalised again (sums to 1).

    Side 2 * max(ceil(radius), 1) + 3 (the disk plus room for the 3x3 blur).
    """
    r = max(int(np.ceil(radius)), 1) + 1
    t = np.arange(-r, r + 1)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    taps = np.exp(-0.5 * (np.arange(-1, 2) / alias_sigma) ** 2)
    taps /= taps.sum()
    kernel = _correlate2d(disk[..., None], np.outer(taps, taps), "nearest")[..., 0]
    return kernel / kernel.sum()


def plasma_fractal(size, decay, rng):
    """[size, size] diamond-square height map in 0..1 (`size` a power of two), on a
    torus; the random offsets start at +-100^2 and shrink by `decay` per level."""
    grid = np.zeros((size, size))
    step, amplitude = size, 100.0

    def jitter(shape):
        return amplitude * rng.uniform(-amplitude, amplitude, shape)

    while step >= 2:
        half = step // 2
        corners = grid[0::step, 0::step]
        # squares: centre = mean of the four corners + jitter
        total = corners + np.roll(corners, -1, axis=0)
        total = total + np.roll(total, -1, axis=1)
        grid[half::step, half::step] = total / 4 + jitter(total.shape)
        centres = grid[half::step, half::step]
        # diamonds: edge midpoints = mean of two corners and two centres + jitter
        across = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        grid[0::step, half::step] = across / 4 + jitter(across.shape)
        down = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        grid[half::step, 0::step] = down / 4 + jitter(down.shape)
        step, amplitude = half, amplitude / decay
    grid -= grid.min()
    return grid / grid.max()


def _resize_bilinear(x, height, width):  # uses _separable_resample, defined below
    """[h, w, C] -> [height, width, C], pixel centres aligned (half-pixel)."""
    h, w = x.shape[:2]
    ys = (np.arange(height) + 0.5) * h / height - 0.5
    xs = (np.arange(width) + 0.5) * w / width - 0.5
    return _separable_resample(x, ys, xs)


# ------------------------------------------------------------------------ families
# Each takes one float image [H, W, 3] in 0..1, its parameter and a generator, and
# returns a float image (clipped by the caller).


def _gaussian_noise(x, c, rng):
    return x + rng.normal(scale=c, size=x.shape)


def _shot_noise(x, c, rng):
    return rng.poisson(x * c) / c


def _impulse_noise(x, c, rng):
    # Every value (pixel and channel) independently: pepper with probability c/2,
    # salt with probability c/2.
    u = rng.random(x.shape)
    return np.where(u < c / 2, 0.0, np.where(u < c, 1.0, x))


def _defocus_blur(x, c, rng):
    radius, alias = c
    from scipy import ndimage

    kernel = disk_kernel(radius * _scale(x), alias)[..., None]
    return ndimage.correlate(x, kernel, mode="mirror")


def _gaussian_blur(x, c, rng):
    return _gaussian_filter(x, c * _scale(x), mode="nearest")


def motion_kernel_offsets(radius, sigma, angle_deg):
    """Taps of the line kernel: integer (dy, dx) offsets and weights summing to 1."""
    length = max(int(round(radius)), 1)
    i = np.arange(length, dtype=np.float64)
    weights = np.exp(-0.5 * (i / max(sigma, 1e-12)) ** 2)
    theta = np.deg2rad(angle_deg)
    dy = np.rint(i * np.sin(theta)).astype(np.int64)
    dx = np.rint(i * np.cos(theta)).astype(np.int64)
    return dy, dx, weights / weights.sum()


def _motion_blur(x, c, rng):
    radius, sigma = c
    s = _scale(x)
    dy, dx, weights = motion_kernel_offsets(radius * s, sigma * s, rng.uniform(-45, 45))
    h, w = x.shape[:2]
    out = np.zeros_like(x)
    for oy, ox, wt in zip(dy, dx, weights):
        ys = _fold(np.arange(h) + oy, h, "nearest")
        xs = _fold(np.arange(w) - ox, w, "nearest")
        out += wt * x[ys][:, xs]
    return out


def _interp_axis(x, positions, axis):
    """Linear interpolation of `x` along `axis` at float `positions`, edges clamped."""
    n = x.shape[axis]
    positions = np.clip(positions, 0, n - 1)
    low = np.floor(positions).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = len(positions)
    frac = (positions - low).astype(x.dtype).reshape(shape)
    return np.take(x, low, axis=axis) * (1 - frac) + np.take(x, high, axis=axis) * frac


def _separable_resample(x, ys, xs):
    """[H, W, C] `x` sampled on the grid ys x xs (1-D float positions), bilinear:
    one pass per axis (gathers, no dense matrix)."""
    return _interp_axis(_interp_axis(x, ys, 0), xs, 1)


def _zoom(x, factor):
    """Zoom into the centre by `factor` (>= 1), bilinear, same size."""
    h, w = x.shape[:2]
    ys = (np.arange(h) - (h - 1) / 2) / factor + (h - 1) / 2
    xs = (np.arange(w) - (w - 1) / 2) / factor + (w - 1) / 2
    return _separable_resample(x, ys, xs)


def _zoom_blur(x, c, rng):
    start, stop, step = c
    factors = np.arange(start, stop, step)
    out = x.copy()
    for factor in factors:
        out += _zoom(x, factor)
    return out / (len(factors) + 1)


def _contrast(x, c, rng):
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * c + means


def _brightness(x, c, rng):
    hsv = rgb_to_hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return hsv_to_rgb(hsv)


def _saturate(x, c, rng):
    hsv = rgb_to_hsv(x)
    hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
    return hsv_to_rgb(hsv)


def _to_pil(x):
    from PIL import Image
    return Image.fromarray(np.clip(np.rint(x * 255), 0, 255).astype(np.uint8))


def _jpeg_compression(x, c, rng):
    from PIL import Image
    buffer = io.BytesIO()
    _to_pil(x).save(buffer, format="JPEG", quality=int(c))
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float64) / 255


def _pixelate(x, c, rng):
    from PIL import Image
    h, w = x.shape[:2]
    small = _to_pil(x).resize((max(int(w * c), 1), max(int(h * c), 1)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX), dtype=np.float64) / 255


def _affine_from_points(src, dst):
    """2x3 matrix A with A @ [p, 1] = q for the three point pairs (p in src, q in dst)."""
    ones = np.ones((3, 1))
    return np.linalg.solve(np.hstack([src, ones]), dst).T


def _elastic_transform(x, c, rng):
    s = _scale(x)
    alpha, sigma, jitter = (v * s for v in c)
    h, w = x.shape[:2]
    # Random affine: three points around the centre (x, y order) moved by +-jitter.
    centre = np.array([w // 2, h // 2], dtype=np.float64)
    side = min(h, w) // 3
    src = np.array([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    dst = src + rng.uniform(-jitter, jitter, size=src.shape)
    inverse = _affine_from_points(dst, src)  # output position -> input position
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                         indexing="ij")
    sx = inverse[0, 0] * xx + inverse[0, 1] * yy + inverse[0, 2]
    sy = inverse[1, 0] * xx + inverse[1, 1] * yy + inverse[1, 2]
    x = _bilinear(x, sy, sx, "mirror")
    # Smooth random displacement field.
    dx = _gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, "reflect", truncate=3) * alpha
    dy = _gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, "reflect", truncate=3) * alpha
    return _bilinear(x, yy + dy, xx + dx, "reflect")


def _fog(x, c, rng):
    strength, decay = c
    h, w = x.shape[:2]
    side = max(h, w) * 256 / REFERENCE_SIZE
    size = 1 << int(np.ceil(np.log2(max(side, 2))))
    crop = max(int(round(size * REFERENCE_SIZE / 256)), 1)
    fog = plasma_fractal(size, decay, rng)[:crop, :crop, None]
    if (crop, crop) != (h, w):
        fog = _resize_bilinear(fog, h, w)
    peak = x.max()
    return (x + strength * fog) * peak / (peak + strength)


_FAMILIES = {name: globals()["_" + name] for name in CORRUPTIONS}


# ------------------------------------------------------------------------- public


def corrupt_one(image, name, severity, seed, index=0):
    """One uint8 [H, W, 3] image corrupted; deterministic in (seed, index)."""
    check([name], [severity])
    x = np.asarray(image, dtype=np.float32) / np.float32(255)  # float32: half the BLAS work
    c = PARAMS[name][severity - 1]
    y = _FAMILIES[name](x, c, _rng(seed, index, name))
    return np.rint(np.clip(y, 0, 1) * 255).astype(np.uint8)


def corrupt(images, name, severity, seed, indices=None):
    """Corrupt uint8 images [N, H, W, 3] (or one [H, W, 3]) -> uint8, same shape.

    `indices` ([N] ints, default 0..N-1) are the images' positions in the data set:
    image i draws its randomness from (seed, indices[i], name) alone, so a
    batch of 4 gives the same bytes as the 4 images one at a time.
    """
    check([name], [severity])
    images = np.asarray(images)
    if images.ndim == 3:
        index = 0 if indices is None else int(np.ravel(indices)[0])
        return corrupt_one(images, name, severity, seed, index)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3] or [H, W, 3], got {images.shape}.")
    if indices is None:
        indices = np.arange(len(images))
    indices = np.asarray(indices).reshape(-1)
    if len(indices) != len(images):
        raise ValueError(f"{len(indices)} indices for {len(images)} images.")
    out = np.empty(images.shape, dtype=np.uint8)
    for i, (image, index) in enumerate(zip(images, indices)):
        out[i] = corrupt_one(image, name, severity, seed, index)
    return out


def corrupt_tf(image, name, severity, seed, index):
    """TensorFlow op: one image tensor [H, W, 3] (any dtype in 0..255) -> uint8.

    Runs `corrupt_one` through tf.numpy_function, so it works inside tf.data maps;
    `index` (scalar int tensor) is the image's position in the data set.
    """
    import tensorflow as tf

    check([name], [severity])
    image = tf.convert_to_tensor(image)
    pixels = tf.cast(tf.clip_by_value(tf.round(tf.cast(image, tf.float32)), 0, 255), tf.uint8)

    def run(pixels_np, index_np):
        return corrupt_one(pixels_np, name, severity, seed, int(index_np))

    out = tf.numpy_function(run, [pixels, tf.cast(index, tf.int64)], tf.uint8, stateful=False)
    out.set_shape(image.shape)
    return out


def corrupted_dataset(dataset, name, severity, seed, image_key="image",
                      num_parallel_calls=None):
    """Map a tf.data.Dataset of single images to their corrupted uint8 versions.

    Elements may be an image tensor [H, W, 3], a tuple whose first item is the image
    (e.g. (image, label)), or a dict holding the image under `image_key`; the other
    parts pass through. The dataset must be unbatched: the element's position
    (tf.data enumerate) is the image index of `corrupt`, so results do not depend on
    batching; the map is parallel (AUTOTUNE by default) and keeps order.
    """
    import tensorflow as tf

    check([name], [severity])
    calls = tf.data.AUTOTUNE if num_parallel_calls is None else num_parallel_calls

    def apply(index, element):
        if isinstance(element, dict):
            element = dict(element)
            element[image_key] = corrupt_tf(element[image_key], name, severity, seed, index)
            return element
        if isinstance(element, tuple):
            return (corrupt_tf(element[0], name, severity, seed, index),) + element[1:]
        return corrupt_tf(element, name, severity, seed, index)

    return dataset.enumerate().map(apply, num_parallel_calls=calls, deterministic=True)


def _batched_dataset(images, name, severity, seed, batch):
    """Batches of `batch` images corrupted by one tf.numpy_function each (parallel map):
    the per-call overhead is paid once a batch, as an evaluation loop would."""
    import tensorflow as tf

    def run(pixels, first):
        indices = int(first) + np.arange(len(pixels))
        return corrupt(pixels, name, severity, seed, indices=indices)

    def apply(number, pixels):
        out = tf.numpy_function(run, [pixels, number * batch], tf.uint8, stateful=False)
        out.set_shape(pixels.shape)
        return out

    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch).enumerate()
    return dataset.map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def benchmark(size=32, count=1000, seed=0, severity=3, batch=100):
    """Print the corruption cost per image of every family (ms): `count` random
    [size, size, 3] images through `corrupted_dataset` (one call per image) and
    through batches of `batch` (one call per batch), both parallel tf.data maps."""
    import time

    import tensorflow as tf

    images = np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), np.uint8)
    results = {}
    for name in CORRUPTIONS:
        per_image = corrupted_dataset(tf.data.Dataset.from_tensor_slices(images), name,
                                      severity, seed).batch(batch)
        batched = _batched_dataset(images, name, severity, seed, batch)
        times = []
        for dataset in (per_image, batched):
            start = time.perf_counter()
            for _ in dataset:
                pass
            times.append((time.perf_counter() - start) / count * 1e3)
        results[name] = tuple(times)
        print(f"{name:18s} {times[0]:7.3f} ms/image per-image map, {times[1]:7.3f} batched "
              f"({size}x{size}, severity {severity})", flush=True)
    return results


if __name__ == "__main__":
    benchmark()
