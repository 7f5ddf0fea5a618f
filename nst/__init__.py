"""nst: Noisy Student Training on TensorFlow 2 / Keras 3.

Importing ``nst`` pins Keras to its TensorFlow backend: the library builds
``tf.distribute`` strategies, ``tf.data`` pipelines and ``tf.train``
checkpoints around Keras layers, which only works with that backend.
"""

import os
import sys

_BACKEND = "tensorflow"

if "keras" in sys.modules:
    # Keras reads KERAS_BACKEND once, at its first import.
    _active = sys.modules["keras"].backend.backend()
    if _active != _BACKEND:
        raise ImportError(
            f"nst needs the Keras '{_BACKEND}' backend, but Keras was already "
            f"imported with the '{_active}' backend. Import nst before keras, "
            f"or set KERAS_BACKEND={_BACKEND}.")
else:
    os.environ["KERAS_BACKEND"] = _BACKEND

try:
    import tensorflow as _tf  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "nst needs TensorFlow 2.21. Install it with `pip install nst[cpu]` "
        "(standard TensorFlow), or use the machine's own `tensorflow-tpu` on "
        "a Cloud TPU VM (`pip install nst[tpu]`).") from e

__version__ = "0.1.0"
