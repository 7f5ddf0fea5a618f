#!/usr/bin/env python
"""Does Noisy Student help? The digits demo repeated over several seeds.

For each seed (training and data split alike) it runs
  * the demo (`nst-pipeline`, gin/digits/noisy_student.gin): teacher, students 1..N;
  * a baseline: one student trained from the same teacher with the same pseudo labels
    but without noise (no RandAugment, dropout or stochastic depth).
and prints test (and dev) top-1 accuracy as mean ± std over the seeds, plus per-seed
values. Each run lives in <work_dir>/seed_<s>/{noisy,no_noise} and resumes if rerun.

  python tools/benchmark_ssl.py --seeds=0,1,2 --work_dir=/tmp/nst_ssl
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
flags.DEFINE_string("work_dir", "/tmp/nst_ssl", "Where the runs go.")
flags.DEFINE_multi_string("gin_param", [], "Extra bindings for every run (e.g. for a "
                          "smaller smoke run).")
flags.DEFINE_bool("quick", False, "Use the --quick demo (tests).")
flags.DEFINE_string("output", "", "Also write the table and raw numbers to this JSON file.")


def _run(run_dir, seed, extra):
    command = [sys.executable, "-m", "nst.pipeline", f"--run_dir={run_dir}", f"--seed={seed}",
               f"--gin_param=PipelineConfig.data_seed = {seed}"]
    command += [f"--gin_param={p}" for p in list(FLAGS.gin_param) + extra]
    if FLAGS.quick:
        command.append("--quick")
    start = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    return results, time.time() - start


def _top1(stage, split):
    metrics = stage.get("metrics") or {}
    return metrics.get(split, {}).get("top_1_accuracy")


def collect(seeds):
    """{row name: {split: [accuracy per seed]}}, rows in display order; and timings."""
    rows, times = {}, []
    for seed in seeds:
        base = os.path.join(FLAGS.work_dir, f"seed_{seed}")
        noisy, seconds = _run(os.path.join(base, "noisy"), seed, [])
        times.append(seconds)
        teacher_dir = next(s["model_dir"] for s in noisy["stages"] if s["iteration"] == 0)
        plain, _ = _run(os.path.join(base, "no_noise"), seed, [
            "PipelineConfig.student_noise = False", "PipelineConfig.num_iterations = 1",
            f"PipelineConfig.teacher_path = '{teacher_dir}'"])
        named = [(s["name"], s) for s in noisy["stages"]]
        named += [("student-1 without noise", s) for s in plain["stages"] if s["iteration"] == 1]
        for name, stage in named:
            for split in ("test", "dev"):
                rows.setdefault(name, {}).setdefault(split, []).append(_top1(stage, split))
    return rows, times


def table(rows, seeds) -> str:
    def cell(values):
        values = np.array([v for v in values if v is not None]) * 100
        if not len(values):
            return "—"
        return f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0:.2f}"

    lines = [f"| model | test top-1 (%) | dev top-1 (%) | test top-1 per seed ({', '.join(seeds)}) |",
             "|---|---|---|---|"]
    for name, splits in rows.items():
        per_seed = ", ".join("—" if v is None else f"{100 * v:.2f}" for v in splits["test"])
        lines.append(f"| {name} | {cell(splits['test'])} | {cell(splits['dev'])} | "
                     f"{per_seed} |")
    return "\n".join(lines)


def main(argv):
    del argv
    seeds = [s.strip() for s in FLAGS.seeds.split(",") if s.strip()]
    rows, times = collect(seeds)
    text = table(rows, seeds)
    print(f"Digits demo over seeds {', '.join(seeds)} (mean ± sample std); one demo run "
          f"took {np.mean(times) / 60:.1f} min on average")
    print(text)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump({"seeds": seeds, "rows": rows, "table": text,
                       "demo_seconds": times}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
