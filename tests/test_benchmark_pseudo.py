"""Smoke test of `tools/benchmark_pseudo.py` at tiny sizes: every part runs, returns
finite positive figures and prints its table (no timing assertions)."""

import importlib.util
import math
import os

import numpy as np
import pytest

from nst.data import readers, schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "benchmark_pseudo", os.path.join(REPO, "tools", "benchmark_pseudo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _positive(*values):
    return all(math.isfinite(v) and v > 0 for v in values)


def test_synthetic_records_are_valid_pseudo_labelled_records(bench, tmp_path):
    bench.write_pseudo_labeled(str(tmp_path), 50, 7, 2, image_bytes=10)
    records = list(readers.read_examples(str(tmp_path), "pseudo_labeled", 7))
    assert len(records) == 50
    for r in records:
        probabilities = r["probabilities"].numpy()
        assert int(r["label"]) == int(np.argmax(probabilities))
        assert float(r["prob"]) == probabilities.max()
        assert len(r["image"].numpy()) == 10
    rng = np.random.default_rng(3)
    p = bench.synthetic_probabilities(rng, 1, 5)[0]
    assert bench.pseudo_labeled_bytes(b"img", p, int(p.argmax()), "x") == \
        schema.encode_pseudo_labeled(b"img", p, label=int(p.argmax()), image_id="x")


def test_all_parts_at_tiny_sizes(bench, tmp_path):
    tmp = str(tmp_path)
    r = bench.predict_rates(tmp, 32, 64, 32, width=0.25, depth=0.25, repeats=1)
    assert _positive(r["cold"], r["job"], r["ours"], r["in_job"], r["reference"], r["ratio"],
                     r["job_ratio"])
    assert r["job_setup"] >= 0 and r["slice_setup"] >= 0
    assert r["traces"] == 1  # the padded last batch does not retrace
    table = bench.predict_table([r])
    assert table.count("\n") == 2 and "predict_on_batch" in table

    f = bench.filter_rates(tmp, 2000, 1000, 2, image_bytes=64, jobs=2)
    assert _positive(f["pass1"], f["ours"], f["reference"], f["ratio"], f["written"],
                     f["jobs_rate"], f["jobs_ratio"])  # the same records in every run
    assert "select_shard" in bench.filter_table(f)

    m = bench.memory_peak(tmp, 20_000, 10, 2, image_bytes=16)
    assert _positive(m["peak"], m["baseline"], m["child_vm_hwm"])
    assert m["written"] > 0 and m["peak"] >= m["baseline"] * 0.9
    assert "peak RSS" in bench.memory_table(m)
    assert os.listdir(tmp) == []  # the data is gone
