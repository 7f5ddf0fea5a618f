"""The docs/tpu.md tables (`--markdown`) and the measured checks (`--check`)."""

import json
import subprocess
import time

from nst.sizing import devices, estimate as estimate_lib, measure, recipe, timing

GIB = 2 ** 30
MODELS = [f"efficientnet-b{i}" for i in range(8)] + ["efficientnet-l2"]
TABLE_BATCH = 32  # per replica, for the memory and step-time columns
ACCELERATORS = sorted(devices.DEVICES)
RECIPES = [("imagenet/noisy_student_l2.gin", "tpu-v3", 2048),
           ("imagenet/noisy_student_l2.gin", "tpu-v4", 1024),
           ("imagenet/noisy_student_l2.gin", "tpu-v5p", 1024),
           ("imagenet/noisy_student_l2.gin", "h100", 1024),
           ("svhn/pipeline_online.gin", "tpu-v3", 8)]
# The paper (§3 of Xie et al. 2019): EfficientNet-L2 trains in about 6 days on a
# 2048-core TPU v3 pod when the unlabeled batch is 14x the labeled one.
PAPER_L2_DAYS = 6.0


def _models_table(utilization):
    lines = [f"Per replica, bfloat16, supervised (U = 0); memory and step time at "
             f"B = {TABLE_BATCH} per replica, {utilization:.0%} of the roofline "
             "(nst/sizing/timing.py).", "",
             "| model | px | device | fixed GiB | act. MiB/img | GiB at B=32 | largest B | "
             "step s at B=32 | images/s |", "|---|---|---|---|---|---|---|---|---|"]
    for name in MODELS:
        job = recipe.from_model(name, None, TABLE_BATCH, "bfloat16")
        for device in ACCELERATORS:
            e = estimate_lib.estimate(job, device, 1, utilization)
            lines.append(
                f"| {name} | {job.image_size} | {device} | {sum(e.fixed.values()) / GIB:.2f} | "
                f"{e.student_row_bytes / 2 ** 20:.0f} | {e.step_bytes / GIB:.1f} | "
                f"{e.largest_batch} | {e.step_seconds:.3f} | "
                f"{TABLE_BATCH / e.step_seconds:,.0f} |")
    return lines


def _recipes_table(utilization):
    lines = [f"Days per stage at {utilization:.0%} of the roofline (B, U per replica from the "
             "recipe's batch and unlabel_ratio; `fits` compares B with the largest B).", "",
             "| recipe | device x replicas | stage | model | px | B + U | GiB/replica | "
             "largest B | s/step | days |", "|---|---|---|---|---|---|---|---|---|---|"]
    for gin_file, device, n in RECIPES:
        total = 0.0
        for job in recipe.from_gin(gin_file):
            e = estimate_lib.estimate(job, device, n, utilization)
            total += e.days
            lines.append(
                f"| {gin_file} | {n} x {device} | {job.name} | {job.student.name} | "
                f"{job.image_size} | {e.labeled} + {e.unlabeled} | {e.step_bytes / GIB:.1f}"
                f"{'' if e.fits else ' (does not fit)'} | {e.largest_batch} | "
                f"{e.step_seconds:.3f} | {e.days:.2f} |")
        lines.append(f"| {gin_file} | {n} x {device} | **all** | | | | | | | **{total:.1f}** |")
    return lines


def l2_student():
    """The first EfficientNet-L2 student of the L2 recipe (U = 14 B) on 2048 v3 cores, at 100 %."""
    jobs = [j for j in recipe.from_gin("imagenet/noisy_student_l2.gin")
            if j.name == "student-1"]
    return estimate_lib.estimate(jobs[0], "tpu-v3", 2048, 1.0)


def l2_reconciliation():
    """(days of one ratio-14 L2 student at 100 % of the roofline, utilisation giving 6 days).

    A TPU has no per-op overhead in the model, so days scale as 1 / utilisation.
    """
    e = l2_student()
    return e.days, e.days / PAPER_L2_DAYS


def markdown(utilization=timing.DEFAULT_UTILIZATION) -> str:
    e = l2_student()
    parts = e.step_parts
    ideal, reconciling = e.days, e.days / PAPER_L2_DAYS
    lines = _models_table(utilization) + [""] + _recipes_table(utilization) + [
        "", f"One EfficientNet-L2 student of the L2 recipe (475 px, B = {e.labeled} + "
        f"U = {e.unlabeled} per core) on 2048 TPU v3 cores at 100 % of the roofline: "
        f"{e.step_seconds:.3f} s per step (forward {parts['forward']:.3f}, backward "
        f"{parts['backward']:.3f}, update {parts['update']:.3f}), {e.steps:,} steps = "
        f"{ideal:.2f} days; the paper's ~{PAPER_L2_DAYS:.0f} days correspond to "
        f"{reconciling:.1%} utilisation."]
    devs = ["", "| device | per | memory GiB | bf16 TFLOP/s | fp32 TFLOP/s | HBM GB/s | "
            "XLA fusion | source |", "|---|---|---|---|---|---|---|---|"]
    for name in ACCELERATORS:
        d = devices.DEVICES[name]
        fp32 = f"{d['fp32_tflops']:.1f}" + (f" ({d['fp32_note']})" if "fp32_note" in d else "")
        devs.append(f"| {name} | {d['per']} | {d['memory_bytes'] / GIB:.1f} | "
                    f"{d['bf16_tflops']:.1f} | {fp32} | {d['bandwidth_gbs']:,.0f} | "
                    f"{'yes' if d['xla_fusion'] else 'no'} | {d['source']} |")
    return "\n".join(devs[1:] + [""] + lines)


# (model, px, small digits variant, the two batch sizes, timed steps at the larger).
# B0 at 224 with batches 2 and 10 keeps the whole check to a few minutes; the gap
# must be wide enough that the step, not tracing, sets the larger batch's peak.
CASES = [("efficientnet-b0", 32, True, (16, 80), 5),
         ("efficientnet-b0", 224, False, (2, 10), 3)]


def _load():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _rates_line(r):
    bw = ", ".join(f"{b / 2 ** 20:g} MiB {g:.1f}" for b, g in r["bandwidth"])
    return (f"this CPU: matmul {r['matmul_gflops']:.0f} GFLOP/s, depthwise "
            f"{r['depthwise_gflops']:.1f} forward / {r['depthwise_backward_gflops']:.1f} "
            f"backward GFLOP/s, {r['op_overhead_us']:.1f} us per op, element-wise GB/s by "
            f"bytes per op: {bw}")


def check(cases=CASES) -> str:
    """Estimates against measured steps on this CPU, with the load average.

    The CPU's rates are measured first, then each case's steps, in one go.
    """
    from nst.sizing import cpu_rates
    before = _load()
    rates = cpu_rates.measure()
    rows = [time.strftime("%Y-%m-%d %H:%M"), f"before: {before}", _rates_line(rates),
            "| model | px | batches | act. MiB/img est. | measured | ratio | "
            "step s est. | measured | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    results = []
    for case in cases:
        r = measure.check_case(*case, cpu_rates=rates)
        results.append(r)
        a, s = r["activation_mib_per_row"], r["step_seconds"]
        rows.append(f"| {r['model']} | {r['image_size']} | {r['batches']} | "
                    f"{a['estimate']:.2f} | {a['measured']:.2f} | {a['ratio']:.2f} | "
                    f"{s['estimate']:.3f} | {s['measured']:.3f} | {s['ratio']:.2f} |")
    rows.append(f"after: {_load()}")
    ideal, reconciling = l2_reconciliation()
    rows.append(f"L2 student on 2048 TPU v3 cores: {ideal:.2f} days at 100 % of the roofline; "
                f"paper ~{PAPER_L2_DAYS:.0f} days -> {reconciling:.1%} utilisation")
    return "\n".join(rows) + "\n" + json.dumps({"rates": rates, "cases": results})
