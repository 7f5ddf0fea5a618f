"""Filtering and class balancing of pseudo labels (spec §4): pure algorithm, file steps,
input layouts, resume behaviour and the `nst.filter_unlabel` binary."""

import collections
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from nst import fileio, filter_unlabel
from nst.data import readers, schema, wire, writers
from nst.pseudo import filter as filter_lib
from nst.pseudo import histogram as hist_lib
from nst.pseudo import join as join_lib
from nst.pseudo import layout as layout_lib
from nst.pseudo import parsers
from nst.pseudo import select as select_lib
from nst.testing import file_tree

K = 3


# --------------------------------------------------------------------------- helpers

Example = collections.namedtuple("Example", "id label conf probs image true_label")


def _jpeg(i):
    pixels = np.full((4, 4, 3), [i % 256, (i // 256) % 256, 7], np.uint8)
    return tf.io.encode_jpeg(pixels).numpy()


def _probs(label, conf, k=K):
    p = np.full(k, conf / 10, np.float32)  # every other class below conf: argmax = label
    p[label] = conf
    return p


def _examples(spec, start=0):
    """spec: [(label, conf, count)] -> Examples with ids img-0000, img-0001, ..."""
    out = []
    for label, conf, count in spec:
        for _ in range(count):
            i = start + len(out)
            out.append(Example(f"img-{i:04d}", label, np.float32(conf), _probs(label, conf),
                               _jpeg(i), i % K))
    return out


def _write_pseudo(directory, examples, num_shards, prefix="train"):
    records = [schema.encode_pseudo_labeled(e.image, e.probs, image_id=e.id,
                                            true_label=e.true_label) for e in examples]
    return writers.write_shards(records, str(directory), prefix, num_shards)


def _config(tmp_path, name="out", **kw):
    kw.setdefault("num_label_classes", K)
    kw.setdefault("input_dir", str(tmp_path / "in"))
    return filter_lib.FilterConfig(output_dir=str(tmp_path / name), **kw)


def _run_all(config):
    tasks = [(s, t) for s in range(config.num_shards) for t in range(config.total_replicas)]
    for s, t in tasks:
        filter_lib.write_shard_histogram(config, s, t)
    thresholds = filter_lib.reduce_histograms(config)
    for s, t in tasks:
        filter_lib.select_shard(config, s, t)
    return thresholds, filter_lib.finalize_stats(config)


def _output(config):
    """Output records, parsed as `pseudo_labeled` (the binary test also uses the full
    `readers.read_examples`, which is slower to set up)."""
    files = readers.list_files(os.path.join(config.output_dir, "data", "train*"))
    serialized = tf.data.TFRecordDataset(files).batch(1 << 16).get_single_element()
    features, problems = schema.PSEUDO_LABELED.parse_checked(serialized,
                                                             config.num_label_classes)
    assert not any(problems.numpy())
    features = {k: v.numpy() for k, v in features.items()}
    return [{k: v[i] for k, v in features.items()} for i in range(len(serialized))]


def _id_counts(records):
    return collections.Counter(r["id"].decode() for r in records)


# --------------------------------------------------------------------------- histogram


def test_bucket_edges_compare_float32_with_the_float64_grid():
    values = np.array([0.0, 0.3, 0.29, 0.25, 0.5, 0.999, 0.9999999, 1.0, 1.0000001, 0.01],
                      np.float32)
    assert hist_lib.bucket_indices(values).tolist() == [0, 30, 28, 25, 50, 99, 99, 100, 100, 0]
    # float32(0.3) lies above 0.3, float32(0.29) below 0.29: the float64 grid decides.
    assert float(np.float32(0.3)) > 0.3 and float(np.float32(0.29)) < 0.29
    # A float32 comparison (what NumPy 2 does with a Python float) would say otherwise.
    assert not np.float32(0.29) < 0.29
    # float64 inputs are first rounded to float32, the precision of the files.
    assert hist_lib.bucket_indices(np.array([0.29])).tolist() == [28]
    with pytest.raises(ValueError, match="finite"):
        hist_lib.bucket_indices(np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match="finite"):
        hist_lib.bucket_indices(np.array([-0.1], np.float32))


def test_histogram_counts_argmax_confidences_and_round_trips_json():
    probabilities = np.stack([_probs(0, 0.3), _probs(0, 0.3), _probs(2, 1.0), _probs(2, 0.999),
                              _probs(2, 0.29)])
    hist = hist_lib.probabilities_histogram(probabilities, K)
    assert hist.shape == (K, 101) and hist.dtype == np.int64 and hist.sum() == 5
    assert hist[0, 30] == 2 and hist[2, 100] == 1 and hist[2, 99] == 1 and hist[2, 28] == 1
    as_json = hist_lib.histogram_to_json(hist)
    assert sorted(as_json) == ["0", "2"]  # class 1 has no images: omitted
    assert as_json["0"][30] == [0.3, 2] and as_json["0"][0] == [0.0, 0]
    assert len(as_json["2"]) == 101 and as_json["2"][100] == [1.0, 1]
    assert np.array_equal(hist_lib.histogram_from_json(as_json, K), hist)
    assert sorted(hist_lib.histogram_to_json(hist, omit_empty=False)) == ["0", "1", "2"]
    cumulative = hist_lib.cumulative_from_top(hist)
    assert cumulative[2, 0] == 3 and cumulative[2, 29] == 2 and cumulative[2, 100] == 1
    with pytest.raises(ValueError, match="class 5 outside"):
        hist_lib.histogram_from_json({"5": as_json["0"]}, K, source="f.json")
    with pytest.raises(ValueError, match="f.json: class 0 has 3 buckets"):
        hist_lib.histogram_from_json({"0": as_json["0"][:3]}, K, source="f.json")


def _counts(pairs):
    row = np.zeros(101, np.int64)
    for conf, n in pairs:
        row[hist_lib.bucket_indices(np.array([conf], np.float32))[0]] += n
    return row


def test_threshold_is_the_highest_reaching_num_image():
    # float32(0.95) = 0.94999999 would sit in bucket 94: test values are off the grid.
    row = _counts([(0.955, 50), (0.905, 30), (0.505, 100)])
    assert hist_lib.choose_threshold(row, 60, 0.3) == (0.9, 80)
    assert hist_lib.choose_threshold(row, 50, 0.3) == (0.95, 50)  # total >= num_image
    assert hist_lib.choose_threshold(row, 81, 0.3) == (0.5, 180)
    # A class that never reaches num_image stops at min_threshold with everything above.
    assert hist_lib.choose_threshold(row, 1000, 0.3) == (0.3, 180)
    assert hist_lib.choose_threshold(np.zeros(101), 10, 0.3) == (0.3, 0)  # empty class
    # use_top=0 and use_all always stop at min_threshold.
    assert hist_lib.choose_threshold(row, 60, 0.3, use_top=False) == (0.3, 180)
    assert hist_lib.choose_threshold(row, 60, 0.3, use_all=True) == (0.3, 180)
    # Buckets at or above max_prob are not counted.
    assert hist_lib.choose_threshold(row, 60, 0.3, max_prob=0.95) == (0.5, 130)


def test_min_threshold_must_be_on_the_grid_and_is_inclusive():
    assert hist_lib.grid_index(0.3) == 30 and hist_lib.grid_index(0.0) == 0
    for bad in (0.305, 0.1 + 0.2, -0.01, 1.5):
        with pytest.raises(ValueError, match="0.01 grid"):
            hist_lib.grid_index(bad)
    with pytest.raises(ValueError, match="min_threshold=0.305"):
        filter_lib.FilterConfig(input_dir="i", output_dir="o", min_threshold=0.305)
    # 0.5 is exact in float32: an image with confidence == min_threshold is counted and kept.
    row = _counts([(0.5, 4), (0.49, 9)])
    thresholds = hist_lib.choose_thresholds(row[None], 100, 0.5)
    assert thresholds.thresholds.tolist() == [0.5] and thresholds.totals.tolist() == [4]
    selector = select_lib.Selector(thresholds, 4, seed=1)
    assert selector.copies(0, np.float32(0.5), "a") == 1
    assert selector.copies(0, np.float32(0.49), "a") == 0
    # float32(0.29) < 0.29: below a 0.29 threshold, as in the histogram.
    selector = select_lib.Selector(hist_lib.Thresholds(np.array([0.29]), np.array([1])), 1)
    assert not selector.admitted(0, np.float32(0.29)) and selector.admitted(0, np.float32(0.3))


def test_thresholds_json_and_num_image_across_cat():
    hist = np.stack([_counts([(0.955, 50), (0.905, 30)]), _counts([(0.705, 20)]),
                     np.zeros(101)])
    thresholds = hist_lib.choose_thresholds(hist, 60, 0.3)
    assert thresholds.to_json() == {"0": [0.9, 80], "1": [0.3, 20], "2": [0.3, 0]}
    assert thresholds.num_image_across_cat(60) == 80
    assert hist_lib.Thresholds.from_json(thresholds.to_json(), K) == thresholds
    with pytest.raises(ValueError, match="missing \\[2\\]"):
        hist_lib.Thresholds.from_json({"0": [0.9, 1], "1": [0.3, 1]}, K)


# --------------------------------------------------------------------------- copies


def test_seeded_uniform_depends_only_on_seed_and_id():
    u = select_lib.uniform_from_id(7, "img-1")
    assert u == select_lib.uniform_from_id(7, b"img-1") and 0 <= u < 1
    assert u != select_lib.uniform_from_id(8, "img-1")
    # The documented draw: 53 bits of BLAKE2b-64 of the id keyed with the decimal seed
    # (a change would change every filter output for a given seed).
    for seed, image_id in ((7, b"img-1"), (12345, b"train-00003-of-00008:17"), (0, b"")):
        digest = hashlib.blake2b(image_id, digest_size=8, key=str(seed).encode()).digest()
        assert select_lib.uniform_from_id(seed, image_id) == \
            (int.from_bytes(digest, "little") >> 11) / 2.0 ** 53
    draws = np.array([select_lib.uniform_from_id(7, f"id{i}") for i in range(20000)])
    ids = [f"id{i}" if i % 2 else f"id{i}".encode() for i in range(20000)]
    assert np.array_equal(select_lib.uniform_from_ids(7, ids), draws)
    assert abs(draws.mean() - 0.5) < 0.01 and abs((draws < 0.1).mean() - 0.1) < 0.01


def test_copy_counts_stochastic_rounding():
    assert select_lib.copy_ratio(20, 50) == 2.5
    assert select_lib.copy_ratio(20, 50, upsample=False) == 1.0
    assert select_lib.copy_ratio(200, 50, upsample=False) == 0.25
    assert select_lib.copy_ratio(200, 50, use_all=True) == 1.0
    assert select_lib.copy_count(2.3, 0.29) == 3 and select_lib.copy_count(2.3, 0.3) == 2
    assert select_lib.copy_count(3.0, 0.0) == 3
    # Floor part exact, Bernoulli part within 5 sigma of its mean.
    n, ratio = 20000, 2.3
    copies = np.array([select_lib.copy_count(ratio, select_lib.uniform_from_id(3, f"i{i}"))
                       for i in range(n)])
    assert set(copies.tolist()) == {2, 3}
    extra = (copies == 3).sum()
    assert abs(extra - 0.3 * n) < 5 * np.sqrt(n * 0.3 * 0.7)


def test_shuffled_is_a_bounded_seeded_permutation():
    in_flight = {"read": 0, "max": 0}

    def items():
        for i in range(1000):
            in_flight["read"] += 1
            yield i

    out = []
    for item in select_lib.shuffled(items(), 64, np.random.default_rng(0)):
        out.append(item)
        in_flight["max"] = max(in_flight["max"], in_flight["read"] - len(out))
    assert sorted(out) == list(range(1000)) and out != list(range(1000))
    assert in_flight["max"] <= 64
    again = list(select_lib.shuffled(range(1000), 64, np.random.default_rng(0)))
    assert again == out
    assert list(select_lib.shuffled(range(5), 1, np.random.default_rng(0))) == list(range(5))
    # Slot indices drawn a few at a time: still a seeded permutation.
    few = list(select_lib.shuffled(range(1000), 64, np.random.default_rng(0), draws=3))
    assert sorted(few) == list(range(1000)) and few != list(range(1000))
    assert few == list(select_lib.shuffled(range(1000), 64, np.random.default_rng(0), draws=3))
    assert sorted(select_lib.shuffled(range(10), 64, np.random.default_rng(0))) == \
        list(range(10))  # fewer items than the buffer


def test_batch_copies_equal_the_per_image_copies():
    rng = np.random.default_rng(5)
    n, k = 500, 7
    probabilities = rng.random((n, k), dtype=np.float32) ** 4
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    ids = [f"img-{i}" for i in range(n)]
    labels, conf = hist_lib.confidences(probabilities)
    hist = hist_lib.histogram(labels, conf, k)
    for use_all, upsample, num_image in ((False, True, 120), (False, False, 40),
                                         (True, True, 40), (False, True, 10)):
        thresholds = hist_lib.choose_thresholds(hist, num_image, 0.3, use_all=use_all)
        selector = select_lib.Selector(thresholds, num_image, use_all=use_all,
                                       upsample=upsample, seed=11, max_prob=0.9)
        got_labels, got_conf, copies = selector.copies_batch(probabilities, ids)
        expected = [selector.copies_for(probabilities[i], ids[i]) for i in range(n)]
        assert got_labels.tolist() == [e[0] for e in expected]
        assert got_conf.tolist() == [float(e[1]) for e in expected]
        assert copies.tolist() == [e[2] for e in expected]
        assert 0 in copies and max(copies) >= 1
    bad = probabilities.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="image 'img-3'"):
        selector.copies_batch(bad, ids)


def test_reader_top_class_is_numpy_argmax():
    inf, nan = np.inf, np.nan
    rows = np.array([[0.2, 0.5, 0.5], [0.7, 0.1, 0.2], [0.0, 0.0, 0.0], [-inf, -inf, -inf],
                     [0.3, inf, 0.2], [-1.0, -0.5, -2.0], [0.1, -inf, 0.4],
                     [0.1, nan, 0.9], [nan, nan, 0.1], [0.1, 0.9, nan], [inf, -inf, 0.0]],
                    np.float32)
    labels, conf = parsers.top_class(tf.constant(rows))
    expected = rows[np.arange(len(rows)), np.argmax(rows, axis=1)]
    finite_rows = slice(0, 7)  # the rest: NaN somewhere, or +inf with -inf
    assert labels.numpy()[finite_rows].tolist() == np.argmax(rows, axis=1)[finite_rows].tolist()
    np.testing.assert_array_equal(conf.numpy()[finite_rows], expected[finite_rows])
    assert np.isnan(conf.numpy()[7:]).all()  # rejected by the selection, as with NumPy
    with pytest.raises(ValueError, match="image 'c'"):
        select_lib.Selector(hist_lib.Thresholds(np.zeros(K), np.ones(K)), 1).copies_batch(
            rows[6:8], ["b", "c"], labels.numpy()[6:8], conf.numpy()[6:8])
    rng = np.random.default_rng(0)
    for k in (3, 40, 1000):  # many ties: the first maximum, as np.argmax
        ties = rng.integers(0, 3, (2000, k)).astype(np.float32)
        labels, conf = parsers.top_class(tf.constant(ties))
        assert labels.numpy().tolist() == np.argmax(ties, axis=1).tolist()
        np.testing.assert_array_equal(conf.numpy(), ties.max(axis=1))


def test_final_stats_layout():
    final = select_lib.final_stats([{"0": 3, "2": 5}, {"2": 1}], K)
    assert final == {"cat_count": {"2": 6, "0": 3, "1": 0},
                     "cat_sorted_pairs": [["2", 6], ["0", 3], ["1", 0]], "total_cnt": 9}


# --------------------------------------------------------------------------- end to end

# class 0 is thinned (80 images >= 0.85, num_image 60), class 1 duplicated (25 admitted,
# x = 2.4), class 2 empty; images below the threshold never appear.
SPEC = [(0, 0.955, 40), (0, 0.855, 40), (0, 0.505, 20), (1, 0.705, 25), (1, 0.29, 5)]


def test_thinning_duplication_and_empty_class(tmp_path):
    examples = _examples(SPEC)
    _write_pseudo(tmp_path / "in", examples, 2)
    config = _config(tmp_path, num_shards=2, num_image=60, min_threshold=0.3)
    thresholds, final = _run_all(config)
    out = config.output_dir
    assert fileio.read_json(os.path.join(out, "threshold.json")) == {
        "0": [0.85, 80], "1": [0.3, 25], "2": [0.3, 0]}
    assert fileio.read_json(os.path.join(out, "num_image_across_cat.json")) == {
        "num_image_acorss_cat": 85}
    prelim = os.path.join(out, "prelim_stats")
    assert sorted(os.listdir(prelim)) == ["prelim_stats_00000_0.json", "prelim_stats_00001_0.json",
                                          "total_counts.json", "total_counts_sum.json"]
    total = fileio.read_json(os.path.join(prelim, "total_counts.json"))
    assert total["0"][95] == [0.95, 40] and total["0"][85] == [0.85, 40]
    assert total["2"] == [[j / 100, 0] for j in range(101)]

    records = _output(config)
    by_id = {e.id: e for e in examples}
    counts = _id_counts(records)
    for r in records:  # every field as the teacher and the input said
        e = by_id[r["id"].decode()]
        assert r["label"] == e.label and r["prob"] == e.conf and r["image"] == e.image
        assert np.array_equal(r["probabilities"], e.probs) and r["true_label"] == e.true_label
    class0 = [e.id for e in examples if e.label == 0 and e.conf >= 0.85]
    class1 = [e.id for e in examples if e.label == 1 and e.conf >= 0.3]
    assert set(counts) <= set(class0) | set(class1)  # nothing below a threshold
    assert all(counts[i] <= 1 for i in class0)  # thinning: x = 0.75
    assert all(counts[i] in (2, 3) for i in class1)  # duplication: floor(2.4) = 2 always
    n0, n1 = sum(counts[i] for i in class0), sum(counts[i] for i in class1)
    assert abs(n0 - 60) < 5 * np.sqrt(80 * 0.75 * 0.25)
    assert abs((n1 - 50) - 10) < 5 * np.sqrt(25 * 0.4 * 0.6)
    # Exact expectation from the seeded draws.
    draws = {i: select_lib.uniform_from_id(config.seed, i) for i in class0 + class1}
    assert n0 == sum(draws[i] < 0.75 for i in class0)
    fraction = 60 / 25 - 2  # x - floor(x) in float64, as the selector computes it
    assert n1 == 50 + sum(draws[i] < fraction for i in class1)
    assert final == select_lib.final_stats([{"0": n0, "1": n1}], K)
    assert fileio.read_json(os.path.join(out, "stats", "final_stats.json")) == final
    # Duplicates are separate records, spread by the shuffle buffer.
    assert len(records) == n0 + n1


def test_upsample_off_and_use_all_keep_each_image_once(tmp_path):
    examples = _examples(SPEC)
    _write_pseudo(tmp_path / "in", examples, 1)
    config = _config(tmp_path, num_shards=1, num_image=60, min_threshold=0.3, upsample=False)
    _run_all(config)
    counts = _id_counts(_output(config))
    class1 = {e.id for e in examples if e.label == 1 and e.conf >= 0.3}
    assert {i for i in counts if i in class1} == class1 and max(counts.values()) == 1

    config = _config(tmp_path, "all", num_shards=1, num_image=60, min_threshold=0.3,
                     use_all=True)
    thresholds, final = _run_all(config)
    counts = _id_counts(_output(config))
    assert set(counts) == {e.id for e in examples if e.conf >= 0.3}
    assert max(counts.values()) == 1 and final["total_cnt"] == 125

    config = _config(tmp_path, "top0", num_shards=1, num_image=60, min_threshold=0.3,
                     use_top=False)
    thresholds, _ = _run_all(config)
    assert thresholds.to_json()["0"] == [0.3, 100]  # subsample all 100 admitted randomly


def test_copies_do_not_depend_on_the_shard_split(tmp_path):
    examples = _examples(SPEC)
    rng = np.random.default_rng(5)
    shuffled = [examples[i] for i in rng.permutation(len(examples))]
    _write_pseudo(tmp_path / "in2", examples, 2)
    _write_pseudo(tmp_path / "in3", shuffled, 3)
    results = []
    for n, name in ((2, "in2"), (3, "in3")):
        config = _config(tmp_path, f"out{n}", input_dir=str(tmp_path / name), num_shards=n,
                         num_image=60, min_threshold=0.3)
        _run_all(config)
        results.append(collections.Counter((r["id"].decode(), int(r["label"]))
                                           for r in _output(config)))
    assert results[0] == results[1] and sum(results[0].values()) > 0
    other = _config(tmp_path, "seed", input_dir=str(tmp_path / "in2"), num_shards=2,
                    num_image=60, min_threshold=0.3, seed=99)
    _run_all(other)
    assert collections.Counter((r["id"].decode(), int(r["label"]))
                               for r in _output(other)) != results[0]


# --------------------------------------------------------------------------- layouts


def _write_separate(tmp_path, examples, num_shards, replicas, order="same", with_ids=True,
                    prefix="extra", info=True, image_ids=None):
    """Raw unlabeled shards + train-info-* predictions (+ info files)."""
    bounds = writers.shard_boundaries(len(examples), num_shards)
    for s in range(num_shards):
        shard = examples[bounds[s]:bounds[s + 1]]
        # Raw records as the original (dummy pseudo-label fields, §3.2), ids if asked.
        writers.write_records(
            str(tmp_path / "in" / writers.shard_name(prefix, s, num_shards)),
            [schema.encode_unlabeled(e.image, true_label=e.true_label,
                                     image_id=e.id if (with_ids if image_ids is None
                                                       else image_ids) else None,
                                     dummy_num_classes=K) for e in shard])
        for w in range(replicas):
            part = shard[w::replicas]
            if order == "shuffled":
                part = [part[i] for i in np.random.default_rng(w).permutation(len(part))]
            writers.write_records(
                str(tmp_path / "pred" / writers.prediction_name(s, num_shards, w)),
                [schema.encode_prediction(e.probs, image_id=e.id if with_ids else None)
                 for e in part])
            if info:
                os.makedirs(tmp_path / "info", exist_ok=True)
                with open(tmp_path / "info" / writers.info_name(s, num_shards, w), "w") as f:
                    json.dump({"image_num": len(part)}, f)


def _separate_config(tmp_path, name="out", **kw):
    kw.setdefault("num_image", 60)
    kw.setdefault("min_threshold", 0.3)
    kw.setdefault("info_dir", str(tmp_path / "info"))
    return _config(tmp_path, name, prediction_dir=str(tmp_path / "pred"),
                   file_prefix="extra", **kw)


def _check_labels(config, examples, key=lambda e: e.id):
    by_key = {key(e): e for e, in zip(examples)}
    records = _output(config)
    assert records
    for r in records:
        e = by_key[r["id"].decode()]
        assert r["label"] == e.label and r["image"] == e.image and r["prob"] == e.conf
    return records


def test_predictions_are_joined_by_id_not_by_order(tmp_path, monkeypatch):
    examples = _examples(SPEC)
    _write_separate(tmp_path, examples, 1, 2, order="shuffled")
    config = _separate_config(tmp_path, num_shards=1, total_replicas=2)
    calls = []
    partition_join = join_lib._partition_join
    monkeypatch.setattr(join_lib, "_partition_join",
                        lambda *args: calls.append(args[1:3]) or partition_join(*args))
    _run_all(config)
    assert sorted(calls) == [(0, 0), (0, 1)]  # both slices are out of order
    shuffled_records = _check_labels(config, examples)
    # The same data in image order (streamed join) gives the same records.
    ordered = tmp_path / "ordered"
    _write_separate(ordered, examples, 1, 2)
    config = _separate_config(ordered, num_shards=1, total_replicas=2)
    _run_all(config)
    assert _id_counts(_check_labels(config, examples)) == _id_counts(shuffled_records)
    assert len(calls) == 2  # in order: streamed, no hash join
    assert not os.path.exists(os.path.join(config.output_dir, ".tmp")) or not os.listdir(
        os.path.join(config.output_dir, ".tmp"))


def test_join_errors_name_the_files(tmp_path):
    examples = _examples(SPEC)
    _write_separate(tmp_path, examples, 1, 1, order="shuffled")
    pred = str(tmp_path / "pred" / writers.prediction_name(0, 1, 0))
    records = [r.numpy() for r in tf.data.TFRecordDataset(pred)]
    writers.write_records(pred, records[:-1] + [schema.encode_prediction(
        _probs(0, 0.9), image_id="stranger")])
    config = _separate_config(tmp_path, num_shards=1, info_dir="")
    filter_lib.write_shard_histogram(config, 0, 0)
    filter_lib.reduce_histograms(config)
    with pytest.raises(ValueError, match="has no prediction in .*train-info-00000-of-00001-00000"):
        filter_lib.select_shard(config, 0, 0)
    assert not os.path.exists(config.stats_path(0, 0))
    assert not os.path.exists(config.data_path(0, 0))


def test_original_layout_by_record_order(tmp_path):
    examples = _examples(SPEC)
    _write_separate(tmp_path, examples, 2, 2, with_ids=False)
    config = _separate_config(tmp_path, num_shards=2, total_replicas=2)
    _run_all(config)
    bounds = writers.shard_boundaries(len(examples), 2)
    derived = {}
    for s in range(2):
        for i, e in enumerate(examples[bounds[s]:bounds[s + 1]]):
            derived[f"{writers.shard_name('extra', s, 2)}:{i}"] = e
    records = _output(config)
    assert records
    for r in records:
        e = derived[r["id"].decode()]
        assert r["label"] == e.label and r["image"] == e.image
    names = sorted(os.listdir(os.path.join(config.output_dir, "data")))
    assert names == ["train-0-00000-of-00002", "train-0-00001-of-00002",
                     "train-1-00000-of-00002", "train-1-00001-of-00002"]
    assert sorted(os.listdir(os.path.join(config.output_dir, "stats")))[0] == "final_stats.json"


@pytest.mark.parametrize("with_ids", [True, False])
def test_streamed_join_does_not_depend_on_the_batch_size(tmp_path, monkeypatch, with_ids):
    # Images are taken 3 (then 1024) at a time against 1024-record prediction batches, so
    # batches are split and stitched across the reader's batch boundaries.
    examples = _examples(SPEC)
    _write_separate(tmp_path, examples, 1, 2, with_ids=with_ids)
    config = _separate_config(tmp_path, num_shards=1, total_replicas=2)
    _run_all(config)
    reference = {f: open(os.path.join(config.output_dir, "data", f), "rb").read()
                 for f in os.listdir(os.path.join(config.output_dir, "data"))}
    monkeypatch.setattr(join_lib, "BATCH_SIZE", 3)
    config = _separate_config(tmp_path, "small_batches", num_shards=1, total_replicas=2)
    _run_all(config)
    assert reference and reference == {
        f: open(os.path.join(config.output_dir, "data", f), "rb").read()
        for f in os.listdir(os.path.join(config.output_dir, "data"))}
    items = list(join_lib.joined_items(config.layout, 0, 1))
    assert [it.image_id for it in items][:2] == (
        ["img-0001", "img-0003"] if with_ids else ["extra-00000-of-00001:1",
                                                   "extra-00000-of-00001:3"])
    assert len(items) == len(examples[1::2])


def test_original_predictions_join_images_with_stored_ids_by_position(tmp_path):
    examples = _examples(SPEC)
    _write_separate(tmp_path, examples, 1, 1, with_ids=False, image_ids=True)
    _run_all(_separate_config(tmp_path, num_shards=1))
    _check_labels(_separate_config(tmp_path, num_shards=1), examples)


def test_bad_input_records_are_named(tmp_path):
    examples = _examples(SPEC)[:4]
    records = [schema.encode_pseudo_labeled(e.image, e.probs, image_id=e.id) for e in examples]
    records[2] = schema.encode_pseudo_labeled(b"x", [0.5, 0.5], image_id="short")  # K = 2
    path = str(tmp_path / "in" / "train-00000-of-00001")
    writers.write_records(path, records)
    config = _config(tmp_path, num_shards=1)
    with pytest.raises(ValueError, match=f"Record 2 of {path} is not valid as a "
                                         f"pseudo-labelled record: feature probabilities "
                                         f"has 2"):
        filter_lib.write_shard_histogram(config, 0, 0)
    writers.write_records(path, [schema.encode_unlabeled(b"x", image_id="raw")])
    with pytest.raises(ValueError, match=f"Record 0 of {path} holds no teacher prob"):
        filter_lib.write_shard_histogram(config, 0, 0)
    # Fields the filter does not use are still checked as the schema checks them: a
    # stored label out of range or repeated, a true label out of range.
    good = [schema.encode_pseudo_labeled(e.image, e.probs, image_id=e.id) for e in examples]

    def record(label=(0,), true_label=()):
        feature = {
            schema.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"])),
            schema.PROBABILITIES_KEY: tf.train.Feature(
                float_list=tf.train.FloatList(value=_probs(0, 0.9).tolist())),
            schema.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=label)),
            schema.CLASS_LABEL_KEY: tf.train.Feature(
                int64_list=tf.train.Int64List(value=true_label))}
        return tf.train.Example(features=tf.train.Features(feature=feature)
                                ).SerializeToString()

    for bad, message in ((record(label=[7]), "Record 1 of .*: pseudo label 7"),
                         (record(label=[0, 1]), "Record 1 of .*label has 2 values"),
                         (record(true_label=[9]), "Record 1 of .*: true label 8")):
        writers.write_records(path, good[:1] + [bad] + good[1:])
        with pytest.raises(ValueError, match=message):
            filter_lib.write_shard_histogram(config, 0, 0, overwrite=True)
    writers.write_records(path, [b"not an example"])
    with pytest.raises(ValueError, match=f"Record 0 of {path} is not a pseudo-labelled "
                                         f"record: it is not a serialized tf.train.Example"):
        filter_lib.write_shard_histogram(config, 0, 0)


def test_original_layout_count_mismatches_name_the_files(tmp_path):
    examples = _examples(SPEC)
    _write_separate(tmp_path, examples, 1, 2, with_ids=False)
    config = _separate_config(tmp_path, num_shards=1, total_replicas=2)
    info = tmp_path / "info" / writers.info_name(0, 1, 1)
    info.write_text(json.dumps({"image_num": 3}))
    with pytest.raises(ValueError, match=f"info file {info} says image_num=3"):
        filter_lib.write_shard_histogram(config, 0, 1)
    filter_lib.write_shard_histogram(config, 0, 0)
    # One prediction short in worker 0: pass 2 names both files.
    pred = str(tmp_path / "pred" / writers.prediction_name(0, 1, 0))
    records = [r.numpy() for r in tf.data.TFRecordDataset(pred)]
    writers.write_records(pred, records[:-1])
    config = _separate_config(tmp_path, num_shards=1, total_replicas=2, info_dir="")
    filter_lib.write_shard_histogram(config, 0, 1)
    filter_lib.reduce_histograms(config)
    with pytest.raises(ValueError, match=r"extra-00000-of-00001 \(records with index mod 2 "
                                         r"== 0\) holds 65 images but .*00000 holds 64"):
        filter_lib.select_shard(config, 0, 0)
    # Slice files must match --total_replicas.
    with pytest.raises(FileNotFoundError, match="train-info-00000-of-00001-00002"):
        filter_lib.write_shard_histogram(_separate_config(tmp_path, "o3", num_shards=1,
                                                          total_replicas=3), 0, 0)
    with pytest.raises(ValueError, match="more worker slices than --total_replicas=1"):
        filter_lib.write_shard_histogram(_separate_config(tmp_path, "o1", num_shards=1), 0, 0)


# --------------------------------------------------------------------------- resume


def test_reduce_select_and_finalize_fail_fast_naming_missing_files(tmp_path):
    _write_pseudo(tmp_path / "in", _examples(SPEC), 3)
    config = _config(tmp_path, num_shards=3, num_image=60, min_threshold=0.3)
    filter_lib.write_shard_histogram(config, 1, 0)
    with pytest.raises(FileNotFoundError) as error:
        filter_lib.reduce_histograms(config)
    assert "prelim_stats_00000_0.json" in str(error.value)
    assert "prelim_stats_00002_0.json" in str(error.value)
    assert "prelim_stats_00001_0.json" not in str(error.value)
    with pytest.raises(FileNotFoundError, match="run the reduce step first"):
        filter_lib.select_shard(config, 1, 0)
    filter_lib.write_shard_histogram(config, 0, 0)
    filter_lib.write_shard_histogram(config, 2, 0)
    filter_lib.reduce_histograms(config)
    filter_lib.select_shard(config, 1, 0)
    with pytest.raises(FileNotFoundError, match="stats_00000_0.json.*stats_00002_0.json"):
        filter_lib.finalize_stats(config)
    # Thresholds of other settings are refused rather than mixed.
    changed = _config(tmp_path, num_shards=3, num_image=61, min_threshold=0.3)
    with pytest.raises(ValueError, match="num_image"):
        filter_lib.select_shard(changed, 0, 0)
    with pytest.raises(ValueError, match="num_image.*Delete"):
        filter_lib.reduce_histograms(changed)
    filter_lib.reduce_histograms(config)  # same settings and histograms: fine
    with open(config.path("threshold.json"), "w") as f:  # e.g. left from another run
        json.dump({"0": [0.5, 1], "1": [0.3, 1], "2": [0.3, 0]}, f)
    with pytest.raises(ValueError, match="differs from the thresholds"):
        filter_lib.reduce_histograms(config)
    with pytest.raises(ValueError, match="task 1 outside"):
        filter_lib.select_shard(config, 0, 1)


def test_interrupted_select_reruns_to_identical_output(tmp_path, monkeypatch):
    _write_pseudo(tmp_path / "in", _examples(SPEC), 2)
    reference = _config(tmp_path, "reference", num_shards=2, num_image=60, min_threshold=0.3,
                        shuffle_buffer=16)
    _run_all(reference)
    config = _config(tmp_path, num_shards=2, num_image=60, min_threshold=0.3,
                     shuffle_buffer=16)
    for s in range(2):
        filter_lib.write_shard_histogram(config, s, 0)
    filter_lib.reduce_histograms(config)

    original_write_many = writers.ShardWriter.write_many

    def dying_write_many(self, records):  # killed after the 10th record
        original_write_many(self, records[:10 - self.num_records])
        if self.num_records == 10:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(writers.ShardWriter, "write_many", dying_write_many)
    with pytest.raises(KeyboardInterrupt):
        filter_lib.select_shard(config, 0, 0)
    monkeypatch.setattr(writers.ShardWriter, "write_many", original_write_many)
    data = os.path.join(config.output_dir, "data")
    assert os.listdir(data) == [] and not os.path.exists(config.stats_path(0, 0))
    # A killed process's temporary is deleted by the rerun and duplicates nothing.
    stale = fileio.temporary_path(config.data_path(0, 0))
    with open(stale, "wb") as f:
        f.write(b"partial")
    filter_lib.select_shard(config, 0, 0)
    filter_lib.select_shard(config, 1, 0)
    # Killed after publishing the data but before the stats: redone identically.
    os.remove(config.stats_path(1, 0))
    filter_lib.select_shard(config, 1, 0)
    filter_lib.finalize_stats(config)
    assert not os.path.exists(stale)
    assert file_tree(config.output_dir) == file_tree(reference.output_dir)
    assert _id_counts(_output(config)) == _id_counts(_output(reference))
    # A finished shard is skipped.
    mtime = os.path.getmtime(config.data_path(0, 0))
    assert filter_lib.select_shard(config, 0, 0) is None
    assert os.path.getmtime(config.data_path(0, 0)) == mtime


def test_reruns_remove_the_stale_temporaries_of_their_own_outputs_only(tmp_path):
    """A killed writer's hidden temporary (`fileio.temporary_path`) of a filter output is
    deleted by the next run that writes that output; any other file stays: another
    output's temporary (until its own job runs), names that are not exactly
    `.<name>.tmp-<32 hex>`, other hidden files."""
    _write_pseudo(tmp_path / "in", _examples(SPEC), 2)
    settings = dict(num_shards=2, num_image=60, min_threshold=0.3, shuffle_buffer=16)
    reference = _config(tmp_path, "reference", **settings)
    _run_all(reference)
    config = _config(tmp_path, **settings)
    outputs = [config.histogram_path(s, 0) for s in range(2)] + [
        config.path(name) for name in ("total_counts.json", "total_counts_sum.json",
                                       "threshold.json", "num_image_across_cat.json",
                                       "filter_config.json", "final_stats.json")] + [
        config.data_path(s, 0) for s in range(2)] + [config.stats_path(s, 0)
                                                     for s in range(2)]

    def plant(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"partial")
        return path

    stale = {out: [plant(fileio.temporary_path(out)) for _ in range(2)] for out in outputs}
    foreign = []
    for out in outputs[:1] + outputs[-4:-2]:  # a histogram, the data files
        directory, name = os.path.split(out)
        foreign += [plant(os.path.join(directory, f".{name}.tmp-backup")),
                    plant(os.path.join(directory, f".{name}.tmp-{'ab' * 15}")),  # 30 hex
                    plant(os.path.join(directory, f".{name}.tmp-{'AB' * 16}")),
                    plant(os.path.join(directory, f".{name}.tmp-{'ab' * 16}.bak")),
                    plant(os.path.join(directory, f".{name}x.tmp-{'ab' * 16}")),
                    plant(os.path.join(directory, f".other.tmp-{'ab' * 16}")),
                    plant(os.path.join(directory, ".keep"))]
    foreign = sorted(set(foreign))  # the data files share a directory
    filter_lib.write_shard_histogram(config, 0, 0)
    assert not any(map(os.path.exists, stale[config.histogram_path(0, 0)]))
    assert all(map(os.path.exists, stale[config.histogram_path(1, 0)]))  # not this job's
    _run_all(config)
    assert [p for out in outputs for p in stale[out] if os.path.exists(p)] == []
    assert all(map(os.path.exists, foreign))
    prefix = os.path.join(config.output_dir, "")
    got = file_tree(config.output_dir)
    for path in foreign:
        del got[path[len(prefix):]]
    assert got == file_tree(reference.output_dir)


def _write_shard_files(directory, shards, prefix="train"):
    """shards: one list of serialized records per shard (an empty list: an empty file)."""
    for shard, records in enumerate(shards):
        writers.write_records(os.path.join(str(directory),
                                           writers.shard_name(prefix, shard, len(shards))),
                              records)


def test_multi_shard_jobs_equal_one_job_per_shard(tmp_path):
    examples = _examples(SPEC)
    # Shard 1 stores no ids (derived from file and index), shard 2 is empty.
    records = [schema.encode_pseudo_labeled(e.image, e.probs, true_label=e.true_label,
                                            image_id=None if 30 <= i < 60 else e.id)
               for i, e in enumerate(examples)]
    _write_shard_files(tmp_path / "in", [records[:30], records[30:60], [], records[60:]])
    settings = dict(num_shards=4, num_image=60, min_threshold=0.3, shuffle_buffer=16)
    reference = _config(tmp_path, "reference", **settings)
    _run_all(reference)
    config = _config(tmp_path, **settings)
    # Pass 1 as one job over shards 3, 0, 1 and one over shard 2 (any order, any split).
    assert filter_lib.write_shard_histograms(config, [3, 0, 1], 0) == [
        config.histogram_path(s, 0) for s in (3, 0, 1)]
    filter_lib.write_shard_histogram(config, 2, 0)
    filter_lib.reduce_histograms(config)
    # Pass 2: shard 1 alone first, then one job over all four, which skips shard 1.
    filter_lib.select_shard(config, 1, 0)
    mtime = os.path.getmtime(config.data_path(1, 0))
    stats = filter_lib.select_shards(config, range(4), 0)
    assert stats[1] is None and stats[2] == {} and sum(stats[0].values()) > 0
    assert os.path.getmtime(config.data_path(1, 0)) == mtime
    filter_lib.finalize_stats(config)
    assert file_tree(config.output_dir) == file_tree(reference.output_dir)
    assert file_tree(os.path.join(config.output_dir, "prelim_stats")) == file_tree(
        os.path.join(reference.output_dir, "prelim_stats"))
    ids = _id_counts(_output(config))
    assert {i.split(":")[0] if ":" in i else "stored" for i in ids} == {
        "train-00001-of-00004", "stored"}
    # The binary takes the same lists and ranges.
    flag_common = dict(input_dir=tmp_path / "in", output_dir=tmp_path / "cli", num_shards=4,
                       num_label_classes=K, num_image=60, min_threshold=0.3,
                       shuffle_buffer=16)
    assert filter_unlabel.run(_flag_values(only_get_stats=1, shard_id="1-3", **flag_common))
    thresholds = filter_unlabel.run(_flag_values(only_get_stats=1, shard_id="0",
                                                 **flag_common))
    assert thresholds == filter_lib.load_thresholds(reference)
    assert len(filter_unlabel.run(_flag_values(only_get_stats=0, shard_id="0,2-3",
                                               **flag_common))) == 3
    filter_unlabel.run(_flag_values(only_get_stats=0, shard_id="1", **flag_common))
    assert file_tree(tmp_path / "cli" / "data") == file_tree(tmp_path / "reference" / "data")
    with pytest.raises(ValueError, match="--shard_id='2-5' must name shards in"):
        filter_unlabel.run(_flag_values(only_get_stats=0, shard_id="2-5", **flag_common))


def test_multi_shard_job_publishes_the_shards_before_a_bad_record(tmp_path):
    examples = _examples(SPEC)
    records = [schema.encode_pseudo_labeled(e.image, e.probs, image_id=e.id)
               for e in examples]
    bad = list(records[60:])
    bad[5] = schema.encode_pseudo_labeled(b"x", [0.5, 0.5], image_id="short")  # K = 2
    _write_shard_files(tmp_path / "in", [records[:30], records[30:60], bad])
    config = _config(tmp_path, num_shards=3, num_image=60, min_threshold=0.3)
    with pytest.raises(ValueError, match="Record 5 of .*train-00002-of-00003 is not valid "
                                         "as a pseudo-labelled record: feature "
                                         "probabilities has 2"):
        filter_lib.write_shard_histograms(config, range(3), 0)
    assert os.path.exists(config.histogram_path(1, 0))  # done before shard 2 failed
    assert not os.path.exists(config.histogram_path(2, 0))
    # Pass 2 over thresholds made without shard 2: shards 0 and 1 are published, shard 2
    # (read after them by the same reader) fails naming the record and writes nothing.
    _write_shard_files(tmp_path / "ok", [records[:30], records[30:60], records[60:]])
    ok = _config(tmp_path, "ok_out", input_dir=str(tmp_path / "ok"), num_shards=3,
                 num_image=60, min_threshold=0.3)
    thresholds = _run_all(ok)[0]
    with pytest.raises(ValueError, match="Record 5 of .*train-00002-of-00003 is not valid"):
        filter_lib.select_shards(config, range(3), 0, thresholds)
    for shard in (0, 1):
        with open(config.data_path(shard, 0), "rb") as got, \
                open(ok.data_path(shard, 0), "rb") as want:
            assert got.read() == want.read()
        assert os.path.exists(config.stats_path(shard, 0))
    assert not os.path.exists(config.data_path(2, 0))
    assert not os.path.exists(config.stats_path(2, 0))
    # An all-zero vector reaching pass 2 is named there too.
    zero = schema.encode_pseudo_labeled(b"z", np.zeros(K, np.float32), image_id="zero")
    _write_shard_files(tmp_path / "zero", [records[:3] + [zero]])
    layout = layout_lib.InputLayout(str(tmp_path / "zero"), num_shards=1, num_classes=K)
    with pytest.raises(ValueError, match="Record 3 of .*train-00000-of-00001 holds no "
                                         "teacher probabilities"):
        list(join_lib.joined_batches(layout, 0, 0))


def test_output_records_are_the_encoded_selection_whatever_the_input_bytes(tmp_path):
    """Pass 2's records are those `schema.encode_pseudo_labeled` writes for the selected
    images, whatever the layout of the input record and its stored label / prob."""
    examples = _examples([(0, 0.9, 6), (1, 0.8, 6), (2, 0.7, 6)])

    def canonical(e, **kw):
        kw.setdefault("image_id", e.id)
        return schema.encode_pseudo_labeled(e.image, e.probs, true_label=e.true_label, **kw)

    def with_extra_feature(e):
        example = tf.train.Example.FromString(canonical(e))
        example.features.feature["image/format"].bytes_list.value.append(b"jpeg")
        return example.SerializeToString(deterministic=True)

    variants = [
        lambda e: canonical(e),
        lambda e: schema.encode_pseudo_labeled(e.image, e.probs, image_id=e.id),  # no true
        lambda e: tf.train.Example.FromString(canonical(e)).SerializeToString(),  # key order
        lambda e: canonical(e, label=(e.label + 1) % K),  # stored label is not the argmax
        lambda e: canonical(e, prob=0.5),  # stored prob is not the max
        lambda e: canonical(e, image_id=None),  # id derived from the file and index
        with_extra_feature,
    ]
    records = [variants[i % len(variants)](e) for i, e in enumerate(examples)]
    assert len(set(records[2:3] + [canonical(examples[2])])) == 2  # really another order
    path = tmp_path / "in" / "train-00000-of-00001"
    writers.write_records(str(path), records)
    expected = collections.Counter(
        schema.encode_pseudo_labeled(
            e.image, e.probs, label=e.label,
            true_label=None if i % len(variants) == 1 else e.true_label,
            image_id=f"train-00000-of-00001:{i}" if i % len(variants) == 5 else e.id)
        for i, e in enumerate(examples))
    config = _config(tmp_path, num_shards=1, use_all=True, num_image=1)
    _run_all(config)
    got = collections.Counter(tf.data.TFRecordDataset(config.data_path(0, 0))
                              .as_numpy_iterator())
    assert got == expected


@pytest.mark.slow
def test_select_job_killed_mid_write_reruns_to_identical_output(tmp_path):
    """A real `nst.filter_unlabel --only_get_stats=0` process SIGKILLed while it writes
    its data file publishes nothing; the rerun deletes the killed process's hidden
    temporary and writes exactly an uninterrupted run's files."""
    rng = np.random.default_rng(3)
    n, k = 60_000, 10
    probs = rng.random((n, k), dtype=np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    encode = wire.PseudoLabeledEncoder()
    blob = rng.bytes(1 << 16)
    writers.write_records(str(tmp_path / "in" / "train-00000-of-00001"), [
        encode(blob[i % 60000:i % 60000 + 2000], probs[i].astype("<f4"),
               int(probs[i].argmax()), None, f"img-{i}") for i in range(n)])
    settings = dict(num_shards=1, num_label_classes=k, num_image=9000)
    reference = _config(tmp_path, "reference", **settings)
    _run_all(reference)
    config = _config(tmp_path, "killed", **settings)
    filter_lib.write_shard_histogram(config, 0, 0)
    filter_lib.reduce_histograms(config)
    command = [sys.executable, "-m", "nst.filter_unlabel", "--only_get_stats=0",
               f"--input_dir={config.input_dir}", f"--output_dir={config.output_dir}",
               "--num_shards=1", f"--num_label_classes={k}", "--num_image=9000"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    data = os.path.join(config.output_dir, "data")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline and not (
            os.path.isdir(data) and any(f.startswith(".") for f in os.listdir(data))):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(config.stats_path(0, 0)), "finished before the kill"
    assert [f for f in os.listdir(data) if not f.startswith(".")] == []  # nothing published
    subprocess.run(command, check=True, env=env, capture_output=True)
    filter_lib.finalize_stats(config)
    assert file_tree(config.output_dir) == file_tree(reference.output_dir)


# --------------------------------------------------------------------------- binary


def _flag_values(**kw):
    values = flags.FlagValues()
    filter_unlabel.define_flags(values)
    values(["filter_unlabel"] + [f"--{k}={v}" for k, v in kw.items()])
    return values


def test_binary_end_to_end_over_three_shards(tmp_path, caplog):
    examples = _examples(SPEC)
    _write_pseudo(tmp_path / "in", examples, 3, prefix="extra")
    common = dict(input_dir=tmp_path / "in", output_dir=tmp_path / "out", file_prefix="extra",
                  prelim_stats_dir=tmp_path / "prelim", num_shards=3, num_label_classes=K,
                  num_image=60, min_threshold=0.3, task=0)
    # Pass 1, master first: it cannot reduce yet and says which histograms are missing.
    filter_unlabel.run(_flag_values(only_get_stats=1, shard_id=0, **common))
    assert "prelim_stats_00001_0.json" in caplog.text
    assert not (tmp_path / "out" / "threshold.json").exists()
    for shard in (1, 2):
        filter_unlabel.run(_flag_values(only_get_stats=1, shard_id=shard, **common))
    thresholds = filter_unlabel.run(_flag_values(only_get_stats=2, **common))
    assert thresholds.to_json()["0"] == [0.85, 80]
    # The master's pass 1 reduces by itself once everything exists (same thresholds).
    assert filter_unlabel.run(_flag_values(only_get_stats=1, shard_id=0, **common)) == thresholds
    # Pass 2 with the master last: it finalizes.
    for shard in (1, 2, 0):
        filter_unlabel.run(_flag_values(only_get_stats=0, shard_id=shard, **common))
    final_path = tmp_path / "out" / "stats" / "final_stats.json"
    final = json.loads(final_path.read_text())
    assert final == filter_unlabel.run(_flag_values(only_get_stats=3, **common))
    records = list(readers.read_examples(str(tmp_path / "out" / "data" / "train*"),
                                         "pseudo_labeled", K).as_numpy_iterator())
    assert len(records) == final["total_cnt"] > 0
    assert final["cat_count"]["2"] == 0
    assert sorted(os.listdir(tmp_path / "prelim"))[-2:] == ["total_counts.json",
                                                            "total_counts_sum.json"]


def test_binary_reports_missing_histograms_with_exit_status(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nst.filter_unlabel", f"--output_dir={tmp_path}/out",
         "--num_shards=2", "--num_label_classes=3", "--only_get_stats=2"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "prelim_stats_00000_0.json" in result.stderr
    assert "prelim_stats_00001_0.json" in result.stderr
