"""nst-eval-robustness (nst/eval_robustness.py) and nst/robustness/metrics.py:
CE/mCE and FGSM on hand-computed numbers, an end-to-end run on a tiny digits model
(clean error = plain eval's), the bad-input refusals, and ImageNet-A's 200-class
restriction on mocked TFDS data."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from nst import config as config_lib
from nst import eval_robustness as er
from nst.data import input_pipeline as ip
from nst.models import saving
from nst.robustness import imagenet_a, metrics
from nst.robustness import inputs as robustness_inputs
from nst.train import evaluate as eval_lib
from nst.testing import save_tiny_model

TWO_CPUS = ["/cpu:0", "/cpu:1"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def corruptions():
    from nst.robustness import corruptions as module
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_model")
    save_tiny_model(directory)
    return str(directory)


def _config(model_dir, data_dir=None, **overrides):
    settings = dict(task_name="digits", model_dir=str(model_dir), label_data_dir=data_dir,
                    eval_batch_size=64, width_coefficient=0.25, depth_coefficient=0.25)
    settings.update(overrides)
    return config_lib.finalize(config_lib.ExperimentConfig(**settings))


def _settings(tmp_path, module, **overrides):
    values = dict(data_dir="", split="dev", corruptions=tuple(module.CORRUPTIONS[:1]),
                  severities=(1, 3), fgsm_epsilons=(2.0, 8.0),
                  output=str(tmp_path / "out" / "robustness.json"))  # out/: made by run
    values.update(overrides)
    return er.Settings(**values)


# --------------------------------------------------------------------------- formulas


ERRORS = {"a": {1: 0.2, 2: 0.4}, "b": {1: 0.5, 2: 0.5}}
BASE = {"a": {1: 0.4, 2: 0.6}, "b": {1: 0.5, 2: 1.0}}


def test_ce_and_mce_match_hand_computed_numbers():
    ce = metrics.corruption_errors(ERRORS, BASE)
    assert ce == pytest.approx({"a": 0.6 / 1.0, "b": 1.0 / 1.5})
    assert metrics.mean_defined(list(ce.values())) == pytest.approx((0.6 + 2 / 3) / 2)
    relative = metrics.relative_corruption_errors(ERRORS, 0.1, BASE, 0.2)
    # a: (0.1 + 0.3) / (0.2 + 0.4); b: (0.4 + 0.4) / (0.3 + 0.8)
    assert relative == pytest.approx({"a": 0.4 / 0.6, "b": 0.8 / 1.1})
    assert metrics.mean_error(ERRORS) == pytest.approx(0.4)
    # A baseline without error leaves CE undefined (None), and the mean skips it.
    zero = metrics.corruption_errors({"a": {1: 0.3}}, {"a": {1: 0.0}})
    assert zero == {"a": None} and metrics.mean_defined([None, 0.5]) == 0.5


def test_relative_ce_is_undefined_where_the_baseline_adds_no_errors():
    n = 539
    # The baseline's corrupted errors equal its clean ones (7 of 539 images) up to the
    # rounding of the sums: 1e-17-sized denominators, not a ratio.
    clean = 7 / n
    base = {"mild": {1: 7 / n, 2: 8 / n, 3: 6 / n}, "hard": {1: 20 / n, 2: 30 / n, 3: 40 / n}}
    ours = {"mild": {1: 4 / n, 2: 5 / n, 3: 5 / n}, "hard": {1: 10 / n, 2: 12 / n, 3: 20 / n}}
    relative = metrics.relative_corruption_errors(ours, 3 / n, base, clean, num_examples=n)
    # hard: (7 + 9 + 17) / (13 + 23 + 33) added errors.
    assert relative["mild"] is None and relative["hard"] == pytest.approx(33 / 69)
    assert metrics.mean_defined(list(relative.values())) == pytest.approx(33 / 69)
    # One added error in total is a ratio; a baseline better under corruption is not.
    one = metrics.relative_corruption_errors({"a": {1: 2 / n}}, 1 / n, {"a": {1: 8 / n}}, 7 / n,
                                             num_examples=n)
    assert one["a"] == pytest.approx(1.0)
    better = metrics.relative_corruption_errors({"a": {1: 2 / n}}, 1 / n, {"a": {1: 6 / n}},
                                                7 / n, num_examples=n)
    assert better == {"a": None}
    # Without a count only an exactly zero or negative drop is undefined.
    assert metrics.relative_corruption_errors({"a": {1: 0.3}}, 0.1, {"a": {1: 0.2}}, 0.2) == \
        {"a": None}


def test_error_by_severity_is_the_mean_over_corruptions():
    assert metrics.error_by_severity(ERRORS) == pytest.approx({1: 0.35, 2: 0.45})
    assert metrics.error_by_severity({"a": {1: 0.2}, "b": {1: 0.4, 3: 0.9}}) == \
        pytest.approx({1: 0.3, 3: 0.9})


def test_fgsm_step_on_a_linear_model_is_the_analytic_sign_and_clips():
    # Two classes, logits = x · W; for label 0 the cross-entropy gradient is
    # p1 (W1 - W0) per pixel, so the step is ε · sign(W1 - W0).
    # Small weights keep the softmax unsaturated (a saturated one has a zero gradient).
    # The zero-gradient pixel has zero weights: equal non-zero weights would give
    # (p0 - 1) w + p1 w, which rounds to ±1e-11 rather than 0 on some machines.
    w = 1e-3 * np.array([[1, -1], [-2, 3], [0, 0], [4, -1], [0, 2], [1, 0]],
                        np.float32)  # [6 pixels, 2 classes]; sign(W1 - W0) = -+0-+-

    def model_fn(images):
        return tf.reshape(images, [-1, 6]) @ w

    images = np.array([[[[100, 0, 50], [254, 253, 3]]]], np.float32)  # [1, 1, 2, 3]
    out = metrics.fgsm_images(model_fn, images, tf.constant([0]), 4.0).numpy()
    sign = np.sign(w[:, 1] - w[:, 0]).reshape(1, 1, 2, 3)
    np.testing.assert_allclose(out, np.clip(images + 4.0 * sign, 0, 255))
    # By hand: 100-4, 0+4, 50 (zero gradient), 254-4, 253+4 clipped to 255, 3-4 clipped to 0.
    np.testing.assert_allclose(out.reshape(-1), [96, 4, 50, 250, 255, 0])
    big = metrics.fgsm_images(model_fn, images, tf.constant([1]), 255.0).numpy()
    # Label 1 flips every sign; ε = 255 saturates each pixel with a gradient.
    np.testing.assert_allclose(big.reshape(-1), [255, 0, 50, 255, 0, 255])


@pytest.mark.parametrize("text,expected", [("1-5", (1, 2, 3, 4, 5)), ("1,3,5", (1, 3, 5)),
                                           ("5,1-2", (1, 2, 5))])
def test_severity_flag_syntax(text, expected):
    assert er.parse_severities(text) == expected


def test_imagenet_a_indices_are_200_sorted_imagenet_classes():
    assert len(imagenet_a.INDICES) == 200 == len(set(imagenet_a.INDICES))
    assert list(imagenet_a.INDICES) == sorted(imagenet_a.INDICES)
    assert 0 <= imagenet_a.INDICES[0] and imagenet_a.INDICES[-1] < 1000


# --------------------------------------------------------------------------- end to end


def test_run_writes_results_and_clean_error_equals_plain_eval(
        corruptions, model_dir, digits_dir, tmp_path):
    config = _config(model_dir, digits_dir)
    settings = _settings(tmp_path, corruptions, data_dir=digits_dir)
    results = er.run(settings, config)
    with open(settings.output) as f:
        assert json.load(f) == json.loads(json.dumps(results))
    names = list(settings.corruptions)
    assert results["dataset"] == {"data_dir": digits_dir, "tfds_name": None, "split": "dev",
                                  "num_classes": 10, "image_size": 32, "num_examples": 179}
    assert set(results["corruptions"]) == set(names)
    assert all(set(v) == {"1", "3"} for v in results["corruptions"].values())
    assert set(results["fgsm_accuracy"]) == {"2", "8"}
    assert "mce" not in results
    # The plain eval of the same weights on the same split.
    model = saving.load_model(model_dir)
    view = ip.ViewConfig(image_size=32, small_image=True)
    plain = eval_lib.evaluate(model, ip.eval_dataset(os.path.join(digits_dir, "dev*"), 10, 64,
                                                     view), 10)
    assert results["clean"]["error"] == pytest.approx(1 - plain["top_1_accuracy"], abs=1e-9)

    # The same run under MirroredStrategy on two logical CPUs, and with itself as baseline:
    # identical numbers (the corruptions are seeded), CE = relative CE... = 1.
    mirrored = tf.distribute.MirroredStrategy(TWO_CPUS)
    # (One corruption, severity and ε: a baseline may hold more than the run.)
    first = names[0]
    second = _settings(tmp_path, corruptions, data_dir=digits_dir, corruptions=(first,),
                       severities=(3,), fgsm_epsilons=(),
                       baseline_results=settings.output, output=str(tmp_path / "b.json"))
    again = er.run(second, config, strategy=mirrored)
    assert again["clean"] == pytest.approx(results["clean"])
    assert again["corruptions"][first]["3"] == pytest.approx(results["corruptions"][first]["3"])
    assert all(v is None or v == pytest.approx(1.0) for v in again["ce"].values())
    assert again["mce"] is None or again["mce"] == pytest.approx(1.0)

    # --num_examples: the first N images of the split, in file order, and a baseline of
    # the whole split no longer matches.
    first_50 = _settings(tmp_path, corruptions, data_dir=digits_dir, corruptions=(),
                         fgsm_epsilons=(), num_examples=50, output=str(tmp_path / "c.json"))
    head = er.run(first_50, config)
    plain_50 = eval_lib.evaluate(model, ip.eval_dataset(
        os.path.join(digits_dir, "dev*"), 10, 64, view, max_images=50), 10)
    assert head["dataset"]["num_examples"] == 50
    assert head["clean"]["error"] == pytest.approx(1 - plain_50["top_1_accuracy"], abs=1e-9)
    with pytest.raises(ValueError, match="counts 179 images, this split 50"):
        er.run(dataclasses.replace(first_50, baseline_results=settings.output,
                                   output=str(tmp_path / "d.json")), config)


# --------------------------------------------------------------------------- bad input


def _expect_refusal(tmp_path, settings, config, match, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(er, "load_model", no_model)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        er.run(settings, config)
    assert not os.path.exists(settings.output)


@pytest.mark.parametrize("overrides,match", [
    (dict(corruptions=("gaussian_noise", "sepia")), "--corruptions"),
    (dict(severities=(0, 2)), "--severities"),
    (dict(severities=(6,)), "--severities"),
    (dict(fgsm_epsilons=(0.0,)), r"--fgsm_epsilons.*\(0, 255\]"),
    (dict(fgsm_epsilons=(300.0,)), r"--fgsm_epsilons.*\(0, 255\]"),
    (dict(num_examples=-1), r"--num_examples=-1: expected an integer >= 0"),
])
def test_bad_flags_are_refused_before_work(corruptions, model_dir, digits_dir, tmp_path,
                                           monkeypatch, overrides, match):
    settings = _settings(tmp_path, corruptions, data_dir=digits_dir, **overrides)
    _expect_refusal(tmp_path, settings, _config(model_dir, digits_dir), match, monkeypatch)


def _baseline(path, **changes):
    dataset = {"data_dir": changes.pop("data_dir", "x"), "tfds_name": None,
               "split": changes.pop("split", "dev"), "num_classes": changes.pop("classes", 10),
               "image_size": 32, "num_examples": 179}
    body = {"dataset": dataset, "clean": {"error": 0.5},
            "corruptions": changes.pop("corruptions")}
    with open(path, "w") as f:
        json.dump(body, f)
    return str(path)


def test_baselines_of_other_data_or_missing_corruptions_are_refused(
        corruptions, model_dir, digits_dir, tmp_path, monkeypatch):
    names = tuple(corruptions.CORRUPTIONS[:2])
    full = {n: {"1": 0.5, "3": 0.6} for n in names}
    two = dict(corruptions=names)
    config = _config(model_dir, digits_dir)
    cases = [
        (dict(data_dir="/other/data", corruptions=full), "another data set: data_dir"),
        (dict(data_dir=digits_dir, split="test", corruptions=full), "split 'test' there"),
        (dict(data_dir=digits_dir, classes=100, corruptions=full), "num_classes 100"),
        (dict(data_dir=digits_dir, corruptions={names[0]: {"1": 0.5, "3": 0.6}}),
         f"lacks corruptions/severities of this run: {names[1]} severity 1"),
        (dict(data_dir=digits_dir, corruptions={n: {"1": 0.5} for n in names}),
         f"lacks.*{names[0]} severity 3"),
    ]
    for i, (changes, match) in enumerate(cases):
        path = _baseline(tmp_path / f"baseline_{i}.json", **changes)
        settings = _settings(tmp_path, corruptions, data_dir=digits_dir, baseline_results=path,
                             **two)
        _expect_refusal(tmp_path, settings, config, match, monkeypatch)


def test_a_checkpoint_of_another_class_count_is_refused(corruptions, digits_dir, tmp_path):
    other = tmp_path / "seven_classes"
    save_tiny_model(other, num_classes=7)
    settings = _settings(tmp_path, corruptions, data_dir=digits_dir)
    with pytest.raises(ValueError, match=r"--model_dir=.*7-class model but the data has 10"):
        er.run(settings, _config(other, digits_dir))
    assert not os.path.exists(settings.output)


# --------------------------------------------------------------------------- ImageNet-A


class _FixedLogits:
    """A stand-in model: the same logits for every image."""
    image_size = 4

    def __init__(self, logits):
        self.logits = tf.constant(logits, tf.float32)

    def __call__(self, images, training=False):
        return tf.tile(self.logits[None], [tf.shape(images)[0], 1])


def test_imagenet_a_restricts_the_argmax_to_its_200_classes():
    logits = np.zeros(1000, np.float32)
    outside = 0  # not an ImageNet-A class: the overall argmax
    assert outside not in imagenet_a.INDICES
    logits[outside], logits[imagenet_a.INDICES[5]] = 10.0, 5.0
    images = tf.zeros([2, 4, 4, 3])
    labels = tf.constant([imagenet_a.INDICES[5], outside], tf.int32)
    restricted = er.Scorer(_FixedLogits(logits), 1000, imagenet_a.INDICES)
    plain = er.Scorer(_FixedLogits(logits), 1000)
    assert int(restricted.correct(images, labels)[0]) == 1  # the ImageNet-A label wins
    assert int(plain.correct(images, labels)[0]) == 1       # the outside class wins


def test_imagenet_a_through_tfds_mock_data(corruptions, tmp_path):
    model_dir = tmp_path / "thousand"
    # The ImageNet view (centre crop of any image size), not the 32x32 recipe's.
    save_tiny_model(model_dir, num_classes=1000, small_image=False)
    settings = er.Settings(tfds_name="imagenet_a", split="test", corruptions=(),
                           fgsm_epsilons=(4.0,), output=str(tmp_path / "a.json"))
    with tfds.testing.mock_data(num_examples=6):
        builder = er._inputs(settings, _config(model_dir))[0]
        _, classes = robustness_inputs.tfds_info("imagenet_a", None)
        assert classes == 1000  # labels in ImageNet-2012's 1000-class space
        labels = np.concatenate([b["label"].numpy() for b in builder(
            ip.ViewConfig(image_size=32))])
        assert len(labels) == 6 and labels.min() >= 0 and labels.max() < 1000
        results = er.run(settings, _config(model_dir, num_label_classes=1000))
    assert results["dataset"]["tfds_name"] == "imagenet_a"
    assert results["dataset"]["num_examples"] == 6 and results["dataset"]["num_classes"] == 1000
    assert set(results["fgsm_accuracy"]) == {"4"}
