"""Test set-up: quiet TensorFlow, two logical CPU devices, fixed seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nst  # noqa: E402,F401  (pins the Keras backend before keras is imported)
import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPUs stand in for two accelerators (MirroredStrategy tests).
# This must happen before TensorFlow initialises its devices.
_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # already initialised by an earlier import
    pass


@pytest.fixture(autouse=True)
def _seed_everything():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """The digits demo data (`make_digits_dataset`, 10 labels per class, seed 0): 100
    labeled train, 179 dev, 539 test, 979 unlabeled images, written once per test
    process (`make_digits_dataset` skips a complete directory)."""
    from nst.data.sources.digits import make_digits_dataset

    path = tmp_path_factory.getbasetemp() / "digits-10"
    make_digits_dataset(str(path), labels_per_class=10, seed=0)
    return str(path)


def write_fashion_idx(directory, train_per_class=30, test_per_class=4, gzipped=True,
                      seed=0):
    """A small Fashion-MNIST look-alike in the four original IDX files (no download).

    Each class is a blob of its own brightness and position, so a model can learn it.
    Returns {"train": (images, labels), "test": (images, labels)} as written.
    """
    import gzip

    import numpy as np

    from nst.data.sources import fashion_mnist, idx

    rng = np.random.RandomState(seed)
    os.makedirs(directory, exist_ok=True)
    written = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        images = rng.randint(0, 40, (len(labels), 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            row = 2 + 2 * int(c)
            images[i, row:row + 6, 4:24] = 100 + 15 * int(c)
        for array, name in zip((images, labels), fashion_mnist.FILES[split]):
            data = idx.encode(array)
            path = os.path.join(directory, name + (".gz" if gzipped else ""))
            with open(path, "wb") as f:
                f.write(gzip.compress(data, mtime=0) if gzipped else data)
        written[split] = images, labels.astype(np.int64)
    return written


@pytest.fixture(scope="session")
def fashion_idx():
    """`write_fashion_idx` for tests in any folder."""
    return write_fashion_idx
