"""The accelerator table: memory and peak rates per replica, with sources.

Data only, plus `get` and the CPU measurement. One row is one *replica*
as `tf.distribute` counts them: a TPU v3 chip has two TensorCores, each its
own replica with 16 GiB of the chip's 32 GiB (the paper's "2048 cores" are
1024 chips); TPU v4, v5e and v5p chips are one replica each (v4's two
TensorCores run as one "megacore"); a GPU is one replica.

Rates are peak dense FLOP/s (no sparsity). Google publishes no float32 rate
for TPUs; their `fp32_tflops` is bf16 / 6, the cost of full-precision
float32 matmuls as six bfloat16 MXU passes — a derived figure, said so in
`fp32_note`.
"""

import time

GIB = 2 ** 30
GB = 10 ** 9

# name -> memory_bytes per replica, bf16 / fp32 peak TFLOP/s per replica, source.
DEVICES = {
    "tpu-v3": dict(
        memory_bytes=16 * GIB, bf16_tflops=123.0 / 2, fp32_tflops=123.0 / 2 / 6,
        per="core (2 per chip)",
        source="cloud.google.com/tpu/docs/v3 (system architecture: 123 TFLOPS bf16 and "
               "32 GiB HBM per chip, 2 TensorCores per chip)",
        fp32_note="derived: bf16 / 6"),
    "tpu-v4": dict(
        memory_bytes=32 * GIB, bf16_tflops=275.0, fp32_tflops=275.0 / 6,
        per="chip",
        source="cloud.google.com/tpu/docs/v4 (key specifications: peak compute per chip "
               "275 TFLOPS bf16, HBM2 32 GiB)",
        fp32_note="derived: bf16 / 6"),
    "tpu-v5e": dict(
        memory_bytes=16 * GB, bf16_tflops=197.0, fp32_tflops=197.0 / 6,
        per="chip",
        source="cloud.google.com/tpu/docs/v5e (peak compute per chip 197 TFLOPS bf16, "
               "HBM 16 GB per chip)",
        fp32_note="derived: bf16 / 6"),
    "tpu-v5p": dict(
        memory_bytes=95 * GB, bf16_tflops=459.0, fp32_tflops=459.0 / 6,
        per="chip",
        source="cloud.google.com/tpu/docs/v5p (peak compute per chip 459 TFLOPS bf16, "
               "HBM2e 95 GB)",
        fp32_note="derived: bf16 / 6"),
    "a100-40gb": dict(
        memory_bytes=40 * GB, bf16_tflops=312.0, fp32_tflops=19.5, per="GPU",
        source="NVIDIA A100 Tensor Core GPU datasheet (SXM: BF16 Tensor Core 312 TFLOPS "
               "dense, FP32 19.5 TFLOPS, 40 GB HBM2)"),
    "a100-80gb": dict(
        memory_bytes=80 * GB, bf16_tflops=312.0, fp32_tflops=19.5, per="GPU",
        source="NVIDIA A100 Tensor Core GPU datasheet (SXM: BF16 Tensor Core 312 TFLOPS "
               "dense, FP32 19.5 TFLOPS, 80 GB HBM2e)"),
    "h100": dict(
        memory_bytes=80 * GB, bf16_tflops=989.0, fp32_tflops=67.0, per="GPU",
        source="NVIDIA H100 Tensor Core GPU datasheet (SXM: BF16 Tensor Core 1,979 TFLOPS "
               "with sparsity = 989 dense, FP32 67 TFLOPS, 80 GB HBM3)"),
    "h200": dict(
        memory_bytes=141 * GB, bf16_tflops=989.0, fp32_tflops=67.0, per="GPU",
        source="NVIDIA H200 Tensor Core GPU datasheet (SXM: BF16 Tensor Core 1,979 TFLOPS "
               "with sparsity = 989 dense, FP32 67 TFLOPS, 141 GB HBM3e)"),
}

# "cpu" is this machine: its rate is measured (`measure_cpu_gflops`), its memory is
# the machine's RAM; the fallback rate is the one docs/tpu.md records for it.
CPU_FALLBACK_GFLOPS = 230.0
CPU_SOURCE = ("measured here: float32 matmul rate (nst-size-run --measure_cpu); "
              "memory: physical RAM")


def names():
    return sorted(DEVICES) + ["cpu"]


def _ram_bytes() -> int:
    import os
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def get(name: str, cpu_gflops: float = None) -> dict:
    """The row of `name` (a copy), with the CPU row made from `cpu_gflops`.

    Raises ValueError naming --device and the known names.
    """
    if name == "cpu":
        rate = (cpu_gflops or CPU_FALLBACK_GFLOPS) / 1e3
        return dict(memory_bytes=_ram_bytes(), bf16_tflops=rate, fp32_tflops=rate,
                    per="machine", source=CPU_SOURCE)
    if name not in DEVICES:
        raise ValueError(f"--device={name!r} is not in the device table; "
                         f"known: {', '.join(names())}")
    return dict(DEVICES[name])


def peak_flops(device: dict, dtype: str) -> float:
    """Peak FLOP/s of one replica for `dtype` ("bfloat16" or "float32")."""
    return 1e12 * (device["bf16_tflops"] if dtype == "bfloat16" else device["fp32_tflops"])


def measure_cpu_gflops(n: int = 2048, seconds: float = 2.0) -> float:
    """float32 GFLOP/s of an n x n matmul on this machine's TensorFlow (all threads).

    Repeats the product for about `seconds` after one warm-up; 2 n^3 FLOPs each.
    """
    import tensorflow as tf
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    tf.linalg.matmul(a, b).numpy()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        tf.linalg.matmul(a, b).numpy()
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - start) / 1e9
