"""Runs every binary on hand-made bad inputs and writes the table of docs/errors.md
(issue 14, acceptance): case, command, exit code, the one `error:` line, and whether the
output directory was left as it was. Generating the table from real runs keeps it true.

  python tools/bad_inputs.py --output=docs/errors.md   # all cases, a few minutes
  python tools/bad_inputs.py --cases=model_table_unknown_model   # print one row

The inputs are made in a temporary directory: a tiny digits dataset
(nst.data.sources.digits), a labeled shard with a record that lacks its image, a gin file
that imports `os`. tests/test_bad_inputs.py runs a few fast cases through `run_case`.
"""

import concurrent.futures
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Optional

from absl import app, flags

FLAGS = flags.FLAGS

SMALL_MODEL = ["--width_coefficient=0.25", "--depth_coefficient=0.25",
               "--train_batch_size=8", "--num_train_images=8", "--train_steps=2",
               "--iterations_per_loop=1", "--save_checkpoints_steps=1"]


@dataclasses.dataclass
class Case:
    name: str
    what: str
    argv: Callable[[str], List[str]]  # tmp dir -> the command
    watched: Callable[[str], str]  # tmp dir -> the directory that must be left as it was
    setup: Optional[Callable[[str], None]] = None


@dataclasses.dataclass
class Result:
    case: Case
    command: str
    returncode: int
    error_lines: List[str]
    traceback: bool
    untouched: bool


def _digits(tmp):
    path = os.path.join(tmp, "digits")
    if not os.path.exists(path):
        from nst.data.sources.digits import make_digits_dataset
        make_digits_dataset(path, labels_per_class=10, seed=0)
    return path


def _bad_record_data(tmp):
    """A labeled dir whose train shard holds 3 good records and then one without
    image/encoded (record index 3)."""
    import tensorflow as tf

    path = os.path.join(tmp, "bad_record")
    os.makedirs(path, exist_ok=True)
    source = sorted(tf.io.gfile.glob(os.path.join(_digits(tmp), "train-*")))[0]
    with tf.io.TFRecordWriter(os.path.join(path, "train-00000-of-00001")) as writer:
        for raw in tf.data.TFRecordDataset(source).take(3):
            writer.write(raw.numpy())
        example = tf.train.Example()
        example.features.feature["image/class/label"].int64_list.value.append(1)
        writer.write(example.SerializeToString())


def _gin_import(tmp):
    with open(os.path.join(tmp, "imports_os.gin"), "w") as f:
        f.write("import os\nExperimentConfig.train_steps = 5\n")


def _existing_model_dir(tmp):
    os.makedirs(os.path.join(tmp, "existing_model"), exist_ok=True)
    with open(os.path.join(tmp, "existing_model", "notes.txt"), "w") as f:
        f.write("a file of the user's\n")


def _main(tmp, *args):
    return ["nst-main", "--task_name=digits", f"--label_data_dir={_digits_path(tmp)}",
            f"--model_dir={tmp}/model"] + SMALL_MODEL + list(args)


def _digits_path(tmp):
    return os.path.join(tmp, "digits")


def _model(tmp):
    return os.path.join(tmp, "model")


CASES = [
    Case("main_unknown_flag", "misspelt flag", lambda t: _main(t, "--train_step=5"), _model),
    Case("main_gin_wrong_type", "a string for a float setting, from --gin_param",
         lambda t: _main(t, "--gin_param=ExperimentConfig.unlabel_ratio = 'two'"), _model),
    Case("main_flag_out_of_range", "a setting out of its range",
         lambda t: _main(t, "--moving_average_decay=1.5"), _model),
    Case("main_gin_import", "a gin file that imports a foreign module",
         lambda t: _main(t, f"--gin_file={t}/imports_os.gin"), _model, _gin_import),
    Case("main_missing_data", "--label_data_dir with no train files",
         lambda t: _main(t, f"--label_data_dir={t}/no_such_dir"), _model),
    Case("main_missing_unlabeled", "--unlabel_data_dir with no files, existing model_dir",
         lambda t: ["nst-main", "--task_name=digits", f"--label_data_dir={_digits_path(t)}",
                    f"--model_dir={t}/existing_model", "--unlabel_ratio=2",
                    f"--unlabel_data_dir={t}/no_unlabeled"] + SMALL_MODEL,
         lambda t: os.path.join(t, "existing_model"), _existing_model_dir),
    Case("main_missing_teacher", "--teacher_model_path that holds no checkpoint",
         lambda t: _main(t, "--unlabel_ratio=2", f"--unlabel_data_dir={_digits_path(t)}",
                         "--teacher_model_name=efficientnet-b0",
                         f"--teacher_model_path={t}/no_teacher"), _model),
    Case("main_eval_no_checkpoint", "--mode=eval of a model_dir without checkpoints",
         lambda t: ["nst-main", "--mode=eval", "--task_name=digits",
                    f"--label_data_dir={_digits_path(t)}", f"--model_dir={t}/existing_model",
                    "--width_coefficient=0.25", "--depth_coefficient=0.25"],
         lambda t: os.path.join(t, "existing_model"), _existing_model_dir),
    Case("main_bad_record", "a labeled record without image/encoded (found while training)",
         lambda t: ["nst-main", "--mode=train", "--task_name=digits",
                    f"--label_data_dir={t}/bad_record", f"--model_dir={t}/model_bad_record",
                    "--train_batch_size=4", "--num_train_images=4", "--train_steps=2",
                    "--iterations_per_loop=1", "--save_checkpoints_steps=1",
                    "--width_coefficient=0.25", "--depth_coefficient=0.25"],
         lambda t: os.path.join(t, "model_bad_record"), _bad_record_data),
    Case("pipeline_bad_setting", "a PipelineConfig value out of range",
         lambda t: ["nst-pipeline", f"--run_dir={t}/run",
                    "--gin_param=PipelineConfig.num_iterations = -1"],
         lambda t: os.path.join(t, "run")),
    Case("pipeline_no_such_stage", "--until names no stage",
         lambda t: ["nst-pipeline", f"--run_dir={t}/run", "--until=teachr"],
         lambda t: os.path.join(t, "run")),
    Case("filter_missing_input", "nst-filter-unlabel on a missing input dir",
         lambda t: ["nst-filter-unlabel", "--only_get_stats=1", f"--input_dir={t}/no_input",
                    f"--output_dir={t}/filtered", "--num_shards=2", "--num_label_classes=10"],
         lambda t: os.path.join(t, "filtered")),
    Case("filter_no_thresholds", "the select step before the reduce step",
         lambda t: ["nst-filter-unlabel", "--only_get_stats=0",
                    f"--input_dir={_digits_path(t)}", f"--output_dir={t}/filtered",
                    "--num_shards=2", "--num_label_classes=10"],
         lambda t: os.path.join(t, "filtered")),
    Case("beam_unknown_flag", "nst-filter-unlabel-beam with a misspelt flag",
         lambda t: ["nst-filter-unlabel-beam", "--num_shard=3", f"--input_dir={t}/none",
                    f"--output_dir={t}/beam"], lambda t: os.path.join(t, "beam")),
    Case("convert_missing_source", "nst-convert-checkpoint from a missing checkpoint",
         lambda t: ["nst-convert-checkpoint", "--model_name=efficientnet-b0",
                    f"--source={t}/no_ckpt/model.ckpt", f"--output_dir={t}/converted"],
         lambda t: os.path.join(t, "converted")),
    Case("model_table_unknown_model", "nst-model-table with an unknown model name",
         lambda t: ["nst-model-table", "--models=efficientnet-b9"],
         lambda t: os.path.join(t, "nothing")),
    Case("make_digits_bad_count", "nst-make-digits with 0 labels per class",
         lambda t: ["nst-make-digits", f"--output_dir={t}/made", "--labels_per_class=0"],
         lambda t: os.path.join(t, "made")),
    Case("make_fashion_mnist_no_source", "nst-make-fashion-mnist without its IDX files",
         lambda t: ["nst-make-fashion-mnist", f"--output_dir={t}/fashion",
                    f"--source_dir={t}/no_idx"], lambda t: os.path.join(t, "fashion")),
]
BY_NAME = {c.name: c for c in CASES}


def _tree(path: str) -> Optional[Dict[str, bytes]]:
    from nst import testing
    return testing.file_tree(path) if os.path.exists(path) else None


def _resolve(argv: List[str]) -> List[str]:
    """A console script by name, or its module through this interpreter when the project
    is not installed (a checkout)."""
    modules = {"nst-main": "nst.main", "nst-pipeline": "nst.pipeline",
               "nst-filter-unlabel": "nst.filter_unlabel",
               "nst-filter-unlabel-beam": "nst.pseudo.beam"}
    if shutil.which(argv[0]):
        return argv
    if argv[0] in modules:
        return [sys.executable, "-m", modules[argv[0]]] + argv[1:]
    raise FileNotFoundError(f"{argv[0]} is not installed: pip install -e .")


def run_case(case: Case, tmp: str, timeout: float = 600) -> Result:
    """Runs one case in `tmp` (its inputs are made there first)."""
    _digits(tmp)
    if case.setup:
        case.setup(tmp)
    argv = case.argv(tmp)
    watched = case.watched(tmp)
    before = _tree(watched)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(_resolve(argv), capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=tmp)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    command = " ".join(a if " " not in a else f'"{a}"' for a in argv).replace(tmp, "$TMP")
    return Result(case, command, proc.returncode, [l.replace(tmp, "$TMP") for l in lines],
                  "Traceback (most recent call last)" in proc.stderr,
                  _tree(watched) == before)


def markdown(results: List[Result]) -> str:
    def cell(text):
        return text.replace("|", "\\|")

    rows = ["| case | command | exit | message (stderr) | output dir untouched |",
            "|---|---|---|---|---|"]
    for r in results:
        message = "<br>".join(cell(l) for l in r.error_lines) or "(no error line)"
        if r.traceback:
            message += " **(traceback)**"
        rows.append(f"| {cell(r.case.what)} | `{cell(r.command)}` | {r.returncode} | "
                    f"`{message}` | {'yes' if r.untouched else 'no'} |")
    return "\n".join(rows) + "\n"


HEADER = """# Errors a user sees

Every binary prints a user error as one line, `error: <message>`, on stderr and exits
non-zero, without a traceback (`nst/cli_errors.py`); `--traceback` adds the traceback for
debugging. A bug of the program (an AssertionError, a TypeError, ...) keeps its
traceback. A bad record found inside tf.data is named by file, record index and reason
(`nst.data.readers.RecordError`), not by TensorFlow's wrapped text. A run whose start-up
checks fail (settings, gin imports, data files, teacher checkpoint) leaves its output
directory as it found it, and deletes one it created.

The table below is the output of `python tools/bad_inputs.py --output=docs/errors.md`,
which runs each binary on inputs made in a temporary directory (`$TMP`; `$TMP/digits`
is a tiny digits dataset). "untouched" compares the listed output directory before and
after the run. A bad record is only found while training, after the run has started, so
that run's directory is not untouched.

"""


def main(argv):
    del argv
    names = FLAGS.cases or [c.name for c in CASES]
    with tempfile.TemporaryDirectory() as root:
        _digits(root)

        def one(name):
            tmp = os.path.join(root, name)
            os.makedirs(tmp)
            os.symlink(os.path.join(root, "digits"), os.path.join(tmp, "digits"))
            return run_case(BY_NAME[name], tmp)

        with concurrent.futures.ThreadPoolExecutor(FLAGS.parallel) as pool:
            results = list(pool.map(one, names))
    table = markdown(results)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            f.write(HEADER + table)
    print(table)


if __name__ == "__main__":
    flags.DEFINE_list("cases", None, f"Case names; default all: {sorted(BY_NAME)}")
    flags.DEFINE_string("output", None, "Markdown file to write (e.g. docs/errors.md).")
    flags.DEFINE_integer("parallel", 3, "Cases run at once.")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from nst import cli_errors
    cli_errors.run(main)
