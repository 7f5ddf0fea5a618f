"""report.md: configuration, results table, verdict and pseudo-label sections."""

import datetime
import json
from typing import Dict, List, Mapping

import numpy as np

from nst.report.values import (DASH, DEV_SPLIT, TEST_SPLIT, cell, iteration, jsonable,
                               metric, pct, teacher)

# Classes above this count get summary statistics instead of a per-class table in
# report.md (the per-class values are always in results.json).
MAX_TABLE_CLASSES = 100
# Config entries listed in report.md (the rest is in results.json).
MAX_CONFIG_ENTRIES = 40


def _config_lines(config) -> List[str]:
    if not isinstance(config, Mapping) or not config:
        return ["_No configuration recorded._"]
    flat = []

    def walk(prefix, value, depth):
        if isinstance(value, Mapping) and value and depth < 2:
            for k in sorted(value, key=str):
                walk(f"{prefix}.{k}" if prefix else str(k), value[k], depth + 1)
        else:
            text = json.dumps(jsonable(value), sort_keys=True, default=str)
            flat.append((prefix, text if len(text) <= 80 else text[:77] + "..."))

    walk("", config, 0)
    lines = ["| setting | value |", "| --- | --- |"]
    lines += [f"| {cell(k)} | `{v.replace('`', '').replace('|', chr(92) + '|')}` |"
              for k, v in flat[:MAX_CONFIG_ENTRIES]]
    if len(flat) > MAX_CONFIG_ENTRIES:
        lines.append(f"\n_{len(flat) - MAX_CONFIG_ENTRIES} more settings in results.json._")
    return lines


def _results_table(stages, baselines, teacher_top1) -> List[str]:
    lines = ["| stage | iteration | model | test top-1 (%) | test top-5 (%) | dev top-1 (%) "
             "| Δ test top-1 vs teacher (pts) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for entry, is_teacher in ([(s, s is teacher(stages)) for s in stages]
                              + [(b, False) for b in baselines]):
        top1 = metric(entry, TEST_SPLIT)
        if is_teacher:
            delta = "ref" if top1 is not None else DASH
        elif top1 is None or teacher_top1 is None:
            delta = DASH
        else:
            delta = f"{100 * (top1 - teacher_top1):+.2f}"
        it = iteration(entry)
        lines.append("| " + " | ".join([
            cell(entry.get("name")), DASH if it is None else str(it),
            cell(entry.get("model_name")), pct(top1),
            pct(metric(entry, TEST_SPLIT, "top_5_accuracy")),
            pct(metric(entry, DEV_SPLIT)), delta]) + " |")
    return lines


def verdict(stages: List[Mapping]) -> str:
    """One sentence: does the best evaluated student beat the teacher on test top-1?"""
    teacher_stage = teacher(stages)
    teacher_top1 = None if teacher_stage is None else metric(teacher_stage, TEST_SPLIT)
    students = [(v, s) for s in stages
                if (iteration(s) or 0) >= 1 and (v := metric(s, TEST_SPLIT)) is not None]
    if teacher_top1 is None:
        return "The teacher has no test accuracy yet: no comparison."
    if not students:
        return "No student has a test accuracy yet: no comparison with the teacher."
    best_top1, best = max(students, key=lambda vs: vs[0])  # first of equal ones
    delta = 100 * (best_top1 - teacher_top1)
    head = (f"Best student: **{cell(best.get('name'))}** (iteration {iteration(best)}), "
            f"test top-1 {pct(best_top1)}% vs teacher {pct(teacher_top1)}%")
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
            f"{when} filtering {pct(a['accuracy'])}% of {a['with_true_label']} "
            f"{'images' if when == 'before' else 'copies written'}"
            for when, a in accuracy.items()) + ".", ""]
    if len(thresholds) <= MAX_TABLE_CLASSES:
        extra = [f"pseudo-label accuracy {when} (%)" for when in accuracy]
        lines += ["| class | threshold | images before (argmax) | admitted (≥ threshold) "
                  "| copies after |" + "".join(f" {e} |" for e in extra),
                  "| --- | --- | --- | --- | --- |" + " --- |" * len(extra)]
        lines += [f"| {c} | {thresholds[c]:.2f} | {before[c]} | "
                  f"{DASH if admitted[c] is None else admitted[c]} | {after[c]} |"
                  + "".join(f" {pct(a['per_class'][c]['accuracy'])} |"
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


def _robustness_lines(entries: List[Mapping]) -> List[str]:
    """The robustness table: one row per measured model, ε columns from every row."""
    epsilons = sorted({e for entry in entries for e in (entry.get("fgsm_accuracy") or {})},
                      key=float)
    lines = ["Top-1 error in %; mCE and relative mCE in % of the teacher's (Hendrycks & "
             "Dietterich's normalisation, with the teacher as the baseline model); FGSM: "
             "top-1 accuracy in % after one signed-gradient step of ε (pixels, 0..255).",
             "", "| model | iteration | images | clean error | mean corruption error | mCE "
             "| relative mCE |" + "".join(f" FGSM ε={e} |" for e in epsilons),
             "| --- | --- | --- | --- | --- | --- | --- |" + " --- |" * len(epsilons)]
    for entry in entries:
        is_reference = not entry.get("baseline")
        it = iteration(entry)
        fgsm = entry.get("fgsm_accuracy") or {}
        lines.append("| " + " | ".join(
            [cell(entry.get("name")), DASH if it is None else str(it),
             DASH if entry.get("num_examples") is None else str(entry["num_examples"]),
             pct(entry.get("clean_error")), pct(entry.get("mean_corruption_error")),
             "100 (ref)" if is_reference else pct(entry.get("mce")),
             "100 (ref)" if is_reference else pct(entry.get("relative_mce"))]
            + [pct(fgsm.get(e)) for e in epsilons]) + " |")
    return lines


def render_markdown(results: Mapping, plots: Mapping[str, str],
                    plot_errors: Mapping[str, str], pseudo_plots: Mapping[int, Dict]) -> str:
    """report.md text. plots: {name: path relative to run_dir}; pseudo_plots: stage index ->
    {"confidence": name, "class_counts": name}."""
    stages = [s for s in results.get("stages") or [] if isinstance(s, Mapping)]
    baselines = [b for b in results.get("baselines") or [] if isinstance(b, Mapping)]
    teacher_stage = teacher(stages)
    teacher_top1 = None if teacher_stage is None else metric(teacher_stage, TEST_SPLIT)
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
            return [f"_Plot {name} failed: {cell(plot_errors[name])}_", ""]
        return []

    lines += image("accuracy", "accuracy per iteration")
    measured = [r for r in results.get("robustness") or [] if isinstance(r, Mapping)]
    if measured:
        lines += ["## Robustness", ""] + _robustness_lines(measured) + [""]
        lines += image("robustness", "error per corruption severity")
    pseudo = [(i, s) for i, s in enumerate(stages) if (iteration(s) or 0) >= 1
              or s.get("pseudo_labels")]
    if pseudo:
        lines += ["## Pseudo labels", ""]
    for i, stage in pseudo:
        it = iteration(stage)
        lines += [f"### Iteration {DASH if it is None else it} ({cell(stage.get('name'))})",
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
