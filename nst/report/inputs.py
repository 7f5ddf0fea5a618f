"""Reading the outputs of the pipeline's stages: the filter's files and eval_results.json."""

import json
from typing import Dict, Mapping, Optional, Union

import tensorflow as tf

from nst import fileio
from nst.pseudo import filter as filter_lib
from nst.pseudo import histogram as hist_lib
from nst.report.values import TEST_SPLIT


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
    """Reads the filter's output files into one JSON-able dict (schema: `nst.report`).

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
