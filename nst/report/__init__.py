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
     {"name": str, "iteration": int, "model_name": str, "metrics": {...as above...}}]}

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
"""

import datetime
import io
import json
import math
from typing import Dict, List, Mapping, Optional, Union

import numpy as np
import tensorflow as tf
from absl import logging

from nst import fileio
from nst.pseudo import filter as filter_lib
from nst.pseudo import histogram as hist_lib

# Splits with their own columns in the table and lines in the accuracy plot.
TEST_SPLIT = "test"
DEV_SPLIT = "dev"
# Classes above this count get summary statistics instead of a per-class table in
# report.md (the per-class values are always in results.json).
MAX_TABLE_CLASSES = 100
# Classes up to this count get one confidence panel each; more share one histogram.
MAX_PANEL_CLASSES = 16
# Config entries listed in report.md (the rest is in results.json).
MAX_CONFIG_ENTRIES = 40
DASH = "—"


# --------------------------------------------------------------------------- inputs


def _read_required(path: str, what: str):
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} does not exist ({what}); has the filter stage "
                                f"finished (histogram, reduce, select, finalize)?")
    try:
        return fileio.read_json(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _read_optional(path: str):
    return fileio.read_json(path) if tf.io.gfile.exists(path) else None


def pseudo_label_summary(filter_output_dir: Union[str, filter_lib.FilterConfig],
                         prelim_stats_dir: Optional[str] = None) -> Dict:
    """Reads the filter's output files into one JSON-able dict (schema: module docstring).

    `filter_output_dir` is the filter's output_dir, or the FilterConfig of the run (its
    output_dir and prelim_stats_dir; then `prelim_stats_dir` must not be given). The
    paths are the filter's own (`filter.output_paths`, what `FilterConfig.path` names):
    prelim_stats_dir defaults to <filter_output_dir>/prelim_stats, as in FilterConfig.
    Raises FileNotFoundError naming a missing threshold.json, total_counts.json or
    stats/final_stats.json, and ValueError for contents that do not fit together.
    """
    if isinstance(filter_output_dir, filter_lib.FilterConfig):
        if prelim_stats_dir is not None:
            raise ValueError("pass prelim_stats_dir in the FilterConfig, not beside it")
        config = filter_output_dir
        filter_output_dir, prelim_stats_dir = config.output_dir, config.prelim_stats_dir
    paths = filter_lib.output_paths(filter_output_dir, prelim_stats_dir or "")
    prelim_stats_dir = filter_lib.stats_root(filter_output_dir, prelim_stats_dir or "")
    threshold_path = paths["threshold.json"]
    counts_path = paths["total_counts.json"]
    final_path = paths["final_stats.json"]

    threshold_json = _read_required(threshold_path, "per-class thresholds of the reduce step")
    if not isinstance(threshold_json, Mapping) or not threshold_json:
        raise ValueError(f"{threshold_path}: expected a non-empty JSON object of classes")
    num_classes = len(threshold_json)
    thresholds = hist_lib.Thresholds.from_json(threshold_json, num_classes, threshold_path)
    hist = hist_lib.histogram_from_json(
        _read_required(counts_path, "summed confidence histogram of the reduce step"),
        num_classes, source=counts_path)
    final = _read_required(final_path, "copies per class of the finalize step")
    cat_count = final.get("cat_count") if isinstance(final, Mapping) else None
    if not isinstance(cat_count, Mapping):
        raise ValueError(f"{final_path}: no 'cat_count' object")
    counts_after = [0] * num_classes
    for key, n in cat_count.items():
        c = int(key)
        if not 0 <= c < num_classes:
            raise ValueError(f"{final_path}: class {c} outside [0, {num_classes}) of "
                             f"{threshold_path}")
        counts_after[c] = int(n)

    settings = _read_optional(paths["filter_config.json"]) or {}
    across = _read_optional(paths["num_image_across_cat.json"]) or {}
    num_image = settings.get("num_image")
    # The original tool's key is misspelt; accept the correct spelling as well.
    num_image_across_cat = across.get("num_image_acorss_cat",
                                      across.get("num_image_across_cat"))
    return {
        "num_classes": num_classes,
        "histogram": hist.tolist(),
        "thresholds": [float(t) for t in thresholds.thresholds],
        "admitted": [int(n) for n in thresholds.totals],
        "counts_before": [int(n) for n in hist.sum(axis=1)],
        "counts_after": counts_after,
        "total_after": int(sum(counts_after)),
        "num_image": None if num_image is None else int(num_image),
        "num_image_across_cat": (None if num_image_across_cat is None
                                 else int(num_image_across_cat)),
        "filter_output_dir": filter_output_dir,
        "prelim_stats_dir": prelim_stats_dir,
    }


def metrics_from_eval_results(model_dir: str, split_names: Optional[Mapping[str, str]] = None,
                              filename: str = "eval_results.json") -> Dict[str, Dict]:
    """The latest result per split of `<model_dir>/eval_results.json` -> stage "metrics".

    eval_results.json (nst.train.evaluate.append_result) is a list of
    {"top_1_accuracy", "top_5_accuracy", "loss", "num_images", "split", "global_step",
    "time"}; the entry with the highest global_step (the later one on ties) wins.
    `split_names` renames splits, e.g. {"validation": "dev"}; other splits keep their
    name. Returns {} when the file does not exist yet.
    """
    path = fileio.join(model_dir, filename)
    if not tf.io.gfile.exists(path):
        return {}
    best = {}
    for position, entry in enumerate(fileio.read_json(path)):
        split = entry.get("split", TEST_SPLIT)
        split = (split_names or {}).get(split, split)
        key = (entry.get("global_step", -1), position)
        if split not in best or key >= best[split][0]:
            best[split] = (key, entry)
    return {split: {k: v for k, v in entry.items() if k != "split"}
            for split, (_, entry) in best.items()}


# --------------------------------------------------------------------------- helpers


def _jsonable(obj):
    """numpy scalars/arrays and tuples -> plain JSON types (recursively)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def _number(value) -> Optional[float]:
    """A finite float, or None for missing / non-numeric / NaN values."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _metric(entry: Mapping, split: str, key: str = "top_1_accuracy") -> Optional[float]:
    metrics = entry.get("metrics") or {}
    split_metrics = metrics.get(split) if isinstance(metrics, Mapping) else None
    if not isinstance(split_metrics, Mapping):
        return None
    return _number(split_metrics.get(key))


def _pct(value: Optional[float]) -> str:
    return DASH if value is None else f"{100 * value:.2f}"


def _cell(value) -> str:
    if value is None or value == "":
        return DASH
    return str(value).replace("|", "\\|").replace("\n", " ")


def _iteration(entry: Mapping) -> Optional[int]:
    value = entry.get("iteration")
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _teacher(stages: List[Mapping]) -> Optional[Mapping]:
    for stage in stages:
        if _iteration(stage) == 0:
            return stage
    return None


def _save_figure(fig, path: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)  # the non-interactive Agg canvas; no pyplot global state
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    fileio.atomic_write_bytes(path, buffer.getvalue())


def _new_figure(width: float, height: float):
    # Imported here: only the plots need matplotlib. A bare Figure (no pyplot) keeps no
    # global figure registry, so a long pipeline does not accumulate figures.
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


# --------------------------------------------------------------------------- plots


def plot_accuracy(stages: List[Mapping], baselines: List[Mapping], path: str) -> bool:
    """Top-1 (%) per iteration: test and dev lines over stages, baselines as markers.
    Returns False (and writes nothing) when there is no metric to draw."""
    series = []
    for split, style in ((TEST_SPLIT, "o-"), (DEV_SPLIT, "s--")):
        points = sorted((it, 100 * v) for it, v in
                        ((_iteration(s), _metric(s, split)) for s in stages)
                        if it is not None and v is not None)
        if points:
            series.append((f"{split} top-1", style, points))
    extra = []
    for entry, marker in zip(baselines, "x^v<>dP*"):
        for split in (TEST_SPLIT, DEV_SPLIT):
            value, it = _metric(entry, split), _iteration(entry)
            if value is not None and it is not None:
                extra.append((f"{entry.get('name', 'baseline')} ({split})", marker, it,
                              100 * value))
    if not series and not extra:
        return False
    fig = _new_figure(6, 4)
    ax = fig.add_subplot()
    iterations = set()
    for label, style, points in series:
        xs, ys = zip(*points)
        iterations.update(xs)
        ax.plot(xs, ys, style, label=label)
    for label, marker, it, value in extra:
        iterations.add(it)
        ax.plot([it], [value], marker, markersize=9, linestyle="none", label=label)
    ax.set_xticks(sorted(iterations))
    ax.set_xticklabels(["teacher" if i == 0 else str(i) for i in sorted(iterations)])
    ax.set_xlabel("iteration (0 = teacher)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy per iteration")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    _save_figure(fig, path)
    return True


def plot_confidence(summary: Mapping, path: str, title: str = ""):
    """Confidence histogram(s) on the 0.01 grid with the per-class thresholds.

    K <= MAX_PANEL_CLASSES: one panel per class with its threshold as a vertical line.
    Otherwise: the histogram summed over classes with a line per distinct threshold
    (opacity ~ number of classes), and below it the number of classes per threshold.
    """
    hist = np.asarray(summary["histogram"], np.int64)
    thresholds = np.asarray(summary["thresholds"], np.float64)
    num_classes = len(thresholds)
    edges = hist_lib.GRID
    if num_classes <= MAX_PANEL_CLASSES:
        cols = min(num_classes, 4)
        rows = math.ceil(num_classes / cols)
        fig = _new_figure(3.2 * cols, 2.4 * rows + 0.4)
        axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
        for c in range(rows * cols):
            ax = axes[c // cols][c % cols]
            if c >= num_classes:
                ax.set_visible(False)
                continue
            ax.bar(edges, hist[c], width=0.01, align="edge", color="tab:blue")
            ax.axvline(thresholds[c], color="tab:red", linestyle="--",
                       label=f"θ = {thresholds[c]:.2f}")
            ax.set_title(f"class {c}: {int(hist[c].sum())} images", fontsize="small")
            ax.legend(fontsize="x-small", loc="upper left")
            ax.set_xlim(0, 1.01)
        for ax in axes[-1]:
            ax.set_xlabel("confidence")
    else:
        fig = _new_figure(7, 6)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
        top.bar(edges, hist.sum(axis=0), width=0.01, align="edge", color="tab:blue")
        values, counts = np.unique(thresholds, return_counts=True)
        for value, count in zip(values, counts):
            top.axvline(value, color="tab:red", linewidth=1,
                        alpha=0.2 + 0.8 * count / counts.max())
        if hist.any():
            top.set_yscale("log")
        top.set_ylabel("images (all classes)")
        top.set_title("Confidence histogram; red lines: per-class thresholds",
                      fontsize="small")
        bottom.bar(values, counts, width=0.01, align="edge", color="tab:red")
        bottom.set_ylabel("classes")
        bottom.set_xlabel("confidence / threshold")
        bottom.set_xlim(0, 1.01)
    fig.suptitle(title or "Pseudo-label confidence")
    _save_figure(fig, path)


def plot_class_counts(summary: Mapping, path: str, title: str = ""):
    """Images per argmax class before balancing and copies written after it.
    Grouped bars for K <= 50; for more classes, both curves over classes sorted by
    their count before balancing."""
    before = np.asarray(summary["counts_before"], np.int64)
    after = np.asarray(summary["counts_after"], np.int64)
    num_image = summary.get("num_image")
    num_classes = len(before)
    fig = _new_figure(max(6, min(14, 0.35 * num_classes + 2)), 4)
    ax = fig.add_subplot()
    if num_classes <= 50:
        x = np.arange(num_classes)
        ax.bar(x - 0.2, before, width=0.4, label="before (argmax)")
        ax.bar(x + 0.2, after, width=0.4, label="after (copies written)")
        ax.set_xticks(x)
        ax.set_xlabel("class")
    else:
        order = np.argsort(-before, kind="stable")
        ax.plot(before[order], label="before (argmax)")
        ax.plot(after[order], label="after (copies written)", linewidth=0.8)
        ax.set_xlabel("classes, sorted by count before balancing")
    if num_image is not None:
        ax.axhline(num_image, color="black", linestyle=":", label=f"target {num_image}")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("images")
    ax.set_title(title or "Images per class")
    ax.legend(fontsize="small")
    _save_figure(fig, path)


# --------------------------------------------------------------------------- report.md


def _config_lines(config) -> List[str]:
    if not isinstance(config, Mapping) or not config:
        return ["_No configuration recorded._"]
    flat = []

    def walk(prefix, value, depth):
        if isinstance(value, Mapping) and value and depth < 2:
            for k in sorted(value, key=str):
                walk(f"{prefix}.{k}" if prefix else str(k), value[k], depth + 1)
        else:
            text = json.dumps(_jsonable(value), sort_keys=True, default=str)
            flat.append((prefix, text if len(text) <= 80 else text[:77] + "..."))

    walk("", config, 0)
    lines = ["| setting | value |", "| --- | --- |"]
    lines += [f"| {_cell(k)} | `{v.replace('`', '').replace('|', chr(92) + '|')}` |"
              for k, v in flat[:MAX_CONFIG_ENTRIES]]
    if len(flat) > MAX_CONFIG_ENTRIES:
        lines.append(f"\n_{len(flat) - MAX_CONFIG_ENTRIES} more settings in results.json._")
    return lines


def _results_table(stages, baselines, teacher_top1) -> List[str]:
    lines = ["| stage | iteration | model | test top-1 (%) | test top-5 (%) | dev top-1 (%) "
             "| Δ test top-1 vs teacher (pts) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for entry, is_teacher in ([(s, s is _teacher(stages)) for s in stages]
                              + [(b, False) for b in baselines]):
        top1 = _metric(entry, TEST_SPLIT)
        if is_teacher:
            delta = "ref" if top1 is not None else DASH
        elif top1 is None or teacher_top1 is None:
            delta = DASH
        else:
            delta = f"{100 * (top1 - teacher_top1):+.2f}"
        it = _iteration(entry)
        lines.append("| " + " | ".join([
            _cell(entry.get("name")), DASH if it is None else str(it),
            _cell(entry.get("model_name")), _pct(top1),
            _pct(_metric(entry, TEST_SPLIT, "top_5_accuracy")),
            _pct(_metric(entry, DEV_SPLIT)), delta]) + " |")
    return lines


def verdict(stages: List[Mapping]) -> str:
    """One sentence: does the best evaluated student beat the teacher on test top-1?"""
    teacher = _teacher(stages)
    teacher_top1 = None if teacher is None else _metric(teacher, TEST_SPLIT)
    students = [(v, s) for s in stages
                if (_iteration(s) or 0) >= 1 and (v := _metric(s, TEST_SPLIT)) is not None]
    if teacher_top1 is None:
        return "The teacher has no test accuracy yet: no comparison."
    if not students:
        return "No student has a test accuracy yet: no comparison with the teacher."
    best_top1, best = max(students, key=lambda vs: vs[0])  # first of equal ones
    delta = 100 * (best_top1 - teacher_top1)
    head = (f"Best student: **{_cell(best.get('name'))}** (iteration {_iteration(best)}), "
            f"test top-1 {_pct(best_top1)}% vs teacher {_pct(teacher_top1)}%")
    if best_top1 > teacher_top1:
        return f"{head}: the best student **beats** the teacher by {delta:+.2f} points."
    if best_top1 == teacher_top1:
        return f"{head}: the best student **ties** with the teacher (does not beat it)."
    return f"{head}: the best student **does not beat** the teacher ({delta:+.2f} points)."


def _accuracy_by_stage(summary: Mapping, num_classes: int) -> Dict[str, Mapping]:
    """{"before"|"after": label_accuracy dict} of the parts that have true labels."""
    accuracy = summary.get("accuracy")
    if not isinstance(accuracy, Mapping):
        return {}
    return {when: a for when in ("before", "after")
            if isinstance(a := accuracy.get(when), Mapping) and a.get("accuracy") is not None
            and len(a.get("per_class") or []) == num_classes}


def _pseudo_label_lines(summary: Mapping) -> List[str]:
    thresholds = list(summary.get("thresholds") or [])
    before = list(summary.get("counts_before") or [])
    after = list(summary.get("counts_after") or [])
    admitted = list(summary.get("admitted") or [None] * len(thresholds))
    num_image = summary.get("num_image")
    k = summary.get("num_classes", len(thresholds))
    lines = [f"{k} classes; target per class: {DASH if num_image is None else num_image}; "
             f"images predicted: {sum(before)}; copies written after balancing: "
             f"{sum(after)}."]
    if not (len(thresholds) == len(before) == len(after) == len(admitted)):
        return lines + ["", "_The pseudo-label summary is inconsistent (lists of different "
                            "lengths); see results.json._"]
    lines.append("")
    accuracy = _accuracy_by_stage(summary, len(thresholds))
    if accuracy:
        lines += ["Pseudo-label accuracy against the withheld true labels: " + "; ".join(
            f"{when} filtering {_pct(a['accuracy'])}% of {a['with_true_label']} "
            f"{'images' if when == 'before' else 'copies written'}"
            for when, a in accuracy.items()) + ".", ""]
    if len(thresholds) <= MAX_TABLE_CLASSES:
        extra = [f"pseudo-label accuracy {when} (%)" for when in accuracy]
        lines += ["| class | threshold | images before (argmax) | admitted (≥ threshold) "
                  "| copies after |" + "".join(f" {e} |" for e in extra),
                  "| --- | --- | --- | --- | --- |" + " --- |" * len(extra)]
        lines += [f"| {c} | {thresholds[c]:.2f} | {before[c]} | "
                  f"{DASH if admitted[c] is None else admitted[c]} | {after[c]} |"
                  + "".join(f" {_pct(a['per_class'][c]['accuracy'])} |"
                            for a in accuracy.values())
                  for c in range(len(thresholds))]
    else:
        lines += ["| per class | min | median | mean | max |", "| --- | --- | --- | --- | --- |"]
        for name, values, fmt in (("threshold", thresholds, "{:.2f}"),
                                  ("images before (argmax)", before, "{:.0f}"),
                                  ("copies after", after, "{:.0f}")):
            v = np.asarray(values, np.float64)
            lines.append(f"| {name} | " + " | ".join(
                fmt.format(x) for x in (v.min(), np.median(v), v.mean(), v.max())) + " |")
        lines += ["", f"_Per-class values of all {len(thresholds)} classes are in "
                      f"results.json._"]
    return lines


def render_markdown(results: Mapping, plots: Mapping[str, str],
                    plot_errors: Mapping[str, str], pseudo_plots: Mapping[int, Dict]) -> str:
    """report.md text. plots: {name: path relative to run_dir}; pseudo_plots: stage index ->
    {"confidence": name, "class_counts": name}."""
    stages = [s for s in results.get("stages") or [] if isinstance(s, Mapping)]
    baselines = [b for b in results.get("baselines") or [] if isinstance(b, Mapping)]
    teacher = _teacher(stages)
    teacher_top1 = None if teacher is None else _metric(teacher, TEST_SPLIT)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"# {results.get('title') or 'Noisy Student report'}", "",
             f"_Updated {now}; {len(stages)} stage(s) recorded._", ""]
    if results.get("seed") is not None:
        lines += [f"Seed: `{results.get('seed')}`", ""]
    lines += ["## Configuration", ""] + _config_lines(results.get("config")) + [""]
    lines += ["## Results", "", "Accuracies in %, over every image of the split.", ""]
    if stages or baselines:
        lines += _results_table(stages, baselines, teacher_top1)
    else:
        lines.append("_No stage recorded yet._")
    lines += ["", verdict(stages), ""]

    def image(name, alt):
        if name in plots:
            return [f"![{alt}]({plots[name]})", ""]
        if name in plot_errors:
            return [f"_Plot {name} failed: {_cell(plot_errors[name])}_", ""]
        return []

    lines += image("accuracy", "accuracy per iteration")
    pseudo = [(i, s) for i, s in enumerate(stages) if (_iteration(s) or 0) >= 1
              or s.get("pseudo_labels")]
    if pseudo:
        lines += ["## Pseudo labels", ""]
    for i, stage in pseudo:
        it = _iteration(stage)
        lines += [f"### Iteration {DASH if it is None else it} ({_cell(stage.get('name'))})",
                  ""]
        summary = stage.get("pseudo_labels")
        if not isinstance(summary, Mapping):
            lines += ["No filtered pseudo labels: online teacher, or the filter stage has "
                      "not finished yet.", ""]
            continue
        lines += _pseudo_label_lines(summary) + [""]
        names = pseudo_plots.get(i, {})
        lines += image(names.get("confidence"), f"confidence histogram, iteration {it}")
        lines += image(names.get("class_counts"), f"images per class, iteration {it}")
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- entry point


def write_report(run_dir: str, results: dict) -> dict:
    """Writes <run_dir>/plots/*.png, results.json and report.md (each atomically).

    Returns {"report": path, "results": path, "plots": {name: path}, "plot_errors":
    {name: message}}; paths are absolute (joined to run_dir). results.json holds
    `results` as given (numpy values made plain) plus "plots": {name: relative path}.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a dict, got {type(results).__name__}")
    results = _jsonable(results)
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
    for i, stage in enumerate(valid_stages):
        summary = stage.get("pseudo_labels")
        if not isinstance(summary, Mapping):
            continue
        it = _iteration(stage)
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
