"""nst: Noisy Student Training on TensorFlow 2 / Keras 3.

TensorFlow itself is an extra so that a Cloud TPU VM keeps its own
`tensorflow-tpu` build:
  pip install -e ".[cpu]"   # standard TensorFlow wheel (CPU / GPU machines)
  pip install -e ".[tpu]"   # TPU VM: uses the tensorflow-tpu already installed
"""

from setuptools import find_packages, setup

TENSORFLOW = "tensorflow>=2.21,<2.22"
# The filter stage on Apache Beam (`nst-filter-unlabel-beam`, docs/pseudo_labels.md).
# protobuf: apache-beam 2.77 needs <7, tensorflow 2.21 (and tensorboard 2.21) >=6.31.1.
BEAM = ["apache-beam>=2.77,<3", "protobuf>=6.31.1,<7"]  # google-crc32c: a core dependency

setup(
    name="nst",
    version="0.1.0",
    description="Noisy Student Training (Xie et al., 2019) on TensorFlow 2 / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nst", "nst.*"]),
    # The gin recipes (nst/recipes/<dataset>/*.gin) are package data: a wheel or a plain
    # `pip install .` finds them without the checkout. MANIFEST.in puts them in the sdist.
    package_data={"nst.recipes": ["*/*.gin"]},
    include_package_data=True,
    install_requires=[
        "keras>=3.15,<3.16",
        "tensorflow-datasets>=4.9,<4.10",
        "absl-py>=2.1",
        "gin-config>=0.5,<0.6",
        "numpy>=1.26",
        "h5py>=3.10",
        # tf.summary scalars need it; TensorFlow 2.21 no longer bundles it.
        "tensorboard>=2.20",
        # The offline demo data (sklearn's bundled digits) and SVHN .mat files.
        "scikit-learn>=1.4",
        "scipy>=1.11",
        # Plots of the pipeline report (nst.report), Agg backend only.
        "matplotlib>=3.8",
        # JPEG and pixelate corruptions (nst.robustness.corruptions).
        "pillow>=10",
        # CRC32C of TFRecord framing written off the Python thread (nst.data.record_file).
        "google-crc32c>=1.5",
    ],
    extras_require={
        "cpu": [TENSORFLOW],
        # Cloud TPU VMs ship `tensorflow-tpu`; depending on `tensorflow` here
        # would make pip install a second, CPU-only TensorFlow over it.
        "tpu": [],
        "beam": BEAM,
        # The Beam extra too, so that the Beam pipeline's tests run in CI; pytest-xdist
        # runs the suite in two processes (pytest.ini).
        "test": [TENSORFLOW, "pytest>=8", "pytest-xdist>=3.5"] + BEAM,
    },
    entry_points={
        "console_scripts": [
            "nst-main=nst.main:cli",
            "nst-pipeline=nst.pipeline:cli",
            "nst-filter-unlabel=nst.filter_unlabel:cli",
            "nst-filter-unlabel-beam=nst.pseudo.beam:cli",
            "nst-model-table=nst.models.table_cli:run",
            "nst-convert-checkpoint=nst.models.convert_cli:run",
            "nst-make-digits=nst.data.make_dataset:digits_cli",
            "nst-make-fashion-mnist=nst.data.make_dataset:fashion_mnist_cli",
            "nst-pseudo-label-beam=nst.pseudo.beam_predict:cli",
            "nst-eval-robustness=nst.eval_robustness:cli",
            "nst-size-run=nst.sizing.cli:cli",
        ],
    },
)
