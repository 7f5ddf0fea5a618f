"""The accelerator table: memory, peak rates and memory bandwidth per replica, with sources.

Data only, plus `get`. One row is one *replica* as `tf.distribute` counts
them: a TPU v3 chip has two TensorCores, each its own replica with half of
the chip's 32 GiB and 900 GB/s (the paper's "2048 cores" are 1024 chips);
TPU v4, v5e and v5p chips are one replica each (v4's two TensorCores run as
one "megacore"); a GPU is one replica.

Rates are peak dense FLOP/s (no sparsity). Google publishes no float32 rate
for TPUs; their `fp32_tflops` is bf16 / 6, the cost of full-precision
float32 matmuls as six bfloat16 MXU passes — a derived figure, said so in
`fp32_note`. Depthwise convolutions do not map onto the matrix units (GPU
Tensor Cores, TPU MXUs); the timing model runs them at the `fp32_tflops`
column (GPUs: the datasheet's CUDA-core FP32 rate; TPUs: the derived figure,
an assumption). At that rate they are bandwidth-bound on every device here,
so the assumption barely moves the estimate.

`bandwidth_gbs` is the HBM bandwidth of one replica in 10^9 bytes/s.
`xla_fusion`: the step runs as one XLA program that fuses element-wise ops
into their neighbours (TPUs always compile; on GPUs nst's Trainer runs the
TensorFlow executor unless `jit_compile`), which changes the bytes moved
(nst/sizing/timing.py). `op_overhead_us` is 0 for accelerators: a TPU runs one
compiled program per step, and a GPU's host-side dispatch overlaps the
kernels unless the step is launch-bound (not modelled).
"""

GIB = 2 ** 30
GB = 10 ** 9

# name -> memory_bytes per replica, bf16 / fp32 peak TFLOP/s per replica, HBM GB/s
# per replica, source.
DEVICES = {
    "tpu-v3": dict(
        memory_bytes=16 * GIB, bf16_tflops=123.0 / 2, fp32_tflops=123.0 / 2 / 6,
        bandwidth_gbs=900.0 / 2, xla_fusion=True, op_overhead_us=0.0,
        per="core (2 per chip)",
        source="cloud.google.com/tpu/docs/v3 (system architecture: 123 TFLOPS bf16 and "
               "HBM2 32 GiB, 900 GBps per chip, 2 TensorCores per chip)",
        fp32_note="derived: bf16 / 6"),
    "tpu-v4": dict(
        memory_bytes=32 * GIB, bf16_tflops=275.0, fp32_tflops=275.0 / 6,
        bandwidth_gbs=1200.0, xla_fusion=True, op_overhead_us=0.0,
        per="chip",
        source="cloud.google.com/tpu/docs/v4 (key specifications: peak compute per chip "
               "275 TFLOPS bf16, HBM2 capacity and bandwidth 32 GiB, 1200 GBps)",
        fp32_note="derived: bf16 / 6"),
    "tpu-v5e": dict(
        memory_bytes=16 * GB, bf16_tflops=197.0, fp32_tflops=197.0 / 6,
        bandwidth_gbs=819.0, xla_fusion=True, op_overhead_us=0.0,
        per="chip",
        source="cloud.google.com/tpu/docs/v5e (peak compute per chip 197 TFLOPS bf16, "
               "HBM 16 GB and 819 GBps per chip)",
        fp32_note="derived: bf16 / 6"),
    "tpu-v5p": dict(
        memory_bytes=95 * GB, bf16_tflops=459.0, fp32_tflops=459.0 / 6,
        bandwidth_gbs=2765.0, xla_fusion=True, op_overhead_us=0.0,
        per="chip",
        source="cloud.google.com/tpu/docs/v5p (peak compute per chip 459 TFLOPS bf16, "
               "HBM 95 GB, HBM bandwidth per chip 2765 GBps)",
        fp32_note="derived: bf16 / 6"),
    "a100-40gb": dict(
        memory_bytes=40 * GB, bf16_tflops=312.0, fp32_tflops=19.5,
        bandwidth_gbs=1555.0, xla_fusion=False, op_overhead_us=0.0, per="GPU",
        source="NVIDIA A100 Tensor Core GPU datasheet (SXM: BF16 Tensor Core 312 TFLOPS "
               "dense, FP32 19.5 TFLOPS, 40 GB HBM2 at 1,555 GB/s)"),
    "a100-80gb": dict(
        memory_bytes=80 * GB, bf16_tflops=312.0, fp32_tflops=19.5,
        bandwidth_gbs=2039.0, xla_fusion=False, op_overhead_us=0.0, per="GPU",
        source="NVIDIA A100 Tensor Core GPU datasheet (SXM: BF16 Tensor Core 312 TFLOPS "
               "dense, FP32 19.5 TFLOPS, 80 GB HBM2e at 2,039 GB/s)"),
    "h100": dict(
        memory_bytes=80 * GB, bf16_tflops=989.0, fp32_tflops=67.0,
        bandwidth_gbs=3350.0, xla_fusion=False, op_overhead_us=0.0, per="GPU",
        source="NVIDIA H100 Tensor Core GPU datasheet (SXM: BF16 Tensor Core 1,979 TFLOPS "
               "with sparsity = 989 dense, FP32 67 TFLOPS, 80 GB HBM3 at 3.35 TB/s)"),
    "h200": dict(
        memory_bytes=141 * GB, bf16_tflops=989.0, fp32_tflops=67.0,
        bandwidth_gbs=4800.0, xla_fusion=False, op_overhead_us=0.0, per="GPU",
        source="NVIDIA H200 Tensor Core GPU datasheet (SXM: BF16 Tensor Core 1,979 TFLOPS "
               "with sparsity = 989 dense, FP32 67 TFLOPS, 141 GB HBM3e at 4.8 TB/s)"),
}

# "cpu" is this machine: its rates are measured (nst/sizing/cpu_rates.py, `nst-size-run
# --measure_cpu`), its memory is the machine's RAM. Without a measurement the rates
# recorded here (and in docs/tpu.md) are used.
CPU_RECORDED = dict(
    matmul_gflops=212.0,             # float32 2048 x 2048 matmul
    depthwise_gflops=30.6,           # 3x3 depthwise conv forward
    depthwise_backward_gflops=70.4,  # its input and filter gradients
    # (bytes read + written by one element-wise product of tensors no cache holds, GB/s)
    bandwidth=((3 * 2 ** 17, 26.3), (3 * 2 ** 19, 27.6), (3 * 2 ** 21, 37.8),
               (3 * 2 ** 23, 43.5), (3 * 2 ** 25, 45.3), (3 * 2 ** 27, 34.7)),
    op_overhead_us=1.0,              # one tiny op in a tf.function
    recorded="measured 2026-12-04 18:41 by nst-size-run --check, load average 0.9")
CPU_SOURCE = ("measured here (nst/sizing/cpu_rates.py: matmul, depthwise conv, element-wise "
              "bandwidth by tensor size, per-op overhead; nst-size-run --measure_cpu); "
              "memory: physical RAM")


def names():
    return sorted(DEVICES) + ["cpu"]


def _ram_bytes() -> int:
    import os
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def get(name: str, cpu_rates: dict = None) -> dict:
    """The row of `name` (a copy); the CPU row from `cpu_rates` (else CPU_RECORDED).

    Raises ValueError naming --device and the known names.
    """
    if name == "cpu":
        rates = dict(CPU_RECORDED, **(cpu_rates or {}))
        rate = rates["matmul_gflops"] / 1e3
        return dict(memory_bytes=_ram_bytes(), bf16_tflops=rate, fp32_tflops=rate,
                    per="machine", source=CPU_SOURCE, xla_fusion=False, cpu=rates)
    if name not in DEVICES:
        raise ValueError(f"--device={name!r} is not in the device table; "
                         f"known: {', '.join(names())}")
    return dict(DEVICES[name])


def peak_flops(device: dict, dtype: str) -> float:
    """Peak FLOP/s of one replica for `dtype` ("bfloat16" or "float32")."""
    return 1e12 * (device["bf16_tflops"] if dtype == "bfloat16" else device["fp32_tflops"])
