"""Lookups and cell formatting shared by the report's plots and report.md.

A partial run's `results` (schema: `nst.report`) lacks values or holds malformed ones:
the lookups return None for them and the cells show DASH, so a report is always written.
"""

import math
from typing import List, Mapping, Optional

import numpy as np

# Splits with their own columns in the table and lines in the accuracy plot.
TEST_SPLIT = "test"
DEV_SPLIT = "dev"
DASH = "—"


def jsonable(obj):
    """numpy scalars/arrays and tuples -> plain JSON types (recursively)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
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


def metric(entry: Mapping, split: str, key: str = "top_1_accuracy") -> Optional[float]:
    metrics = entry.get("metrics") or {}
    split_metrics = metrics.get(split) if isinstance(metrics, Mapping) else None
    if not isinstance(split_metrics, Mapping):
        return None
    return _number(split_metrics.get(key))


def pct(value: Optional[float]) -> str:
    return DASH if value is None else f"{100 * value:.2f}"


def cell(value) -> str:
    if value is None or value == "":
        return DASH
    return str(value).replace("|", "\\|").replace("\n", " ")


def iteration(entry: Mapping) -> Optional[int]:
    value = entry.get("iteration")
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def teacher(stages: List[Mapping]) -> Optional[Mapping]:
    for stage in stages:
        if iteration(stage) == 0:
            return stage
    return None
