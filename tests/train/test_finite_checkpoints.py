"""No poisoned checkpoint, no NaN result: `Trainer.save` checks the state before it
writes (finite variables, finite probe loss), a stop names the last checkpoint that
passes that check (verified, not assumed), evaluating a non-finite model fails, and
the JSON results files are strict (no NaN / Infinity).

The exploding run: the tiny 32x32 EfficientNet with a learning rate of 1e30. The LR
warms up from 0, so the update at step 0 changes nothing and the one at step 1 blows
the weights up: |w| ~ 1e27 at step 2, every variable finite, the probe loss NaN.
"""

import dataclasses
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from nst import config as config_lib
from nst import fileio
from nst import main
from nst.data import input_pipeline as ip
from nst.train import evaluate as eval_lib
from nst.train import loop
from nst.testing import two_cpu_strategy


def exploding_config(model_dir, data_dir, **overrides):
    """One step per loop call and a checkpoint after every step."""
    settings = dict(
        task_name="digits", mode="train", label_data_dir=data_dir, model_dir=str(model_dir),
        width_coefficient=0.25, depth_coefficient=0.25,
        train_batch_size=8, num_train_images=8, train_steps=100,
        iterations_per_loop=1, save_checkpoints_steps=1,
        base_learning_rate=1e30, moving_average_decay=0.99, eval_batch_size=64)
    settings.update(overrides)
    return config_lib.finalize(config_lib.ExperimentConfig(**settings))


def checkpoint_paths(model_dir):
    state = tf.train.get_checkpoint_state(str(model_dir))
    return [] if state is None else list(state.all_model_checkpoint_paths)


def checkpoint_prefixes_on_disk(model_dir):
    return sorted({p.rsplit(".", 1)[0] for p in tf.io.gfile.glob(os.path.join(
        str(model_dir), "ckpt-*"))})


def strict_json(text):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


class Checker:
    """Tells a good checkpoint from a bad one without `Trainer.check_state`: every float
    tensor of the file finite, and a finite eval of one batch of training images with
    the raw and with the EMA weights."""

    def __init__(self, config):
        self.trainer = loop.Trainer(dataclasses.replace(config, mode="eval"))
        view, _, _ = self.trainer.views()
        self.data = ip.eval_dataset(os.path.join(config.label_data_dir, "train*"),
                                    config.num_label_classes, 8, view).take(1)

    def good(self, path) -> bool:
        reader = tf.train.load_checkpoint(path)
        for key, dtype in reader.get_variable_to_dtype_map().items():
            if dtype.is_floating and not np.all(np.isfinite(reader.get_tensor(key))):
                return False
        self.trainer.restore_latest(path)
        try:
            eval_lib.evaluate(self.trainer.student, self.data, 10)
            with self.trainer.ema.swapped(self.trainer.student):
                eval_lib.evaluate(self.trainer.student, self.data, 10)
        except eval_lib.NonFiniteModelError:
            return False
        return True


@pytest.fixture(scope="module")
def poisoned_run(digits_dir, tmp_path_factory):
    """A model_dir with one good and two bad checkpoints:
      ckpt-1  the state of step 1 (saved by Trainer.save: checked)
      ckpt-2  the exploded state of step 2, saved unchecked (as before the check)
      ckpt-3  ckpt-1 with one optimizer slot set to NaN by hand."""
    model_dir = tmp_path_factory.mktemp("poisoned")
    config = exploding_config(model_dir, digits_dir)
    trainer = loop.Trainer(config)
    trainer.prepare()
    trainer.train(until_step=1)
    checked_save = trainer.save
    trainer.save = lambda step: trainer.manager.save(checkpoint_number=step)
    trainer.train(until_step=2)
    trainer.save = checked_save
    trainer.checkpoint.read(str(model_dir / "ckpt-1")).expect_partial()
    slot = trainer.optimizer.momentums[0]
    slot.assign(np.full(slot.shape, np.nan, np.float32))
    trainer.manager.save(checkpoint_number=3)
    return dict(config=config, model_dir=str(model_dir), trainer=trainer,
                nan_slot=f"optimizer/{slot.path}")


@pytest.fixture(scope="module")
def checker(poisoned_run):
    return Checker(poisoned_run["config"])


# --------------------------------------------------------------------------- training


def test_exploding_run_saves_no_exploded_checkpoint(digits_dir, tmp_path, checker):
    """With two steps per checkpoint there is no good one: test_loop.py's
    test_non_finite_state_is_not_saved."""
    config = exploding_config(tmp_path, digits_dir)
    trainer = loop.Trainer(config)
    trainer.prepare()
    with pytest.raises(loop.NonFiniteLossError) as error:
        trainer.train(until_step=10)
    message = str(error.value)
    good = str(tmp_path / "ckpt-1")
    assert message == (
        "Not saving step 2: the state to save is not finite (probe loss on 8 training "
        "images, inference mode: raw weights nan, EMA weights nan). The last good "
        f"checkpoint (finite variables and probe loss, checked now) is {good}. Resume "
        "with a lower --base_learning_rate (or other settings).")
    assert error.value.last_good == good
    assert checkpoint_paths(tmp_path) == [good]
    assert checkpoint_prefixes_on_disk(tmp_path) == [good]
    assert checker.good(good)
    # The search restored the good checkpoint into the trainer.
    assert trainer.step == 1


def test_the_check_tells_good_from_bad_checkpoints(poisoned_run, checker):
    """ckpt-2's variables are all finite but huge: its probe loss gives it away;
    ckpt-3's probe loss is fine: its NaN slot gives it away."""
    model_dir, trainer = poisoned_run["model_dir"], poisoned_run["trainer"]
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "ckpt-2"))
    exploded = [reader.get_tensor(k) for k, d in reader.get_variable_to_dtype_map().items()
                if d.is_floating]
    assert all(np.all(np.isfinite(v)) for v in exploded)
    assert max(float(np.max(np.abs(v))) for v in exploded) > 1e20
    checks = {}
    for step in (1, 2, 3):
        trainer.checkpoint.read(os.path.join(model_dir, f"ckpt-{step}")).expect_partial()
        checks[step] = trainer.check_state()
    assert checks[1].ok and checks[1].bad_variables == []
    assert checks[1].num_variables == checks[2].num_variables > 300
    assert not checks[2].ok and checks[2].bad_variables == []
    assert not any(np.isfinite(list(checks[2].loss.values())))
    assert not checks[3].ok and checks[3].bad_variables == [poisoned_run["nan_slot"]]
    assert checks[3].loss == checks[1].loss
    assert checks[3].describe().startswith(
        f"1 of {checks[3].num_variables} float variables hold NaN or Inf "
        f"(e.g. {poisoned_run['nan_slot']}); probe loss on 8 training images")
    assert [checker.good(os.path.join(model_dir, f"ckpt-{s}")) for s in (1, 2, 3)] == [
        True, False, False]


def test_non_finite_metrics_name_the_verified_last_good_checkpoint(poisoned_run, tmp_path):
    """Resumed from the NaN-slot ckpt-3 with a save every 4 steps: the step after the
    resume makes the weights NaN, the next loop's metrics are NaN; the search skips
    ckpt-3 and ckpt-2 and names ckpt-1."""
    model_dir = tmp_path / "run"
    shutil.copytree(poisoned_run["model_dir"], model_dir)
    config = dataclasses.replace(poisoned_run["config"], model_dir=str(model_dir),
                                 save_checkpoints_steps=4)
    trainer = loop.Trainer(config)
    assert trainer.prepare() is True
    with pytest.raises(loop.NonFiniteLossError) as error:
        trainer.train(until_step=10)
    message = str(error.value)
    paths = [str(model_dir / f"ckpt-{s}") for s in (1, 2, 3)]
    assert message.startswith("Non-finite training metrics between steps 2 and 3: {")
    assert message.endswith(
        ". Stopped without saving. The last good checkpoint (finite variables and probe "
        f"loss, checked now) is {paths[0]}; newer ones fail the same check and must be "
        f"deleted before resuming from it: {paths[2]}, {paths[1]}. Resume with a lower "
        "--base_learning_rate (or other settings).")
    assert error.value.last_good == paths[0]
    assert trainer.step == 1
    assert checkpoint_paths(model_dir) == paths  # nothing saved, nothing deleted


def test_no_good_checkpoint_among_several(poisoned_run, tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(poisoned_run["model_dir"], model_dir)
    for path in tf.io.gfile.glob(str(model_dir / "ckpt-1.*")):
        os.remove(path)
    paths = [str(model_dir / f"ckpt-{s}") for s in (2, 3)]
    tf.compat.v1.train.update_checkpoint_state(str(model_dir), paths[-1],
                                               all_model_checkpoint_paths=paths)
    trainer = loop.Trainer(dataclasses.replace(poisoned_run["config"],
                                               model_dir=str(model_dir)))
    with pytest.raises(loop.NonFiniteLossError) as error:
        trainer._stop("Stopped.")
    assert str(error.value) == (
        f"Stopped. None of the checkpoints in {model_dir} ({paths[1]}, {paths[0]}) passes "
        "the same check: training must restart from scratch, in a new --model_dir, with a "
        "lower --base_learning_rate.")
    assert error.value.last_good is None


@pytest.mark.slow
def test_the_check_runs_on_every_replica(digits_dir, tmp_path):
    """Two replicas (MirroredStrategy): the same stop at step 2, naming ckpt-1."""
    strategy = two_cpu_strategy()
    trainer = loop.Trainer(exploding_config(tmp_path, digits_dir), strategy)
    trainer.prepare()
    with pytest.raises(loop.NonFiniteLossError, match=r"^Not saving step 2: ") as error:
        trainer.train(until_step=10)
    assert error.value.last_good == str(tmp_path / "ckpt-1")
    assert checkpoint_prefixes_on_disk(tmp_path) == [str(tmp_path / "ckpt-1")]


# --------------------------------------------------------------------------- evaluation


def test_eval_of_an_exploded_checkpoint_fails_and_writes_nothing(poisoned_run, tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(poisoned_run["model_dir"], model_dir)
    paths = [str(model_dir / f"ckpt-{s}") for s in (1, 2)]
    config = dataclasses.replace(poisoned_run["config"], mode="eval",
                                 model_dir=str(model_dir), eval_splits="dev")
    tf.compat.v1.train.update_checkpoint_state(str(model_dir), paths[1],
                                               all_model_checkpoint_paths=paths)
    with pytest.raises(eval_lib.NonFiniteModelError) as error:
        main.run(config)
    assert str(error.value).startswith(
        f"Evaluation of the EMA weights of {paths[1]} on split 'dev' is not finite: NaN or "
        "Inf logits for ")
    assert "179 images" in str(error.value)
    assert not (model_dir / "eval_results.json").exists()


def test_evaluating_nan_weights_raises(poisoned_run, digits_dir):
    trainer = poisoned_run["trainer"]
    trainer.checkpoint.read(os.path.join(poisoned_run["model_dir"], "ckpt-1")).expect_partial()
    view, _, _ = trainer.views()
    data = ip.eval_dataset(os.path.join(digits_dir, "dev*"), 10, 64, view)
    kernel = trainer.student.get_layer("logits").kernel
    kept = kernel.numpy()
    try:
        kernel.assign(np.full(kernel.shape, np.nan, np.float32))
        with pytest.raises(eval_lib.NonFiniteModelError, match=(
                r"^Evaluation of the model is not finite: NaN or Inf logits for 179 of 179 "
                r"images, mean loss nan\. Its weights are unusable")):
            eval_lib.evaluate(trainer.student, data, 10)
    finally:
        kernel.assign(kept)
    assert np.isfinite(eval_lib.evaluate(trainer.student, data, 10)["loss"])


# --------------------------------------------------------------------------- strict JSON


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_atomic_write_json_refuses_non_finite_numbers(tmp_path, value):
    path = str(tmp_path / "x.json")
    with pytest.raises(ValueError, match=(
            rf"^Not writing {re.escape(path)}: non-finite number at \['x'\] \(strict JSON "
            r"has no NaN")):
        fileio.atomic_write_json(path, {"x": value})
    assert os.listdir(tmp_path) == []  # no file, no (hidden) temporary
    fileio.atomic_write_json(path, {"a": 1})
    with pytest.raises(ValueError, match=r"at \[0\]\['a'\]\[1\]"):
        fileio.atomic_write_json(path, [{"a": [1.0, value]}])
    assert os.listdir(tmp_path) == ["x.json"]
    assert strict_json(open(path).read()) == {"a": 1}


def test_eval_results_stay_strict_json(tmp_path):
    model_dir = str(tmp_path)
    for step in (2, 4):
        eval_lib.append_result(model_dir, {"top_1_accuracy": 0.5, "loss": 1.25,
                                           "global_step": step, "split": "dev"})
    path = tmp_path / "eval_results.json"
    before = path.read_text()
    assert [r["global_step"] for r in strict_json(before)] == [2, 4]
    with pytest.raises(ValueError, match=r"non-finite number at \[2\]\['loss'\]"):
        eval_lib.append_result(model_dir, {"top_1_accuracy": 0.5, "loss": float("nan"),
                                           "global_step": 6, "split": "dev"})
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["eval_results.json"]
