"""`nst-size-run`: memory, largest batch and time of a model or a recipe on a device.

    nst-size-run --model_name=efficientnet-b7 --batch_size=1024 --device=tpu-v3 --num_cores=512
    nst-size-run --gin_file=imagenet/noisy_student_l2.gin --device=tpu-v3 --num_cores=2048
    nst-size-run --markdown          # the tables of docs/tpu.md
    nst-size-run --check             # estimates against this CPU (slow: builds B0 at 224)

Estimates only: see nst/sizing/memory.py and timing.py for the rules and
docs/tpu.md ("Sizing a run") for how they compare with measurements.
"""

import json

from absl import app, flags

from nst import cli_errors
from nst.sizing import devices, estimate as estimate_lib, memory, recipe, timing

FLAGS = flags.FLAGS
flags.DEFINE_string("model_name", None, "A model name (e.g. efficientnet-b0); or --gin_file.")
flags.DEFINE_integer("image_size", None, "Resolution; default: the model's own.")
flags.DEFINE_string("gin_file", None, "A recipe (path or shipped name, e.g. "
                    "imagenet/noisy_student_l2.gin): every training stage.")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings applied after --gin_file.")
flags.DEFINE_integer("batch_size", 128, "--model_name: global labeled batch.")
flags.DEFINE_float("unlabel_ratio", 0.0, "--model_name: unlabeled rows per labeled row.")
flags.DEFINE_integer("train_steps", 0, "--model_name: steps for the wall time.")
flags.DEFINE_enum("dtype", None, ["bfloat16", "float32"],
                  "Compute dtype; default: the recipe's use_bfloat16, else float32.")
flags.DEFINE_string("device", "tpu-v3", f"One of: {', '.join(devices.names())}.")
flags.DEFINE_integer("num_replicas", None, "Replicas (TPU v3: cores; others: chips/GPUs).")
flags.DEFINE_integer("num_cores", None, "Alias of --num_replicas (the paper counts v3 cores).")
flags.DEFINE_float("utilization", None,
                   "Fraction of the roofline (peak compute and bandwidth) a step achieves, "
                   "in (0, 1]; default: accelerators "
                   f"{timing.DEFAULT_UTILIZATION}, --device=cpu {timing.CPU_UTILIZATION} "
                   "(its rates are measured).")
flags.DEFINE_float("reserve", memory.RESERVE, "Fraction of device memory kept free.")
flags.DEFINE_bool("measure_cpu", False, "Measure this CPU's rates (matmul, depthwise, "
                  "bandwidth, per-op overhead; ~15 s) for --device=cpu (else the rates "
                  "recorded in nst/sizing/devices.py).")
flags.DEFINE_bool("markdown", False, "Print the docs/tpu.md tables.")
flags.DEFINE_bool("check", False, "Compare the estimates with measured steps on this CPU.")
flags.DEFINE_bool("json", False, "Print JSON.")

GIB = 2 ** 30


def _replicas():
    if FLAGS.num_replicas and FLAGS.num_cores and FLAGS.num_replicas != FLAGS.num_cores:
        raise ValueError("--num_replicas and --num_cores disagree")
    n = FLAGS.num_replicas or FLAGS.num_cores or 1
    if n < 1:
        raise ValueError(f"--num_replicas must be >= 1, got {n}")
    return n


def jobs_from_flags():
    if FLAGS.gin_file and FLAGS.model_name:
        raise ValueError("give --model_name or --gin_file, not both")
    if FLAGS.gin_file:
        jobs = recipe.from_gin(FLAGS.gin_file, FLAGS.gin_param)
        if FLAGS.dtype:
            for job in jobs:
                job.dtype = FLAGS.dtype
        return jobs
    if not FLAGS.model_name:
        raise ValueError("give --model_name (with --image_size) or --gin_file")
    return [recipe.from_model(FLAGS.model_name, FLAGS.image_size, FLAGS.batch_size,
                              FLAGS.dtype or "float32", FLAGS.unlabel_ratio,
                              FLAGS.train_steps)]


def describe(e: estimate_lib.Estimate) -> str:
    fixed = sum(e.fixed.values())
    parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in e.fixed.items() if v)
    lines = [
        f"{e.job} on {e.num_replicas} x {e.device}: B={e.labeled} + U={e.unlabeled} rows "
        f"per replica",
        f"  fixed {fixed / GIB:.2f} GiB ({parts}); activations "
        f"{e.student_row_bytes / 2 ** 20:.1f} MiB/row"
        + (f", teacher {e.teacher_row_bytes / 2 ** 20:.1f} MiB/unlabeled row"
           if e.teacher_row_bytes else ""),
        f"  step {e.step_bytes / GIB:.2f} GiB of {e.memory_bytes / GIB:.1f} GiB; largest "
        f"labeled batch per replica {e.largest_batch}",
        f"  step {e.step_flops / 1e12:.2f} TFLOP/replica, {e.step_seconds:.3f} s at "
        f"{e.utilization:.0%} ({_parts(e.step_parts)}); {e.steps} steps = {e.days:.2f} days"]
    if not e.fits:
        lines.append(f"  DOES NOT FIT: B={e.labeled} per replica needs "
                     f"{e.step_bytes / GIB:.2f} GiB; the largest that fits is "
                     f"{e.largest_batch}")
    return "\n".join(lines)


def _parts(parts: dict) -> str:
    return ", ".join(f"{k} {parts[k]:.3f}" for k in
                     ("forward", "backward", "update", "teacher", "overhead") if parts[k])


def utilization_flag(device_name: str) -> float:
    """--utilization, or the device's default; checked before any model is built."""
    if FLAGS.utilization is None:
        return timing.default_utilization(device_name)
    return timing.check_utilization(FLAGS.utilization)


def run_estimates():
    devices.get(FLAGS.device)  # an unknown device fails before any model is built
    utilization = utilization_flag(FLAGS.device)
    n = _replicas()
    jobs = jobs_from_flags()
    cpu = None
    if FLAGS.measure_cpu:
        from nst.sizing import cpu_rates
        cpu = cpu_rates.measure()
    results = [estimate_lib.estimate(job, FLAGS.device, n, utilization, cpu,
                                     FLAGS.reserve) for job in jobs]
    if FLAGS.json:
        print(json.dumps([dict(vars(e), days=e.days) for e in results], indent=1))
    else:
        if FLAGS.device == "cpu" and not cpu:
            print(f"this CPU: the rates of nst/sizing/devices.py CPU_RECORDED "
                  f"({devices.CPU_RECORDED['recorded']}); --measure_cpu measures them")
        if cpu:
            print(f"this CPU: {cpu['matmul_gflops']:.0f} GFLOP/s matmul, depthwise "
                  f"{cpu['depthwise_gflops']:.1f} / {cpu['depthwise_backward_gflops']:.1f} "
                  f"GFLOP/s forward / backward, {cpu['op_overhead_us']:.1f} us per op, "
                  "bandwidth " + ", ".join(f"{b / 2 ** 20:g} MiB {g:.1f} GB/s"
                                           for b, g in cpu["bandwidth"]))
        print("\n".join(describe(e) for e in results))
        total = sum(e.days for e in results)
        if len(results) > 1:
            print(f"whole recipe: {total:.2f} days at {utilization:.0%} utilisation")
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unknown arguments: {argv[1:]}")
    from nst.sizing import report
    if FLAGS.markdown:
        u = timing.DEFAULT_UTILIZATION if FLAGS.utilization is None else FLAGS.utilization
        print(report.markdown(timing.check_utilization(u)))
    elif FLAGS.check:
        print(report.check())
    else:
        run_estimates()


def cli():
    cli_errors.run(main)


if __name__ == "__main__":
    cli()
