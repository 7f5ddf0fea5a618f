"""tools/benchmark_ssl.py's table (the runs themselves are the demo, tested in
tests/test_pipeline.py)."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
    spec = importlib.util.spec_from_file_location(
        "benchmark_ssl", os.path.join(REPO, "tools", "benchmark_ssl.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_is_mean_and_sample_std_over_seeds():
    rows = {"teacher": {"test": [0.90, 0.92, 0.94], "dev": [0.8, 0.8, 0.8]},
            "student-1": {"test": [0.95, None, 0.97], "dev": [None, None, None]}}
    text = _tool().table(rows, ["0", "1", "2"]).splitlines()
    assert text[0].startswith("| model | test top-1 (%)")
    assert text[2] == "| teacher | 92.00 ± 2.00 | 80.00 ± 0.00 | 90.00, 92.00, 94.00 |"
    assert text[3] == "| student-1 | 96.00 ± 1.41 | — | 95.00, —, 97.00 |"
