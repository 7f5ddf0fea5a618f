"""The report of a Noisy Student pipeline run: report.md, results.json and PNG plots.

The pipeline calls `write_report(run_dir, results)` after every stage, so a partial run
always has a partial report; each call rewrites every file atomically. It writes

  <run_dir>/report.md                          Markdown summary (links the plots)
  <run_dir>/results.json                       `results` as given, plus "plots"
  <run_dir>/plots/accuracy.png                 top-1 per iteration (test, dev, baselines)
  <run_dir>/plots/confidence_iteration_<i>.png pseudo-label confidence histogram and the
                                               per-class thresholds of iteration i
  <run_dir>/plots/class_counts_iteration_<i>.png  images per class before balancing
                                               (argmax) and copies written after it
  <run_dir>/plots/robustness.png               top-1 error per corruption severity of
                                               every measured model (with "robustness")

A plot is drawn only when its data exists; a plot that fails (or matplotlib missing) is
logged and named in report.md instead of stopping the run.

`results` schema (every key optional unless marked; unknown keys are kept in
results.json and ignored by the report):

  {"title": str,                          # report heading
   "config": {...any JSON...},            # summarised in report.md (scalars, 2 levels)
   "seed": int,
   "stages": [                            # in run order
     {"name": str (required),             # "teacher", "student-1", ...
      "iteration": int,                   # 0 = teacher, 1..N = students
      "model_name": str, "model_dir": str,
      "metrics": {                        # None / absent: not evaluated yet ("—")
        "<split>": {"top_1_accuracy": float, "top_5_accuracy": float,   # fractions 0..1
                    "loss": float, "num_images": int, ...}},
        # split names: "test" and "dev" have table columns and plot lines; the key names
        # are those of `nst.train.evaluate.evaluate` (see `metrics_from_eval_results`).
      "pseudo_labels": None | `pseudo_label_summary(...)` dict   # None: online teacher
     }, ...],
   "baselines": [                         # optional extra rows, e.g. no-noise student
     {"name": str, "iteration": int, "model_name": str, "metrics": {...as above...}}],
   "robustness": [                        # optional: one entry per measured model
     {"name": str, "iteration": int,      # the model's stage ("teacher", "student-1")
      "num_examples": int, "clean_error": float,        # fractions 0..1
      "mean_corruption_error": float,     # mean over corruptions and severities
      "error_by_severity": {"<s>": float},  # mean over corruptions at severity s
      "mce": float | None, "relative_mce": float | None,  # vs "baseline" (None: this
      "baseline": str | None,             #   is the reference model, the teacher)
      "fgsm_accuracy": {"<ε>": float}, "output": str}]}  # output: the full JSON

`pseudo_label_summary(filter_output_dir, prelim_stats_dir=None)` (or
`pseudo_label_summary(filter_config)`) reads the files of the local filter
(`nst.pseudo.filter`, at the paths of `filter.output_paths`) and returns

  {"num_classes": K,
   "histogram": [[101 ints] * K],   # total_counts.json: hist[c][j] = images of argmax
                                    #   class c with confidence in bucket j of the 0.01
                                    #   grid (j/100 <= p < (j+1)/100; j = 100: p >= 1)
   "thresholds": [K floats],        # threshold.json: per-class threshold
   "admitted": [K ints],            # threshold.json: images >= threshold (below max_prob)
   "counts_before": [K ints],       # sum of each histogram row = images per argmax class
   "counts_after": [K ints],        # stats/final_stats.json: copies written per class
   "total_after": int,              # Σ counts_after
   "num_image": int | None,         # target per class (filter_config.json; None when the
                                    #   thresholds came without it, e.g. the original tool)
   "num_image_across_cat": int | None,  # Σ_c min(admitted_c, num_image)
   "filter_output_dir": str, "prelim_stats_dir": str,
   "accuracy": {"before": ..., "after": ...}}  # optional, added by the pipeline: the
                                    #   `nst.pseudo.label_accuracy` dicts of the
                                    #   predictions and of the filtered copies

Note: when the filter ran with only_use_num_shards, the histogram (so counts_before)
covers only those shards, while counts_after covers every shard.

The package: write_report is here; it draws with `plots`, writes with `markdown`, and
the stages' files are read by `inputs` (all public names are re-exported here).

  inputs    pseudo_label_summary, metrics_from_eval_results: the stages' output files
  values    lookups in `results` and cell formatting, tolerant of partial runs
  plots     the PNGs (matplotlib Figure on the Agg canvas, no pyplot)
  markdown  report.md's text and the verdict sentence
"""

from typing import Mapping

import tensorflow as tf
from absl import logging

from nst import fileio
# Re-exported: callers use `report.<name>`, and write_report looks the plot functions up
# here so that patching `nst.report.plot_*` reaches it.
from nst.report.inputs import metrics_from_eval_results, pseudo_label_summary
from nst.report.markdown import (MAX_CONFIG_ENTRIES, MAX_TABLE_CLASSES, render_markdown,
                                 verdict)
from nst.report.plots import (MAX_PANEL_CLASSES, plot_accuracy, plot_class_counts,
                              plot_confidence, plot_robustness)
from nst.report.values import DASH, DEV_SPLIT, TEST_SPLIT, iteration, jsonable


def write_report(run_dir: str, results: dict) -> dict:
    """Writes <run_dir>/plots/*.png, results.json and report.md (each atomically).

    Returns {"report": path, "results": path, "plots": {name: path}, "plot_errors":
    {name: message}}; paths are absolute (joined to run_dir). results.json holds
    `results` as given (numpy values made plain) plus "plots": {name: relative path}.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a dict, got {type(results).__name__}")
    results = jsonable(results)
    stages = results.get("stages") or []
    baselines = results.get("baselines") or []
    if not isinstance(stages, list) or not isinstance(baselines, list):
        raise ValueError("results['stages'] and results['baselines'] must be lists")
    plots_dir = fileio.join(run_dir, "plots")
    tf.io.gfile.makedirs(plots_dir)

    plots, errors, pseudo_plots, used = {}, {}, {}, set()

    def draw(name, fn):
        """fn(path) draws one plot; returning False means nothing to draw."""
        path = fileio.join(plots_dir, f"{name}.png")
        try:
            if fn(path) is not False:
                plots[name] = f"plots/{name}.png"
        except Exception as e:  # a broken plot must not lose the run's report
            logging.exception("Report plot %s failed", name)
            errors[name] = f"{type(e).__name__}: {e}"

    # Same filtering as render_markdown: stage indices below refer to this list.
    valid_stages = [s for s in stages if isinstance(s, Mapping)]
    draw("accuracy", lambda p: plot_accuracy(
        valid_stages, [b for b in baselines if isinstance(b, Mapping)], p))
    measured = results.get("robustness") or []
    if isinstance(measured, list) and measured:
        draw("robustness", lambda p: plot_robustness(
            [r for r in measured if isinstance(r, Mapping)], p))
    for i, stage in enumerate(valid_stages):
        summary = stage.get("pseudo_labels")
        if not isinstance(summary, Mapping):
            continue
        it = iteration(stage)
        suffix = f"iteration_{it}" if it is not None else f"stage_{i}"
        if suffix in used:
            suffix = f"{suffix}_stage_{i}"  # two filtered stages of one iteration
        used.add(suffix)
        label = f"iteration {it} ({stage.get('name')})"
        names = {"confidence": f"confidence_{suffix}", "class_counts": f"class_counts_{suffix}"}
        draw(names["confidence"], lambda p: plot_confidence(
            summary, p, f"Pseudo-label confidence, {label}"))
        draw(names["class_counts"], lambda p: plot_class_counts(
            summary, p, f"Images per class before/after balancing, {label}"))
        pseudo_plots[i] = names

    results_path = fileio.join(run_dir, "results.json")
    fileio.atomic_write_json(results_path, dict(results, plots=plots))
    report_path = fileio.join(run_dir, "report.md")
    fileio.atomic_write_text(report_path, render_markdown(results, plots, errors, pseudo_plots))
    return {"report": report_path, "results": results_path,
            "plots": {name: fileio.join(run_dir, rel) for name, rel in plots.items()},
            "plot_errors": errors}
