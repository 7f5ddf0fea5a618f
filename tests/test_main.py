"""The binary (`nst.main.run` and its CLI): train_and_eval, eval, Noisy Student runs
(spec §2.1, §5, §5.10, §11).

Fast tests use the tiny 32x32 EfficientNet for a few steps; the real training runs
(supervised teacher to clearly-better-than-chance accuracy, Noisy Student with an
online teacher and with stored labels) are marked slow.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from nst import config as config_lib
from nst import main
from nst.data import input_pipeline as ip
from nst.data import schema
from nst.data.sources.digits import make_digits_dataset
from nst.models import convert, saving
from nst.train import evaluate as eval_lib
from nst.train import loop
from nst.testing import summary_scalars

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_KEYS = {"lab/acc", "lab/pred_prob", "lab/loss", "train/data_loss", "train/loss",
              "train/lr", "train/epoch", "train/images_per_second"}
RESULT_KEYS = {"top_1_accuracy", "top_5_accuracy", "loss", "num_images", "split",
               "global_step"}


# --------------------------------------------------------------------------- helpers


def dataset_counts(data_dir):
    with open(os.path.join(data_dir, "dataset_info.json")) as f:
        return {k: v["num_records"] for k, v in json.load(f)["splits"].items()}


def tiny_config(model_dir, data_dir, **overrides):
    settings = dict(
        task_name="digits", mode="train_and_eval", label_data_dir=data_dir,
        model_dir=str(model_dir), width_coefficient=0.25, depth_coefficient=0.25,
        train_batch_size=8, num_train_images=8, train_steps=4, iterations_per_loop=2,
        save_checkpoints_steps=2, base_learning_rate=2.0, moving_average_decay=0.99,
        eval_batch_size=64)
    settings.update(overrides)
    return config_lib.finalize(config_lib.ExperimentConfig(**settings))


def read_results(model_dir):
    with open(os.path.join(model_dir, "eval_results.json")) as f:
        return json.load(f)


def checkpoint_steps(model_dir):
    state = tf.train.get_checkpoint_state(str(model_dir))
    return [] if state is None else [int(p.rsplit("-", 1)[1])
                                     for p in state.all_model_checkpoint_paths]


# --------------------------------------------------------------------------- train_and_eval


@pytest.fixture(scope="module")
def trained(digits_dir, tmp_path_factory):
    """`--mode=train_and_eval` for 4 steps with checkpoints at 2 and 4."""
    model_dir = tmp_path_factory.mktemp("train_and_eval")
    config = tiny_config(model_dir, digits_dir)
    results = main.run(config)
    return dict(config=config, model_dir=str(model_dir), results=results)


def test_train_and_eval_evaluates_every_checkpoint(trained, digits_dir):
    model_dir = trained["model_dir"]
    counts = dataset_counts(digits_dir)
    assert checkpoint_steps(model_dir) == [2, 4]
    history = read_results(model_dir)
    assert [(r["global_step"], r["split"]) for r in history] == [
        (2, "dev"), (2, "test"), (4, "dev"), (4, "test")]
    for result in history:
        assert RESULT_KEYS <= set(result)
        assert result["num_images"] == counts[result["split"]]
        assert 0 <= result["top_1_accuracy"] <= result["top_5_accuracy"] <= 1
        assert np.isfinite(result["loss"])
    # run() returns the last evaluation of each split.
    assert set(trained["results"]) == {"dev", "test"}
    assert trained["results"]["test"]["global_step"] == 4
    assert trained["results"]["test"]["top_1_accuracy"] == history[-1]["top_1_accuracy"]
    # Summaries: training scalars at every loop, eval scalars per split and checkpoint.
    assert TRAIN_KEYS <= set(summary_scalars(os.path.join(model_dir, "train")))
    for split in ("dev", "test"):
        scalars = summary_scalars(os.path.join(model_dir, f"eval_{split}"))
        for key in ("top_1_accuracy", "top_5_accuracy", "loss"):
            assert set(scalars[key]) == {2, 4}


def test_train_and_eval_writes_the_run_record(trained):
    model_dir = trained["model_dir"]
    with open(os.path.join(model_dir, "FLAGS.json")) as f:
        assert json.load(f) == dataclasses.asdict(trained["config"])
    replayed = config_lib.build_config([os.path.join(model_dir, "operative_config.gin")])
    assert replayed == trained["config"]
    stored, image_size = saving.read_model_config(model_dir)
    assert (stored.width, stored.depth, stored.num_classes, stored.small_image) == (
        0.25, 0.25, 10, True)
    assert image_size == 32


def test_train_and_eval_on_a_finished_run_evaluates_once(trained, tmp_path):
    model_dir = tmp_path / "done"
    shutil.copytree(trained["model_dir"], model_dir)
    config = dataclasses.replace(trained["config"], model_dir=str(model_dir),
                                 eval_splits="dev")
    results = main.run(config)
    assert checkpoint_steps(model_dir) == [2, 4]  # nothing trained
    assert results["dev"]["global_step"] == 4
    assert len(read_results(model_dir)) == 5


def test_another_architecture_in_model_dir_fails_before_training(trained, tmp_path):
    model_dir = tmp_path / "other"
    shutil.copytree(trained["model_dir"], model_dir)
    flags_before = (model_dir / "FLAGS.json").read_text()
    config = dataclasses.replace(trained["config"], model_dir=str(model_dir),
                                 depth_coefficient=0.5, train_steps=6,
                                 train_last_step_num=6)
    with pytest.raises(convert.CheckpointMismatchError, match="depth stored 0.25 vs requested 0.5"):
        main.run(config)
    assert checkpoint_steps(model_dir) == [2, 4]
    assert (model_dir / "FLAGS.json").read_text() == flags_before
    # eval refuses it too, rather than failing inside the restore.
    with pytest.raises(convert.CheckpointMismatchError):
        main.run(dataclasses.replace(config, mode="eval"))


# --------------------------------------------------------------------------- eval


@pytest.fixture
def eval_only_data(digits_dir, tmp_path):
    """A directory with the dev and test files only: eval needs no training files."""
    data = tmp_path / "eval_data"
    data.mkdir()
    for path in tf.io.gfile.glob(os.path.join(digits_dir, "dev*")) + \
            tf.io.gfile.glob(os.path.join(digits_dir, "test*")):
        shutil.copy(path, data)
    return str(data)


def test_eval_mode_evaluates_the_latest_checkpoint_with_ema_weights(
        trained, digits_dir, eval_only_data, tmp_path):
    model_dir = tmp_path / "eval"
    shutil.copytree(trained["model_dir"], model_dir)
    flags_before = (model_dir / "FLAGS.json").read_text()
    config = dataclasses.replace(trained["config"], mode="eval", model_dir=str(model_dir),
                                 label_data_dir=eval_only_data, num_train_images=None,
                                 eval_batch_size=100)
    results = main.run(config)

    counts = dataset_counts(digits_dir)
    assert set(results) == {"dev", "test"}
    for split, result in results.items():
        assert RESULT_KEYS <= set(result)
        assert result["global_step"] == 4
        # 179 and 539 images in batches of 100: the partial last batch counts too.
        assert result["num_images"] == counts[split]
    history = read_results(model_dir)
    assert len(history) == 6 and [r["split"] for r in history[-2:]] == ["dev", "test"]
    assert history[-1]["top_1_accuracy"] == results["test"]["top_1_accuracy"]
    # An eval job leaves the training run's FLAGS.json alone.
    assert (model_dir / "FLAGS.json").read_text() == flags_before

    # Same numbers as evaluate_splits after restoring the latest checkpoint; the
    # batch size does not matter.
    trainer = loop.Trainer(dataclasses.replace(config, eval_batch_size=64))
    assert trainer.restore_latest() == 4
    again = trainer.evaluate_splits()
    for split in results:
        for key in ("top_1_accuracy", "top_5_accuracy", "num_images"):
            assert again[split][key] == results[split][key]
        assert again[split]["loss"] == pytest.approx(results[split]["loss"], rel=1e-5)
    # evaluate_splits puts the raw weights back afterwards.
    stored_raw = tf.train.load_checkpoint(str(model_dir / "ckpt-4")).get_tensor(
        "model/logits.Skernel/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_array_equal(trainer.student.get_layer("logits").kernel.numpy(),
                                  stored_raw)
    # Those results are the EMA weights': evaluating by hand with the raw weights and
    # then with the EMA shadows copied in gives another result, then the same one.
    student_view, _, _ = trainer.views()
    test_data = ip.eval_dataset(os.path.join(eval_only_data, "test*"), 10, 64, student_view)
    raw = eval_lib.evaluate(trainer.student, test_data, 10, config.label_smoothing)
    trainer.ema.copy_to(trainer.student)
    ema = eval_lib.evaluate(trainer.student, test_data, 10, config.label_smoothing)
    assert raw["num_images"] == ema["num_images"] == counts["test"]
    assert ema["loss"] == pytest.approx(results["test"]["loss"], rel=1e-6)
    assert ema["top_1_accuracy"] == results["test"]["top_1_accuracy"]
    assert abs(raw["loss"] - ema["loss"]) > 2e-5 * ema["loss"]  # 20x the tolerance above
    # Four evaluations over two splits, full and partial batches: the model was
    # traced once (not once per evaluation, as a fresh tf.function per call would).
    functions = list(eval_lib._BATCH_STATS[trainer.student].values())
    assert [f.experimental_get_tracing_count() for f in functions] == [1]


def test_eval_timeout_waits_for_new_checkpoints_then_returns(trained, eval_only_data, tmp_path):
    """Continuous eval: evaluates what is there, picks up a checkpoint that arrives
    while it waits, and returns once none arrives for --eval_timeout seconds."""
    model_dir = tmp_path / "watch"
    shutil.copytree(trained["model_dir"], model_dir)
    os.remove(model_dir / "eval_results.json")
    # The schedule runs to step 100, so step 4 is not the end: keep watching.
    config = dataclasses.replace(trained["config"], mode="eval", model_dir=str(model_dir),
                                 label_data_dir=eval_only_data, eval_splits="dev",
                                 train_steps=100, train_last_step_num=100, eval_timeout=3)

    def publish_a_new_checkpoint():
        # Once the first checkpoint is evaluated, "train" one more (a copy as step 6).
        deadline = time.time() + 120
        while not (model_dir / "eval_results.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        for path in tf.io.gfile.glob(str(model_dir / "ckpt-4.*")):
            shutil.copy(path, path.replace("ckpt-4", "ckpt-6"))
        tf.compat.v1.train.update_checkpoint_state(
            str(model_dir), str(model_dir / "ckpt-6"),
            all_model_checkpoint_paths=[str(model_dir / f"ckpt-{s}") for s in (2, 4, 6)])

    publisher = threading.Thread(target=publish_a_new_checkpoint)
    publisher.start()
    start = time.time()
    results = main.run(config)
    elapsed = time.time() - start
    publisher.join()
    assert results["dev"]["num_images"] == 179
    assert len(read_results(model_dir)) == 2  # ckpt-4, then ckpt-6
    assert elapsed < 90


def test_eval_stops_at_the_final_checkpoint_without_waiting(trained, eval_only_data, tmp_path):
    model_dir = tmp_path / "final"
    shutil.copytree(trained["model_dir"], model_dir)
    config = dataclasses.replace(trained["config"], mode="eval", model_dir=str(model_dir),
                                 label_data_dir=eval_only_data, eval_splits="dev",
                                 eval_timeout=600)
    start = time.time()
    results = main.run(config)
    assert results["dev"]["global_step"] == 4 == config.train_last_step_num
    assert time.time() - start < 120  # did not wait for the 600 s timeout


def test_eval_skips_a_missing_split_and_fails_when_all_are_missing(trained, digits_dir, caplog):
    config = dataclasses.replace(trained["config"], mode="eval", eval_splits="dev, validation")
    trainer = loop.Trainer(config)
    with caplog.at_level("WARNING"):
        splits = trainer.eval_splits()
    assert list(splits) == ["dev"]
    assert any("validation" in r.getMessage() for r in caplog.records)
    missing = dataclasses.replace(config, eval_splits="validation,val")
    with pytest.raises(FileNotFoundError, match="validation,val"):
        main.run(missing)


def test_eval_without_a_checkpoint_fails(digits_dir, tmp_path):
    config = tiny_config(tmp_path / "empty", digits_dir, mode="eval")
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        main.run(config)


def test_missing_label_data_dir_fails_before_anything_is_written(tmp_path):
    config = tiny_config(tmp_path / "run", None, mode="train")
    with pytest.raises(ValueError, match="label_data_dir"):
        main.run(config)
    assert not (tmp_path / "run").exists()


def test_cli_rejects_an_unknown_flag():
    result = subprocess.run([sys.executable, "-m", "nst.main", "--mode=train",
                             "--no_such_flag=1"], capture_output=True, text=True, cwd=REPO,
                            timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode != 0
    assert "no_such_flag" in result.stderr


# --------------------------------------------------------------------------- real training


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """Supervised training (r = 0) of the tiny EfficientNet on 500 labeled digits:
    300 steps of 32 images, about 30 s of training on two cores."""
    data_dir = tmp_path_factory.getbasetemp() / "digits-50"
    make_digits_dataset(str(data_dir), labels_per_class=50, seed=0)
    model_dir = tmp_path_factory.mktemp("teacher")
    config = config_lib.finalize(config_lib.ExperimentConfig(
        task_name="digits", mode="train_and_eval", label_data_dir=str(data_dir),
        model_dir=str(model_dir), width_coefficient=0.25, depth_coefficient=0.25,
        train_batch_size=32, train_steps=300, iterations_per_loop=100,
        save_checkpoints_steps=300, base_learning_rate=0.05, moving_average_decay=0.95,
        eval_batch_size=128, eval_splits="test"))
    results = main.run(config)
    return dict(config=config, model_dir=str(model_dir), results=results,
                data_dir=str(data_dir))


@pytest.mark.slow
def test_supervised_training_learns_digits(teacher):
    result = teacher["results"]["test"]
    assert result["global_step"] == 300
    assert result["num_images"] == 539
    assert result["top_1_accuracy"] >= 0.4, result  # chance: 0.1
    assert result["top_5_accuracy"] >= 0.8, result
    losses = summary_scalars(os.path.join(teacher["model_dir"], "train"))["train/data_loss"]
    assert losses[300] < losses[100] - 0.5


def student_config(model_dir, digits_dir, **overrides):
    settings = dict(mode="train_and_eval", unlabel_ratio=2, teacher_softmax_temp=1.0,
                    augment_name="v1", randaug_mag=5, train_steps=4, eval_splits="test")
    settings.update(overrides)
    return tiny_config(model_dir, digits_dir, **settings)


def check_noisy_student_run(model_dir, results=None, soft=True):
    scalars = summary_scalars(os.path.join(model_dir, "train"))
    expected = TRAIN_KEYS | {"unl/pred_prob", "unl/acc_to_target", "ext/loss"}
    if soft:
        expected.add("unl/target_prob")
    assert expected <= set(scalars), sorted(scalars)
    for key in expected:
        assert set(scalars[key]) == {2, 4}, key
        assert all(np.isfinite(v) for v in scalars[key].values()), key
    # Data loss = L_lab + r * L_unl with r = 2 (§5.3).
    for step in (2, 4):
        assert scalars["train/data_loss"][step] == pytest.approx(
            scalars["lab/loss"][step] + 2 * scalars["ext/loss"][step], rel=1e-4)
    assert checkpoint_steps(model_dir) == [2, 4]
    if results is not None:
        assert results["test"]["global_step"] == 4
        assert np.isfinite(results["test"]["loss"])


@pytest.mark.slow
def test_noisy_student_with_an_online_teacher(teacher, digits_dir, tmp_path):
    """The student trains on 8 labeled + 16 unlabeled rows per step against soft
    targets (tau = 1) of the teacher trained above, loaded from its checkpoint."""
    config = student_config(
        tmp_path, digits_dir, teacher_model_name="efficientnet-b0",
        teacher_model_path=teacher["model_dir"],
        unlabel_data_dir=os.path.join(digits_dir, "unlabeled"))
    results = main.run(config)
    check_noisy_student_run(str(tmp_path), results)
    # The teacher is not part of the student's checkpoint (§11).
    names = tf.train.load_checkpoint(str(tmp_path / "ckpt-4")).get_variable_to_shape_map()
    assert not any("teacher" in name for name in names)
    # Soft targets of a ~60%-accurate teacher: confident, but not one-hot.
    target_prob = summary_scalars(str(tmp_path / "train"))["unl/target_prob"]
    assert all(0.2 < v < 1.0 for v in target_prob.values())


def write_pseudo_labeled(source_dir, output_dir, num_classes=10, confidence=0.7):
    """Copies the unlabeled images with stored soft labels: `confidence` on the true
    class, the rest spread evenly (what a filtered teacher prediction looks like)."""
    os.makedirs(output_dir)
    files = sorted(tf.io.gfile.glob(os.path.join(source_dir, "extra*")))[:2]
    for index, path in enumerate(files):
        out = os.path.join(output_dir, f"extra-{index:05d}-of-{len(files):05d}")
        with tf.io.TFRecordWriter(out) as writer:
            for raw in tf.data.TFRecordDataset(path):
                example = tf.train.Example.FromString(raw.numpy())
                feature = example.features.feature
                image = feature[schema.IMAGE_KEY].bytes_list.value[0]
                label = feature[schema.CLASS_LABEL_KEY].int64_list.value[0] - 1
                probabilities = np.full(num_classes, (1 - confidence) / (num_classes - 1))
                probabilities[label] = confidence
                writer.write(schema.encode_unlabeled(image, probabilities=probabilities,
                                                     true_label=label))


@pytest.mark.slow
def test_noisy_student_with_stored_labels(digits_dir, tmp_path):
    unlabeled = str(tmp_path / "pseudo")
    write_pseudo_labeled(os.path.join(digits_dir, "unlabeled"), unlabeled)
    model_dir = tmp_path / "student"
    config = student_config(model_dir, digits_dir, unlabel_data_dir=unlabeled, mode="train")
    assert main.run(config) is None
    check_noisy_student_run(str(model_dir))
    target_prob = summary_scalars(str(model_dir / "train"))["unl/target_prob"]
    assert all(v == pytest.approx(0.7, rel=1e-5) for v in target_prob.values())
