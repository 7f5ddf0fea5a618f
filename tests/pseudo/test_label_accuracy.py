"""Pseudo-label accuracy against withheld true labels (nst.pseudo.label_accuracy)."""

import numpy as np
import pytest

from nst.data import schema, writers
from nst.pseudo import label_accuracy


def _probs(label, k=3):
    p = np.full(k, 0.1, np.float32)
    p[label] = 1.0 - 0.1 * (k - 1)
    return p


def _write(path, pairs, k=3):
    writers.write_records(str(path), [
        schema.encode_pseudo_labeled(b"img", _probs(label, k), true_label=true,
                                     image_id=f"i{n}")
        for n, (label, true) in enumerate(pairs)])


def test_counts_by_hand(tmp_path):
    # (pseudo label, true label); None: no true label stored.
    _write(tmp_path / "extra-00000-of-00002", [(0, 0), (0, 1), (1, 1), (2, None)])
    _write(tmp_path / "extra-00001-of-00002", [(2, 2), (2, 0), (2, 2), (1, None)])
    out = label_accuracy.pseudo_label_accuracy(str(tmp_path / "extra-*"), 3)
    assert out["records"] == 8 and out["with_true_label"] == 6 and out["correct"] == 4
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["per_class"] == [
        {"records": 2, "correct": 1, "accuracy": 0.5},
        {"records": 2, "correct": 1, "accuracy": 1.0},      # one of its 2 has no true label
        {"records": 4, "correct": 2, "accuracy": 2 / 3}]


def test_no_true_labels_gives_none(tmp_path):
    _write(tmp_path / "f", [(0, None), (1, None)])
    out = label_accuracy.pseudo_label_accuracy(str(tmp_path / "f"), 3)
    assert out["accuracy"] is None and out["records"] == 2
    assert out["per_class"][2] == {"records": 0, "correct": 0, "accuracy": None}


def test_bad_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError):
        label_accuracy.pseudo_label_accuracy(str(tmp_path / "none-*"), 3)
    _write(tmp_path / "wide", [(4, 4)], k=5)
    with pytest.raises(ValueError, match="wide.*outside \\[0, 3\\)"):
        label_accuracy.pseudo_label_accuracy(str(tmp_path / "wide"), 3)
    (tmp_path / "junk").write_bytes(b"not a tfrecord file at all")
    with pytest.raises(ValueError, match="junk: unreadable"):
        label_accuracy.pseudo_label_accuracy(str(tmp_path / "junk"), 3)
