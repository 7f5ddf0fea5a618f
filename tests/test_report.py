"""nst.report: the pseudo-label summary of a filter run, report.md, results.json, plots."""

import collections
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from nst import fileio, report
from nst.data import schema, writers
from nst.pseudo import filter as filter_lib
from nst.pseudo import histogram as hist_lib
from nst.pseudo import select as select_lib
from nst.train import evaluate as eval_lib

K = 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# (argmax class, confidence, images). With num_image=30, min_threshold=0.3, by hand:
#   class 0: 20 in bucket 95 (< 30), +20 in bucket 85 = 40 >= 30 -> θ 0.85, admitted 40,
#            ratio 0.75 (thinned); the 10 at 0.505 are dropped.
#   class 1: 12 in bucket 70, never 30; float32(0.29) is in bucket 28, below 0.3 -> θ 0.3,
#            admitted 12, ratio 2.5 (2 or 3 copies each).
#   class 2: 3 at 1.0 (bucket 100) -> θ 0.3, admitted 3, ratio 10: exactly 30 copies.
SPEC = [(0, 0.955, 20), (0, 0.855, 20), (0, 0.505, 10), (1, 0.705, 12), (1, 0.29, 4),
        (2, 1.0, 3)]


# --------------------------------------------------------------------------- helpers


def _probs(label, conf):
    p = np.full(K, conf / 10, np.float32)
    p[label] = conf
    return p


def _inputs():
    probs = [_probs(label, conf) for label, conf, n in SPEC for _ in range(n)]
    return np.stack(probs)


def _run_filter(tmp_path, prelim_stats_dir=""):
    """The real local filter steps on SPEC, 2 shards; returns (config, input probs)."""
    probabilities = _inputs()
    records = [schema.encode_pseudo_labeled(tf.io.encode_jpeg(np.full((2, 2, 3), i % 256,
                                                                      np.uint8)).numpy(),
                                            p, image_id=f"img-{i:03d}")
               for i, p in enumerate(probabilities)]
    writers.write_shards(records, str(tmp_path / "in"), "train", 2)
    config = filter_lib.FilterConfig(input_dir=str(tmp_path / "in"),
                                     output_dir=str(tmp_path / "filtered"),
                                     prelim_stats_dir=prelim_stats_dir, num_shards=2,
                                     num_label_classes=K, num_image=30, min_threshold=0.3)
    for shard in range(2):
        filter_lib.write_shard_histogram(config, shard, 0)
    filter_lib.reduce_histograms(config)
    for shard in range(2):
        filter_lib.select_shard(config, shard, 0)
    filter_lib.finalize_stats(config)
    return config, probabilities


def _written_labels(config):
    """Pseudo labels of every record the filter wrote, counted per class."""
    files = tf.io.gfile.glob(os.path.join(config.output_dir, "data", "train*"))
    counts = collections.Counter()
    for serialized in tf.data.TFRecordDataset(files):
        example = tf.train.Example.FromString(serialized.numpy())
        counts[example.features.feature[schema.LABEL_KEY].int64_list.value[0]] += 1
    return counts


def _summary_by_hand():
    """A summary in the shape of pseudo_label_summary, values chosen by hand."""
    hist = np.zeros((K, 101), np.int64)
    hist[0, 95], hist[0, 50], hist[1, 70], hist[2, 99] = 8, 4, 3, 1
    return {"num_classes": K, "histogram": hist.tolist(), "thresholds": [0.95, 0.3, 0.3],
            "admitted": [8, 3, 1], "counts_before": [12, 3, 1], "counts_after": [5, 5, 5],
            "total_after": 15, "num_image": 5, "num_image_across_cat": 9,
            "filter_output_dir": "/x", "prelim_stats_dir": "/x/prelim_stats"}


def _metrics(test_top1, dev_top1=None, top5=0.99):
    out = {"test": {"top_1_accuracy": test_top1, "top_5_accuracy": top5, "loss": 0.6,
                    "num_images": 500}}
    if dev_top1 is not None:
        out["dev"] = {"top_1_accuracy": dev_top1, "top_5_accuracy": 1.0, "loss": 0.5,
                      "num_images": 200}
    return out


def _full_results():
    summary = _summary_by_hand()
    return {
        "title": "Noisy Student on digits",
        "config": {"dataset": "digits", "teacher": {"model_name": "efficientnet-tiny",
                                                    "train_steps": 300},
                   "filter": {"num_image": 5, "min_threshold": 0.3}},
        "seed": 0,
        "stages": [
            {"name": "teacher", "iteration": 0, "model_name": "efficientnet-tiny",
             "model_dir": "/run/teacher", "metrics": _metrics(0.81, 0.8),
             "pseudo_labels": None},
            {"name": "student-1", "iteration": 1, "model_name": "efficientnet-tiny",
             "model_dir": "/run/student-1", "metrics": _metrics(0.834, 0.82),
             "pseudo_labels": summary},
            {"name": "student-2", "iteration": 2, "model_name": "efficientnet-small",
             "model_dir": "/run/student-2", "metrics": _metrics(0.826, 0.83, top5=0.995),
             "pseudo_labels": dict(summary, thresholds=[0.9, 0.5, 0.3])},
        ],
        "baselines": [{"name": "student without noise", "iteration": 1,
                       "model_name": "efficientnet-tiny", "metrics": _metrics(0.8)}],
    }


def _check_png(path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC, path
    pixels = plt.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 0 and pixels.shape[1] > 0
    assert pixels.shape[2] in (3, 4)
    return pixels


def _row(text, first_cell):
    rows = [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]
    assert len(rows) == 1, (first_cell, rows)
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


# --------------------------------------------------------------------------- summary


def test_summary_of_a_real_filter_run(tmp_path):
    prelim = str(tmp_path / "prelim")  # not under the output dir: must be passed
    config, probabilities = _run_filter(tmp_path, prelim_stats_dir=prelim)
    with pytest.raises(FileNotFoundError, match="total_counts.json"):
        report.pseudo_label_summary(config.output_dir)
    summary = report.pseudo_label_summary(config.output_dir, prelim)

    argmax = np.argmax(probabilities, axis=1)
    assert summary["num_classes"] == K
    assert summary["counts_before"] == np.bincount(argmax, minlength=K).tolist() == [50, 16, 3]
    assert summary["thresholds"] == [0.85, 0.3, 0.3]
    assert summary["admitted"] == [40, 12, 3]
    assert summary["num_image"] == 30 and summary["num_image_across_cat"] == 45
    hist = np.asarray(summary["histogram"])
    assert hist.shape == (K, 101)
    assert hist[0, 95] == 20 and hist[0, 85] == 20 and hist[0, 50] == 10
    assert hist[1, 70] == 12 and hist[1, 28] == 4 and hist[2, 100] == 3 and hist.sum() == 69
    # counts_after: the records actually written, per pseudo label.
    written = _written_labels(config)
    assert summary["counts_after"] == [written[c] for c in range(K)]
    assert summary["total_after"] == sum(written.values())
    assert summary["counts_after"][2] == 30  # 3 images x exactly 10 copies
    assert 24 <= summary["counts_after"][1] <= 36 and summary["counts_after"][0] <= 40
    # Exact class-0 count from the seeded per-id draws (ratio 30/40 = 0.75).
    kept0 = [f"img-{i:03d}" for i in range(40)]
    assert summary["counts_after"][0] == sum(
        select_lib.uniform_from_id(config.seed, i) < 0.75 for i in kept0)
    json.dumps(summary)  # plain JSON types only


def test_summary_from_hand_written_files_and_missing_file_errors(tmp_path):
    out = tmp_path / "filtered"
    hist = np.zeros((2, 101), np.int64)
    hist[0, 99], hist[0, 40], hist[1, 100] = 5, 2, 1
    thresholds = hist_lib.Thresholds(np.array([0.99, 0.3]), np.array([5, 1]))
    files = {
        "prelim_stats/total_counts.json": hist_lib.histogram_to_json(hist, omit_empty=False),
        "threshold.json": thresholds.to_json(),
        "stats/final_stats.json": select_lib.final_stats([{"0": 4}, {"1": 4}], 2),
    }
    for name, obj in files.items():
        os.makedirs(os.path.dirname(out / name), exist_ok=True)
        fileio.atomic_write_json(str(out / name), obj)
    summary = report.pseudo_label_summary(str(out))
    assert summary["counts_before"] == [7, 1] and summary["counts_after"] == [4, 4]
    assert summary["thresholds"] == [0.99, 0.3] and summary["admitted"] == [5, 1]
    # No filter_config.json / num_image_across_cat.json (e.g. the original tool): None.
    assert summary["num_image"] is None and summary["num_image_across_cat"] is None
    for name in files:
        os.rename(out / name, out / (name + ".bak"))
        with pytest.raises(FileNotFoundError, match=os.path.basename(name)) as error:
            report.pseudo_label_summary(str(out))
        assert str(out / name) in str(error.value)
        os.rename(out / (name + ".bak"), out / name)
    # A final_stats class outside threshold.json's classes is an error, not a silent drop.
    fileio.atomic_write_json(str(out / "stats/final_stats.json"),
                             select_lib.final_stats([{"2": 1}], 3))
    with pytest.raises(ValueError, match="class 2 outside"):
        report.pseudo_label_summary(str(out))


# --------------------------------------------------------------------------- report


def test_write_report_table_verdict_plots_and_results_json(tmp_path):
    run_dir = str(tmp_path / "run")
    results = _full_results()
    paths = report.write_report(run_dir, results)

    assert paths["report"] == os.path.join(run_dir, "report.md")
    assert paths["results"] == os.path.join(run_dir, "results.json")
    assert paths["plot_errors"] == {}
    assert sorted(paths["plots"]) == ["accuracy", "class_counts_iteration_1",
                                      "class_counts_iteration_2", "confidence_iteration_1",
                                      "confidence_iteration_2"]
    for name, path in paths["plots"].items():
        assert path == os.path.join(run_dir, "plots", f"{name}.png")
        _check_png(path)
    assert not [f for f in os.listdir(os.path.join(run_dir, "plots")) if ".tmp" in f]

    saved = fileio.read_json(paths["results"])
    assert saved == dict(results, plots={n: f"plots/{n}.png" for n in paths["plots"]})

    text = open(paths["report"], encoding="utf-8").read()
    assert text.startswith("# Noisy Student on digits\n")
    assert "| teacher.train_steps | `300` |" in text and "Seed: `0`" in text
    assert _row(text, "teacher") == ["teacher", "0", "efficientnet-tiny", "81.00", "99.00",
                                     "80.00", "ref"]
    assert _row(text, "student-1") == ["student-1", "1", "efficientnet-tiny", "83.40",
                                       "99.00", "82.00", "+2.40"]
    assert _row(text, "student-2") == ["student-2", "2", "efficientnet-small", "82.60",
                                       "99.50", "83.00", "+1.60"]
    assert _row(text, "student without noise") == [
        "student without noise", "1", "efficientnet-tiny", "80.00", "99.00", "—", "-1.00"]
    assert "Best student: **student-1** (iteration 1)" in text
    assert "**beats** the teacher by +2.40 points" in text
    # Pseudo-label sections: per-class table and relative image links that resolve.
    assert "### Iteration 1 (student-1)" in text and "### Iteration 2 (student-2)" in text
    assert "target per class: 5; images predicted: 16; copies written after balancing: 15" \
        in text
    class0 = [line for line in text.splitlines() if line.startswith("| 0 |")]
    assert class0 == ["| 0 | 0.95 | 12 | 8 | 5 |",  # iteration 1, then 2's thresholds
                      "| 0 | 0.90 | 12 | 8 | 5 |"]
    assert "| 2 | 0.30 | 1 | 1 | 5 |" in text
    links = [line[line.index("](") + 2:-1] for line in text.splitlines()
             if line.startswith("![")]
    assert links == ["plots/accuracy.png", "plots/confidence_iteration_1.png",
                     "plots/class_counts_iteration_1.png", "plots/confidence_iteration_2.png",
                     "plots/class_counts_iteration_2.png"]
    assert all(os.path.exists(os.path.join(run_dir, link)) for link in links)


def test_partial_results_still_render(tmp_path):
    run_dir = str(tmp_path / "run")
    # Before anything is evaluated: no accuracy plot, dashes everywhere.
    paths = report.write_report(run_dir, {"stages": [
        {"name": "teacher", "iteration": 0, "model_name": "m", "metrics": None}]})
    text = open(paths["report"], encoding="utf-8").read()
    assert text.startswith("# Noisy Student report\n")
    assert _row(text, "teacher") == ["teacher", "0", "m", "—", "—", "—", "—"]
    assert "The teacher has no test accuracy yet" in text
    assert paths["plots"] == {} and "![" not in text
    assert "_No configuration recorded._" in text

    # Teacher evaluated, student-1 still training (online teacher: no pseudo labels).
    results = {"title": "partial", "stages": [
        {"name": "teacher", "iteration": 0, "metrics": {"test": {"top_1_accuracy": 0.5}}},
        {"name": "student-1", "iteration": 1, "pseudo_labels": None}]}
    paths = report.write_report(run_dir, results)
    text = open(paths["report"], encoding="utf-8").read()
    assert _row(text, "teacher") == ["teacher", "0", "—", "50.00", "—", "—", "ref"]
    assert _row(text, "student-1") == ["student-1", "1", "—", "—", "—", "—", "—"]
    assert "No student has a test accuracy yet" in text
    assert "No filtered pseudo labels" in text
    assert sorted(paths["plots"]) == ["accuracy"]
    _check_png(paths["plots"]["accuracy"])
    assert fileio.read_json(paths["results"]) == dict(results, plots={
        "accuracy": "plots/accuracy.png"})

    # Nothing at all yet.
    paths = report.write_report(str(tmp_path / "empty"), {})
    text = open(paths["report"], encoding="utf-8").read()
    assert "_No stage recorded yet._" in text and paths["plots"] == {}


def test_verdict_ties_and_losses():
    teacher = {"name": "teacher", "iteration": 0, "metrics": _metrics(0.8)}
    worse = {"name": "s1", "iteration": 1, "metrics": _metrics(0.79)}
    same = {"name": "s2", "iteration": 2, "metrics": _metrics(0.8)}
    assert "**does not beat** the teacher (-1.00 points)" in report.verdict([teacher, worse])
    assert "**ties**" in report.verdict([teacher, worse, same])


def test_many_classes_summarised_and_numpy_values_accepted(tmp_path):
    k = 120
    rng = np.random.default_rng(0)
    hist = rng.integers(0, 5, size=(k, 101))
    summary = {"num_classes": k, "histogram": hist, "thresholds": rng.choice(
        hist_lib.GRID[30:], k), "admitted": hist[:, 30:].sum(axis=1),
        "counts_before": hist.sum(axis=1), "counts_after": np.full(k, 40, np.int64),
        "num_image": np.int64(40)}
    results = {"stages": [{"name": "teacher", "iteration": 0,
                           "metrics": {"test": {"top_1_accuracy": np.float32(0.5),
                                                "num_images": np.int64(10)}}},
                          {"name": "student-1", "iteration": 1, "pseudo_labels": summary}]}
    paths = report.write_report(str(tmp_path), results)
    text = open(paths["report"], encoding="utf-8").read()
    assert "| per class | min | median | mean | max |" in text
    assert "| copies after | 40 | 40 | 40 | 40 |" in text
    assert f"Per-class values of all {k} classes are in results.json" in text
    for name in ("confidence_iteration_1", "class_counts_iteration_1"):
        _check_png(paths["plots"][name])
    saved = fileio.read_json(paths["results"])
    assert saved["stages"][1]["pseudo_labels"]["histogram"] == hist.tolist()
    assert saved["stages"][0]["metrics"]["test"]["num_images"] == 10


def test_a_failing_plot_is_named_in_the_report(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(report, "plot_class_counts", broken)
    paths = report.write_report(str(tmp_path), _full_results())
    assert set(paths["plot_errors"]) == {"class_counts_iteration_1", "class_counts_iteration_2"}
    text = open(paths["report"], encoding="utf-8").read()
    assert "_Plot class_counts_iteration_1 failed: RuntimeError: no fonts_" in text
    assert "plots/confidence_iteration_1.png" in text


def test_metrics_from_eval_results(tmp_path):
    model_dir = str(tmp_path)
    assert report.metrics_from_eval_results(model_dir) == {}
    for step, split, top1 in ((100, "test", 0.5), (200, "test", 0.6), (200, "validation", 0.7),
                              (150, "test", 0.4)):
        eval_lib.append_result(model_dir, {"top_1_accuracy": top1, "top_5_accuracy": 1.0,
                                           "loss": 1.0, "num_images": 10, "split": split,
                                           "global_step": step})
    metrics = report.metrics_from_eval_results(model_dir, {"validation": "dev"})
    assert sorted(metrics) == ["dev", "test"]
    assert metrics["test"]["top_1_accuracy"] == 0.6 and metrics["test"]["global_step"] == 200
    assert metrics["dev"]["top_1_accuracy"] == 0.7 and "split" not in metrics["dev"]


def test_pseudo_label_accuracy_section(tmp_path):
    results = _full_results()
    per_class = [{"records": 10, "correct": 9, "accuracy": 0.9},
                 {"records": 4, "correct": 1, "accuracy": 0.25},
                 {"records": 2, "correct": 0, "accuracy": None}]
    results["stages"][1]["pseudo_labels"] = dict(
        results["stages"][1]["pseudo_labels"], accuracy={
            "before": {"records": 16, "with_true_label": 14, "correct": 10,
                       "accuracy": 10 / 14, "per_class": per_class},
            "after": {"records": 15, "with_true_label": 15, "correct": 12,
                      "accuracy": 0.8, "per_class": per_class[::-1]}})
    text = open(report.write_report(str(tmp_path / "run"), results)["report"]).read()
    assert ("Pseudo-label accuracy against the withheld true labels: before filtering "
            "71.43% of 14 images; after filtering 80.00% of 15 copies written.") in text
    assert ("| class | threshold | images before (argmax) | admitted (≥ threshold) | copies "
            "after | pseudo-label accuracy before (%) | pseudo-label accuracy after (%) |"
            ) in text
    class_rows = [line for line in text.splitlines() if line.startswith("| 0 |")]
    assert class_rows[0] == "| 0 | 0.95 | 12 | 8 | 5 | 90.00 | — |"
    assert class_rows[1] == "| 0 | 0.90 | 12 | 8 | 5 |"  # iteration 2 has no accuracy
    assert "| 1 | " in text and " | 25.00 | 25.00 |" in text


def test_robustness_table_and_plot(tmp_path):
    """The robustness section: one row per measured model, in %, the teacher as the mCE
    reference, an FGSM column per ε of any row; and the error-per-severity plot."""
    run_dir = str(tmp_path / "run")
    teacher = {"name": "teacher", "iteration": 0, "num_examples": 500, "clean_error": 0.2,
               "mean_corruption_error": 0.45, "error_by_severity": {"1": 0.3, "3": 0.6},
               "mce": None, "relative_mce": None, "baseline": None,
               "fgsm_accuracy": {"2": 0.5, "8": 0.125}}
    student = dict(teacher, name="student-1", iteration=1, clean_error=0.15,
                   mean_corruption_error=0.36, mce=0.8, relative_mce=0.84,
                   baseline="robustness/teacher/results.json", fgsm_accuracy={"2": 0.625})
    paths = report.write_report(run_dir, dict(_full_results(), robustness=[teacher, student]))
    text = open(paths["report"], encoding="utf-8").read()
    assert "## Robustness" in text
    section = text[text.index("## Robustness"):]
    header = next(line for line in section.splitlines() if line.startswith("| model |"))
    assert header.endswith("| FGSM ε=2 | FGSM ε=8 |")
    assert _row(section, "teacher")[-7:] == ["500", "20.00", "45.00", "100 (ref)", "100 (ref)",
                                          "50.00", "12.50"]
    assert _row(section, "student-1")[-7:] == ["500", "15.00", "36.00", "80.00", "84.00",
                                            "62.50", "—"]
    assert "![error per corruption severity](plots/robustness.png)" in text
    _check_png(paths["plots"]["robustness"])
    # Without measurements: no section, no plot.
    plain = report.write_report(str(tmp_path / "plain"), _full_results())
    assert "robustness" not in plain["plots"]
    assert "## Robustness" not in open(plain["report"], encoding="utf-8").read()
