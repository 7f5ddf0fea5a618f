"""The training loop (`nst.train.loop.Trainer`, spec §5): replicas, XLA, resumption,
multi-worker, bad input, init_model / fix_layer_num.

Every run uses the tiny 32x32 EfficientNet (width and depth 0.25) on the digits demo
data with global batches of 8, so a run of a few steps takes seconds; most of that is
tracing. Tests that start processes or compile with XLA are marked slow.
"""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from nst import config as config_lib
from nst.models import convert, saving
from nst.models.efficientnet import build_model
from nst.train import loop
from nst.testing import summary_scalars, two_cpu_strategy

_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --------------------------------------------------------------------------- helpers


def tiny_config(model_dir, data_dir, **overrides):
    """A finalised config for a tiny model; 8 images per step; warm-up of 5 steps."""
    settings = dict(
        task_name="digits", mode="train", label_data_dir=data_dir, model_dir=str(model_dir),
        width_coefficient=0.25, depth_coefficient=0.25,
        train_batch_size=8, num_train_images=8, train_steps=100,
        iterations_per_loop=2, save_checkpoints_steps=2,
        base_learning_rate=0.5, moving_average_decay=0.99, eval_batch_size=64)
    settings.update(overrides)
    return config_lib.finalize(config_lib.ExperimentConfig(**settings))


def checkpoint_tensors(path):
    """{checkpoint key: value} of every saved tensor."""
    reader = tf.train.load_checkpoint(path)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def group_values(path, group):
    """{variable path: value} of one group ("model", "ema") of an nst checkpoint."""
    prefix = group + "/"
    return {saving.unescape_object_name(k[len(prefix):-len(_VALUE)]): v
            for k, v in checkpoint_tensors(path).items()
            if k.startswith(prefix) and k.endswith(_VALUE)}


def weights(model):
    return {v.path: v.numpy() for v in model.weights}


def checkpoint_steps(model_dir):
    state = tf.train.get_checkpoint_state(str(model_dir))
    if state is None:
        return []
    return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths]


# --------------------------------------------------------------------------- a base run


@pytest.fixture(scope="module")
def base_run(digits_dir, tmp_path_factory):
    """Four steps with every noise on (RandAugment, dropout, stochastic depth);
    checkpoints at steps 2 and 4 (save_checkpoints_steps=1 is raised to
    iterations_per_loop=2)."""
    model_dir = tmp_path_factory.mktemp("base_run")
    config = tiny_config(model_dir, digits_dir, augment_name="v1", randaug_mag=5,
                         save_checkpoints_steps=1, seed=5)
    trainer = loop.Trainer(config)
    assert trainer.prepare() is False
    metrics = trainer.train(until_step=4)
    return dict(config=config, trainer=trainer, model_dir=str(model_dir), metrics=metrics)


def test_base_run_checkpoints_summaries_and_metrics(base_run):
    model_dir, trainer = base_run["model_dir"], base_run["trainer"]
    assert trainer.step == 4
    assert checkpoint_steps(model_dir) == [2, 4]
    assert os.path.exists(os.path.join(model_dir, saving.CONFIG_FILE))
    metrics = base_run["metrics"]
    assert set(metrics) == {"lab/acc", "lab/pred_prob", "lab/loss", "train/data_loss",
                            "train/loss", "train/lr", "train/epoch"}
    assert all(np.isfinite(v) for v in metrics.values())
    # L2 is part of the loss, not of the data loss (§5.3).
    assert metrics["train/loss"] > metrics["train/data_loss"] == metrics["lab/loss"]
    # LR at step 4: warm-up of int(5 * 8 / 8) = 5 steps to 0.5 * 8 / 256.
    assert metrics["train/lr"] == pytest.approx(0.5 * 8 / 256 * 4 / 5, rel=1e-6)
    assert metrics["train/epoch"] == pytest.approx(4.0)
    scalars = summary_scalars(os.path.join(model_dir, "train"))
    for key in list(metrics) + ["train/images_per_second"]:
        assert set(scalars[key]) == {2, 4}, key
    assert scalars["train/loss"][4] == pytest.approx(metrics["train/loss"], rel=1e-6)
    # Training past the end does nothing.
    assert trainer.train(until_step=4) == {}
    assert trainer.step == 4


# --------------------------------------------------------------------------- replicas


def test_two_replicas_match_one_replica(digits_dir, tmp_path):
    """Same global batch of 8 and the same input stream: the default strategy and a
    two-replica MirroredStrategy (4 images per replica) must take the same steps.

    Batch norm uses global statistics (num_shards_per_group=-2) so that both see
    the statistics of the same 8 images; dropout and stochastic depth are off
    because the replicas draw their own masks. What this pins down: gradients
    are averaged over replicas (not summed), the learning rate follows the
    global batch, and each replica gets its own slice of the same stream.
    """
    results = {}
    strategies = {
        "one": tf.distribute.get_strategy(),
        "two": two_cpu_strategy(),
    }
    for name, strategy in strategies.items():
        config = tiny_config(tmp_path / name, digits_dir, dropout_rate=0.0,
                             stochastic_depth_rate=0.0, num_shards_per_group=-2,
                             augment_name="v1", randaug_mag=5, base_learning_rate=2.0,
                             iterations_per_loop=3, save_checkpoints_steps=3)
        trainer = loop.Trainer(config, strategy)
        assert trainer.batch_size == 8 // strategy.num_replicas_in_sync
        trainer.prepare()
        initial = weights(trainer.student)
        metrics = trainer.train(until_step=3)
        results[name] = dict(
            initial=initial, final=weights(trainer.student), metrics=metrics,
            slots=[v.numpy() for v in trainer.optimizer.mean_squares + trainer.optimizer.momentums],
            ema={k: v.numpy() for k, v in trainer.ema.shadows_by_path().items()},
            step=trainer.step)
    one, two = results["one"], results["two"]
    assert one["step"] == two["step"] == 3
    for key in one["initial"]:  # same seed: same initial weights
        np.testing.assert_array_equal(one["initial"][key], two["initial"][key])
    for key in ("train/loss", "lab/loss", "lab/acc", "lab/pred_prob"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-6)
    # LR of the global batch of 8: step 3 of a 5-step warm-up to 2.0 * 8 / 256.
    assert one["metrics"]["train/lr"] == two["metrics"]["train/lr"] == pytest.approx(
        2.0 * 8 / 256 * 3 / 5, rel=1e-6)

    def close(a, b):
        scale = max(float(np.max(np.abs(a))), 1e-3)
        assert float(np.max(np.abs(a - b))) <= 1e-5 * scale + 1e-7

    for key in one["final"]:
        close(one["final"][key], two["final"][key])
        # The updates themselves agree; summed gradients would double them.
        update_one = one["final"][key] - one["initial"][key]
        update_two = two["final"][key] - two["initial"][key]
        if np.linalg.norm(update_one) > 1e-4:
            assert np.linalg.norm(update_one - update_two) <= 1e-3 * np.linalg.norm(update_one), key
    for a, b in zip(one["slots"], two["slots"]):
        close(a, b)
    for key in one["ema"]:
        close(one["ema"][key], two["ema"][key])
    assert np.linalg.norm(one["final"]["logits/kernel"] - one["initial"]["logits/kernel"]) > 1e-3


# --------------------------------------------------------------------------- XLA


@pytest.mark.slow
def test_replica_step_compiles_with_xla(digits_dir, tmp_path):
    config = tiny_config(tmp_path, digits_dir, augment_name="v1", randaug_mag=5)
    trainer = loop.Trainer(config, jit_compile=True)
    trainer.prepare()
    metrics = trainer.train(until_step=2)
    assert trainer.step == 2
    assert all(np.isfinite(v) for v in metrics.values())
    assert 0 < metrics["train/loss"] < 10


# --------------------------------------------------------------------------- resumption


def test_resume_from_checkpoint_matches_uninterrupted_run(base_run, tmp_path):
    """A fresh Trainer that resumes from step 2 reaches the uninterrupted run's step 4:
    student, EMA shadows, optimizer slots and step, noise-layer seeds (every tensor
    of the checkpoint) are identical."""
    model_dir = tmp_path / "resumed"
    shutil.copytree(base_run["model_dir"], model_dir)
    for path in tf.io.gfile.glob(str(model_dir / "ckpt-4*")):
        os.remove(path)
    shutil.rmtree(model_dir / "train")
    tf.compat.v1.train.update_checkpoint_state(
        str(model_dir), str(model_dir / "ckpt-2"),
        all_model_checkpoint_paths=[str(model_dir / "ckpt-2")])

    config = dataclasses.replace(base_run["config"], model_dir=str(model_dir))
    trainer = loop.Trainer(config)
    assert trainer.prepare() is True
    assert trainer.step == 2
    trainer.train(until_step=4)
    assert trainer.step == 4

    expected = checkpoint_tensors(os.path.join(base_run["model_dir"], "ckpt-4"))
    resumed = checkpoint_tensors(str(model_dir / "ckpt-4"))
    assert set(resumed) == set(expected)
    groups = {key.split("/")[0] for key in expected}
    assert {"model", "ema", "optimizer", "rng"} <= groups
    # Both RMSProp slots of every trainable variable are in there.
    slots = [k for k in expected if k.startswith("optimizer/_variables/")]
    assert len(slots) >= 2 * len(trainer.student.trainable_variables)
    for key in expected:
        np.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)


def _cli(model_dir, data_dir, *extra):
    return [sys.executable, "-m", "nst.main", "--mode=train", "--task_name=digits",
            f"--label_data_dir={data_dir}", f"--model_dir={model_dir}",
            "--width_coefficient=0.25", "--depth_coefficient=0.25",
            "--train_batch_size=8", "--num_train_images=8", "--base_learning_rate=0.5",
            "--moving_average_decay=0.99", "--iterations_per_loop=2",
            "--save_checkpoints_steps=2", "--augment_name=v1", "--randaug_mag=5",
            "--seed=11", *extra]


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(digits_dir, tmp_path):
    """Kill a training process (SIGKILL) once it has written a checkpoint, start it
    again, and compare its final checkpoint with an uninterrupted run's."""
    steps = "--train_steps=24"
    killed_dir, reference_dir = tmp_path / "killed", tmp_path / "reference"
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("killed", "resumed", "ref")}
    reference = subprocess.Popen(_cli(reference_dir, digits_dir, steps), env=_env(),
                                 stdout=logs["ref"], stderr=subprocess.STDOUT, cwd=REPO)
    victim = subprocess.Popen(_cli(killed_dir, digits_dir, steps), env=_env(),
                              stdout=logs["killed"], stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.time() + 300
        while not checkpoint_steps(killed_dir):
            assert victim.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=60) == -signal.SIGKILL  # killed mid-run, not finished
        killed_at = max(checkpoint_steps(killed_dir))
        assert killed_at < 24

        resumed = subprocess.run(_cli(killed_dir, digits_dir, steps), env=_env(),
                                 stdout=logs["resumed"], stderr=subprocess.STDOUT, cwd=REPO,
                                 timeout=300)
        assert resumed.returncode == 0, (tmp_path / "resumed.log").read_text()[-3000:]
        assert reference.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    finally:
        for process in (victim, reference):
            if process.poll() is None:
                process.kill()
        for log in logs.values():
            log.close()
    assert f"Resumed from {killed_dir}/ckpt-{killed_at}" in (tmp_path / "resumed.log").read_text()

    expected = checkpoint_tensors(str(reference_dir / "ckpt-24"))
    resumed_values = checkpoint_tensors(str(killed_dir / "ckpt-24"))
    assert set(resumed_values) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(resumed_values[key], expected[key], err_msg=key)


# --------------------------------------------------------------------------- multi-worker


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multi_worker_training(digits_dir, tmp_path):
    """Two local processes under MultiWorkerMirroredStrategy (TF_CONFIG on 127.0.0.1),
    in train_and_eval mode: both finish, they see the same losses, and only the chief
    writes checkpoints and evaluates them (the other worker waits meanwhile)."""
    model_dir = tmp_path / "run"
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    processes, logs = [], []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        log = open(tmp_path / f"worker{index}.log", "w")
        logs.append(log)
        command = _cli(model_dir, digits_dir, "--train_steps=4", "--mode=train_and_eval",
                       "--eval_splits=dev", "--eval_batch_size=64")
        processes.append(subprocess.Popen(command, env=_env(TF_CONFIG=tf_config),
                                          stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
    try:
        codes = [p.wait(timeout=300) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        for log in logs:
            log.close()
    texts = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(t[-3000:] for t in texts)
    for text in texts:
        assert "CollectiveAllReduceStrategy: 2 replicas, 2 workers" in text
    losses = [[line.split("loss ")[1].split()[0] for line in t.splitlines() if " loss " in line
               and "step " in line] for t in texts]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    assert checkpoint_steps(model_dir) == [2, 4]
    assert sorted(os.listdir(model_dir)) == sorted([
        "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index",
        "ckpt-4.data-00000-of-00001", "ckpt-4.index", "model_config.json",
        "FLAGS.json", "operative_config.gin", "train", "eval_dev",
        "eval_results.json"])  # no worker scratch dirs left
    results = json.loads((model_dir / "eval_results.json").read_text())
    assert [(r["global_step"], r["split"], r["num_images"]) for r in results] == [
        (2, "dev", 179), (4, "dev", 179)]
    # The workers trained one model: the chief's checkpoint holds one step count.
    reader = tf.train.load_checkpoint(str(model_dir / "ckpt-4"))
    assert reader.get_tensor("optimizer/_iterations" + _VALUE) == 4


# --------------------------------------------------------------------------- bad input


def test_non_finite_state_is_not_saved(digits_dir, tmp_path):
    """A huge learning rate: steps 0-1 are fine (the LR starts at 0), the update at
    step 1 blows the weights up, so the state of step 2 is not saved; no checkpoint
    precedes it (more in test_finite_checkpoints.py)."""
    config = tiny_config(tmp_path, digits_dir, base_learning_rate=1e30)
    trainer = loop.Trainer(config)
    trainer.prepare()
    with pytest.raises(loop.NonFiniteLossError) as error:
        trainer.train(until_step=10)
    message = str(error.value)
    assert message.startswith("Not saving step 2: the state to save is not finite (probe "
                              "loss on 8 training images")
    assert message.endswith(f"There is no earlier checkpoint in {tmp_path}: training must "
                            "restart from scratch with a lower --base_learning_rate.")
    assert error.value.last_good is None
    assert checkpoint_steps(tmp_path) == []
    assert not tf.io.gfile.glob(str(tmp_path / "ckpt-*"))


def test_missing_label_data_dir(tmp_path, digits_dir):
    with pytest.raises(ValueError, match="label_data_dir"):
        loop.Trainer(tiny_config(tmp_path / "run", None))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"train\*"):
        loop.Trainer(tiny_config(tmp_path / "run", str(empty), num_train_images=None))
    assert not (tmp_path / "run").exists()


def test_missing_teacher_checkpoint(tmp_path, digits_dir):
    missing = str(tmp_path / "no_teacher")
    config = tiny_config(tmp_path / "run", digits_dir, teacher_model_name="efficientnet-b0",
                         teacher_model_path=missing, unlabel_ratio=2,
                         unlabel_data_dir=os.path.join(digits_dir, "unlabeled"))
    with pytest.raises(FileNotFoundError, match="no_teacher"):
        loop.Trainer(config)
    assert not (tmp_path / "run").exists()


def _save_tiny_model(directory, num_classes, tiny=True):
    size = dict(width=0.25, depth=0.25) if tiny else {}
    model, _ = build_model("efficientnet-b0", num_classes, small_image=True,
                           normalization="svhn", **size)
    return saving.save_weights(model, str(directory))


def test_teacher_with_another_class_count(tmp_path, digits_dir):
    _save_tiny_model(tmp_path / "teacher", num_classes=5)
    config = tiny_config(tmp_path / "run", digits_dir, teacher_model_name="efficientnet-b0",
                         teacher_model_path=str(tmp_path / "teacher"), unlabel_ratio=2,
                         unlabel_data_dir=os.path.join(digits_dir, "unlabeled"),
                         teacher_softmax_temp=1.0)
    with pytest.raises(ValueError, match=r"predicts 5 classes but the data has 10"):
        loop.Trainer(config)
    # Without model_config.json (e.g. a converted checkpoint) the teacher is built
    # from the table with the data's 10 classes, and the load refuses the 5-class logits.
    _save_tiny_model(tmp_path / "table_teacher", num_classes=5, tiny=False)
    os.remove(tmp_path / "table_teacher" / saving.CONFIG_FILE)
    config = dataclasses.replace(config, teacher_model_path=str(tmp_path / "table_teacher"))
    with pytest.raises(convert.CheckpointMismatchError) as error:
        loop.Trainer(config)
    assert [m[0] for m in error.value.shape_mismatches] == ["logits/kernel", "logits/bias"]
    assert "10 classes" in str(error.value)
    assert not (tmp_path / "run").exists()


def test_teacher_of_another_architecture_name(tmp_path, digits_dir):
    _save_tiny_model(tmp_path / "teacher", num_classes=10)
    config = tiny_config(tmp_path / "run", digits_dir, teacher_model_name="efficientnet-b3",
                         teacher_model_path=str(tmp_path / "teacher"), unlabel_ratio=2,
                         unlabel_data_dir=os.path.join(digits_dir, "unlabeled"))
    with pytest.raises(ValueError, match="efficientnet-b3.*efficientnet-b0"):
        loop.Trainer(config)


def test_model_dir_of_another_architecture(base_run, tmp_path):
    model_dir = tmp_path / "other"
    shutil.copytree(base_run["model_dir"], model_dir)
    before = checkpoint_tensors(str(model_dir / "ckpt-4"))
    config = dataclasses.replace(base_run["config"], model_dir=str(model_dir),
                               width_coefficient=0.5)
    trainer = loop.Trainer(config)
    with pytest.raises(convert.CheckpointMismatchError, match="width stored 0.25 vs requested 0.5"):
        trainer.prepare()
    # Without model_config.json the checkpoint's shapes give it away.
    os.remove(model_dir / saving.CONFIG_FILE)
    with pytest.raises(convert.CheckpointMismatchError, match="another architecture"):
        trainer.prepare()
    assert trainer.step == 0
    assert checkpoint_steps(model_dir) == [2, 4]
    after = checkpoint_tensors(str(model_dir / "ckpt-4"))
    assert all(np.array_equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------- init_model


def test_init_model_initialises_every_weight_including_frozen_layers(base_run, tmp_path):
    """init_model loads the EMA weights of init_model_path into every student weight,
    frozen ones included (the original skipped those, §5.9); the EMA restarts from
    them; frozen layers then stay fixed during training while the rest trains."""
    source = os.path.join(base_run["model_dir"], "ckpt-4")
    ema = group_values(source, "ema")
    raw = group_values(source, "model")
    config = dataclasses.replace(base_run["config"], model_dir=str(tmp_path), init_model=True,
                               init_model_path=base_run["model_dir"], fix_layer_num=1)
    trainer = loop.Trainer(config)
    student = trainer.student
    assert not student.get_layer("stem").trainable
    assert not student.get_layer("blocks_0").trainable
    assert student.get_layer("blocks_1").trainable
    trainable = {v.path for v in student.trainable_variables}
    assert not any(p.startswith(("stem/", "blocks_0/")) for p in trainable)

    assert trainer.prepare() is False
    assert trainer.step == 0
    loaded = weights(student)
    assert set(loaded) == set(ema)
    for path, value in loaded.items():
        np.testing.assert_array_equal(value, ema[path], err_msg=path)
    # The EMA and the raw weights of the source differ, so this really is the EMA.
    assert any(not np.array_equal(ema[p], raw[p]) for p in ema if p.startswith("stem/"))
    # The EMA restarts from the loaded weights (frozen ones too).
    for path, shadow in trainer.ema.shadows_by_path().items():
        np.testing.assert_array_equal(shadow.numpy(), loaded[path], err_msg=path)

    trainer.train(until_step=2)
    after = weights(student)
    frozen = [p for p in after if p.startswith(("stem/", "blocks_0/"))]
    assert any("moving_mean" in p for p in frozen)
    for path in frozen:  # incl. BN moving statistics: frozen layers run in inference mode
        np.testing.assert_array_equal(after[path], loaded[path], err_msg=path)
    assert not np.array_equal(after["logits/kernel"], loaded["logits/kernel"])
    assert not np.array_equal(after["blocks_1/depthwise_bn/moving_mean"],
                              loaded["blocks_1/depthwise_bn/moving_mean"])


def test_init_model_is_not_applied_when_resuming(base_run, tmp_path):
    """With a checkpoint in model_dir, training resumes from it; init_model_path
    does not overwrite the resumed weights."""
    model_dir = tmp_path / "run"
    shutil.copytree(base_run["model_dir"], model_dir)
    other = _save_tiny_model(tmp_path / "other", num_classes=10)
    config = dataclasses.replace(base_run["config"], model_dir=str(model_dir), init_model=True,
                               init_model_path=other)
    trainer = loop.Trainer(config)
    assert trainer.prepare() is True
    assert trainer.step == 4
    stored = group_values(str(model_dir / "ckpt-4"), "model")
    for path, value in weights(trainer.student).items():
        np.testing.assert_array_equal(value, stored[path], err_msg=path)
