"""The report's matplotlib figures, each written as one PNG (Agg, no pyplot state)."""

import io
import math
from typing import List, Mapping

import numpy as np

from nst import fileio
from nst.pseudo import histogram as hist_lib
from nst.report.values import DEV_SPLIT, TEST_SPLIT, iteration, metric

# Classes up to this count get one confidence panel each; more share one histogram.
MAX_PANEL_CLASSES = 16


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


def plot_accuracy(stages: List[Mapping], baselines: List[Mapping], path: str) -> bool:
    """Top-1 (%) per iteration: test and dev lines over stages, baselines as markers.
    Returns False (and writes nothing) when there is no metric to draw."""
    series = []
    for split, style in ((TEST_SPLIT, "o-"), (DEV_SPLIT, "s--")):
        points = sorted((it, 100 * v) for it, v in
                        ((iteration(s), metric(s, split)) for s in stages)
                        if it is not None and v is not None)
        if points:
            series.append((f"{split} top-1", style, points))
    extra = []
    for entry, marker in zip(baselines, "x^v<>dP*"):
        for split in (TEST_SPLIT, DEV_SPLIT):
            value, it = metric(entry, split), iteration(entry)
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
    _finish_line_plot(fig, ax, path, sorted(iterations), "teacher",
                      "iteration (0 = teacher)", "top-1 accuracy (%)", "Accuracy per iteration")
    return True


def _finish_line_plot(fig, ax, path: str, ticks, zero_label: str, xlabel: str,
                      ylabel: str, title: str):
    """Integer x ticks (0 shown as `zero_label`), labels, grid, legend; writes the PNG."""
    ax.set_xticks(ticks)
    ax.set_xticklabels([zero_label if t == 0 else str(t) for t in ticks])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    _save_figure(fig, path)


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


def plot_robustness(entries: List[Mapping], path: str) -> bool:
    """Top-1 error (%) against corruption severity (0 = clean; s = mean over the
    corruptions at severity s), one line per measured model. Returns False (and writes
    nothing) when no model was measured."""
    series = []
    for entry in entries:
        points = [(0, entry.get("clean_error"))] + sorted(
            (int(s), e) for s, e in (entry.get("error_by_severity") or {}).items())
        points = [(s, 100 * e) for s, e in points if e is not None]
        if points:
            series.append((str(entry.get("name", "model")), points))
    if not series:
        return False
    fig = _new_figure(6, 4)
    ax = fig.add_subplot()
    severities = set()
    for label, points in series:
        xs, ys = zip(*points)
        severities.update(xs)
        ax.plot(xs, ys, "o-", label=label)
    _finish_line_plot(fig, ax, path, sorted(severities), "clean",
                      "corruption severity (mean over corruptions)", "top-1 error (%)",
                      "Error under corruptions")
    return True
