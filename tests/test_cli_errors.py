"""One-line errors (`nst.cli_errors`) and nothing written before the inputs are checked
(`nst.main.run`), issue 14 items 3 and 5. In-process, so the tests stay fast; the
binaries themselves are run by tools/bad_inputs.py (tests/test_bad_inputs.py)."""

import pytest
import tensorflow as tf
from absl import app, flags

from nst import cli_errors
from nst import config as config_lib
from nst import main
from nst.data import readers
from nst.settings_check import SettingError
from nst.testing import file_tree


def _call(main_fn, capsys, show_traceback=False):
    """Runs main_fn as cli_errors.run would; returns (exit code, stderr)."""
    cli_errors.define_flags()
    flags.FLAGS.traceback = show_traceback
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli_errors.guarded(main_fn)(["prog"])
    finally:
        flags.FLAGS.traceback = False
    return exit_info.value.code, capsys.readouterr().err


def _raise(error):
    def main_fn(argv):
        raise error
    return main_fn


@pytest.mark.parametrize("error, line", [
    (SettingError("ExperimentConfig.unlabel_ratio = 'two' (set in gin) must be a number"),
     "ExperimentConfig.unlabel_ratio = 'two' (set in gin) must be a number"),
    (FileNotFoundError("No files match the pattern '/x/train*'"),
     "No files match the pattern '/x/train*'"),
    (app.UsageError("Unexpected arguments: ['x']"), "Unexpected arguments: ['x']"),
    (tf.errors.NotFoundError(None, None, "/x/ckpt; No such file or directory"),
     "/x/ckpt; No such file or directory"),
    (ValueError("first line\n  second line"), "first line second line"),
])
def test_user_error_is_one_line(error, line, capsys):
    exit_code, err = _call(_raise(error), capsys)
    assert exit_code == 1
    assert err == f"error: {line}\n"


def test_traceback_flag_shows_it(capsys):
    exit_code, err = _call(_raise(ValueError("bad value")), capsys, show_traceback=True)
    assert exit_code == 1
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1] == "error: bad value"


def test_bug_keeps_its_traceback():
    with pytest.raises(TypeError):
        cli_errors.guarded(_raise(TypeError("'>' not supported")))(["prog"])
    with pytest.raises(AssertionError):
        cli_errors.guarded(_raise(AssertionError("invariant")))(["prog"])


def test_bad_record_inside_tf_data_is_a_record_error(capsys):
    """The reader's own assertion (readers._raise_on_problem) inside a tf.data map: the
    line names file, record index and reason, none of TensorFlow's wrapping."""
    record = {"file": tf.constant(["/data/train-00000-of-00002"] * 3),
              "index": tf.constant([57, 58, 59], tf.int64)}
    problems = tf.constant(["", "missing key image/encoded", ""])
    dataset = tf.data.Dataset.from_tensors((record, problems)).map(readers._raise_on_problem)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        list(dataset)
    found = readers.RecordError.from_op_error(info.value)
    assert (found.file, found.index) == ("/data/train-00000-of-00002", 58)
    assert found.reason.startswith("missing key image/encoded")
    exit_code, err = _call(_raise(info.value), capsys)
    assert exit_code == 1
    assert err == (f"error: bad record in /data/train-00000-of-00002 at record index 58: "
                   f"{found.reason}\n")
    assert "MapDataset" not in err and "function_node" not in err


def test_other_tf_error_loses_its_wrapping():
    text = ("{{function_node __wrapped__X}} Error in user-defined function passed to "
            "MapDataset:1 transformation with iterator: Iterator::Root::ParallelMapV2: "
            "Invalid JPEG data\n\t [[{{node DecodeJpeg}}]] [Op:IteratorGetNext] name: ")
    assert cli_errors.message(tf.errors.InvalidArgumentError(None, None, text)) == \
        "Invalid JPEG data"


def _config(model_dir, data_dir, **overrides):
    settings = dict(task_name="digits", mode="train", label_data_dir=str(data_dir),
                    model_dir=str(model_dir), width_coefficient=0.25,
                    depth_coefficient=0.25, train_batch_size=8, num_train_images=8,
                    train_steps=2, iterations_per_loop=1, save_checkpoints_steps=1)
    settings.update(overrides)
    return config_lib.finalize(config_lib.ExperimentConfig(**settings))


def test_failed_start_leaves_no_new_model_dir(tmp_path):
    model_dir = tmp_path / "model"
    with pytest.raises(FileNotFoundError, match="No files match"):
        main.run(_config(model_dir, tmp_path / "no_data"))
    assert not model_dir.exists()


def test_failed_start_leaves_existing_model_dir_as_it_was(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "notes.txt").write_text("mine")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train-00000-of-00001").write_bytes(b"")
    before = file_tree(str(model_dir))
    with pytest.raises(FileNotFoundError, match="No teacher checkpoint"):
        main.run(_config(model_dir, data, unlabel_ratio=2.0,
                         unlabel_data_dir=str(tmp_path / "no_unlabeled"),
                         teacher_model_name="efficientnet-b0",
                         teacher_model_path=str(tmp_path / "teacher")))
    assert file_tree(str(model_dir)) == before
