"""nst-pipeline (issue: the whole loop): stage plans from gin, emitted commands, run-dir
checks, and a real quick digits run that survives being killed.
"""

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from unittest import mock

import pytest

from nst import config as config_lib
from nst import pipeline
from nst import pipeline_config as pc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFLINE = "digits/noisy_student.gin"


def _plan(tmp_path, *params, gin=OFFLINE, **overrides):
    return pc.plan([gin], list(params), dict({"run_dir": str(tmp_path / "run")}, **overrides))


def _by_name(stages):
    return {s.name: s for s in stages}


# --------------------------------------------------------------------------- plans


def test_offline_plan_chains_each_student_to_its_teacher(tmp_path):
    config, stages = _plan(tmp_path)
    assert [s.name for s in stages] == ["data", "teacher", "predict-1", "filter-1",
                                        "student-1", "predict-2", "filter-2", "student-2"]
    s = _by_name(stages)
    run = str(tmp_path / "run")
    assert s["teacher"].directory == os.path.join(run, "iteration_0", "teacher")
    assert s["teacher"].settings.unlabel_ratio == 0 and s["teacher"].settings.train_steps == 600
    # Iteration 1 labels the raw unlabeled data with the teacher ...
    assert s["predict-1"].settings.predict_ckpt_path == s["teacher"].directory
    assert s["predict-1"].settings.label_data_dir == os.path.join(run, "data", "unlabeled")
    assert s["filter-1"].filter_config.input_dir == s["predict-1"].directory
    assert s["student-1"].settings.unlabel_data_dir == os.path.join(
        s["filter-1"].directory, "data")
    assert s["student-1"].settings.teacher_model_path is None
    # ... and iteration 2 with student 1.
    assert s["predict-2"].settings.predict_ckpt_path == s["student-1"].directory
    assert s["student-2"].settings.label_data_dir == os.path.join(run, "data")
    # Scoped gin: student/ applies to every student; the filter gets digits' unlabeled
    # share per class (979 images / 10).
    assert s["student-2"].settings.unlabel_ratio == 3.0
    assert s["filter-1"].filter_config.num_image == 97
    assert s["filter-1"].filter_config.num_shards == 4


def test_iteration_scope_overrides_one_student(tmp_path):
    _, stages = _plan(tmp_path, "student/iteration_2/ExperimentConfig.unlabel_ratio = 5.0",
                      "student/iteration_2/ExperimentConfig.width_coefficient = 0.5")
    s = _by_name(stages)
    assert s["student-1"].settings.unlabel_ratio == 3.0
    assert s["student-2"].settings.unlabel_ratio == 5.0
    assert s["student-2"].settings.width_coefficient == 0.5


def test_online_plan_has_no_predict_or_filter(tmp_path):
    _, stages = _plan(tmp_path, gin="digits/online.gin")
    assert [s.name for s in stages] == ["data", "teacher", "student-1", "student-2"]
    s = _by_name(stages)
    assert s["student-1"].settings.teacher_model_path == s["teacher"].directory
    assert s["student-2"].settings.teacher_model_path == s["student-1"].directory
    assert s["student-2"].settings.teacher_model_name == "efficientnet-b0"
    assert s["student-1"].settings.unlabel_data_dir.endswith(os.path.join("data", "unlabeled"))


def test_students_without_noise(tmp_path):
    _, stages = _plan(tmp_path, student_noise=False)
    student = _by_name(stages)["student-1"].settings
    assert student.remove_aug and student.augment_name is None
    assert student.dropout_rate == 0.0 and student.stochastic_depth_rate == 0.0
    assert _by_name(stages)["teacher"].settings.augment_name == "v1"  # teacher unchanged


def test_every_pipeline_recipe_plans(tmp_path):
    for gin in ("digits/noisy_student.gin", "digits/online.gin",
                "fashion_mnist/noisy_student.gin", "svhn/pipeline_online.gin",
                "svhn/pipeline_offline.gin", "imagenet/noisy_student_l2.gin"):
        config, stages = pc.plan([gin], [], {"run_dir": str(tmp_path / "r")},
                                 check_data=False)
        assert stages and all(s.settings is None or s.settings.model_name for s in stages)
    config, stages = pc.plan(["imagenet/noisy_student_l2.gin"], [],
                             {"run_dir": str(tmp_path / "r")}, check_data=False)
    s = _by_name(stages)
    assert [s[f"student-{i}"].settings.unlabel_ratio for i in (1, 2, 3)] == [14, 14, 28]
    assert s["student-1"].settings.model_name == "efficientnet-l2-475"
    assert s["teacher"].settings.model_name == "efficientnet-b7"
    finetune = s["finetune"].settings
    assert finetune.init_model and finetune.init_model_path == s["student-3"].directory
    assert (finetune.input_image_size, finetune.remove_aug, finetune.unlabel_ratio) == \
        (800, True, 0.0)
    assert s["filter-2"].filter_config.num_image == 130000


# --------------------------------------------------------------------------- commands


def test_emitted_commands_replay_the_stage_configs(tmp_path):
    config, stages = _plan(tmp_path)
    pc.prepare_run_dir(config, stages)
    result = pipeline.run(config, stages, emit_only=True)
    lines = open(result["commands"]).read().splitlines()
    commands = [shlex.split(l) for l in lines if l and not l.startswith(("#", "set "))]
    # The data stage is a console script of the package: no checkout (tools/) needed.
    assert commands[0] == ["nst-make-digits", f"--output_dir={config.run_dir}/data",
                           "--labels_per_class=10", "--seed=0"]
    predict = [c for c in commands if c[0] == "nst-main" and any("predict-1" in a for a in c)]
    assert len(predict) == 4 and predict[3][-1] == "--shard_id=3"
    steps = [next(a for a in c if a.startswith("--only_get_stats")) for c in commands
             if c[0] == "nst-filter-unlabel" and "filtered" in " ".join(c)
             and "iteration_1" in " ".join(c)]
    assert steps == ["--only_get_stats=1"] * 4 + ["--only_get_stats=2"] + \
        ["--only_get_stats=0"] * 4 + ["--only_get_stats=3"]
    # A stage's gin file is the stage: nst-main built from it has the same settings.
    for stage in stages:
        if stage.settings is not None:
            replayed = config_lib.build_config(
                [os.path.join(config.run_dir, "configs", f"{stage.name}.gin")])
            assert dataclasses.asdict(replayed) == dataclasses.asdict(
                config_lib.finalize(stage.settings))
    assert not os.path.exists(os.path.join(config.run_dir, "iteration_0"))  # nothing ran


ROBUST = ("PipelineConfig.robustness = True",
          "PipelineConfig.robustness_corruptions = 'gaussian_noise,contrast'",
          "PipelineConfig.robustness_severities = '1,3'",
          "PipelineConfig.robustness_fgsm_epsilons = '2'")


def test_robustness_measures_every_model_against_the_teacher(tmp_path):
    config, stages = _plan(tmp_path, *ROBUST)
    assert [s.name for s in stages] == [
        "data", "teacher", "robustness-teacher", "predict-1", "filter-1", "student-1",
        "robustness-student-1", "predict-2", "filter-2", "student-2", "robustness-student-2"]
    s = _by_name(stages)
    teacher_output = s["robustness-teacher"].robustness.output
    assert teacher_output == f"{config.run_dir}/robustness/teacher/results.json"
    assert s["robustness-teacher"].robustness.baseline_results == ""
    for name in ("student-1", "student-2"):
        measured = s[f"robustness-{name}"]
        assert measured.settings.model_dir == s[name].directory
        assert measured.robustness.baseline_results == teacher_output
        assert measured.robustness.data_dir == f"{config.run_dir}/data"
        assert (measured.robustness.corruptions, measured.robustness.severities,
                measured.robustness.fgsm_epsilons) == (("gaussian_noise", "contrast"),
                                                       (1, 3), (2.0,))
    # The emitted command is nst-eval-robustness with the same settings (parsed by that
    # binary's own flags, in a process of its own).
    pc.prepare_run_dir(config, stages)
    pipeline.run(config, stages, emit_only=True)
    command = pipeline.stage_commands(s["robustness-student-1"], config.run_dir)[0]
    argv = shlex.split(command)
    assert argv[0] == "nst-eval-robustness"
    replay = ("import dataclasses, json, sys\n"
              "from nst import config, eval_robustness as er\n"
              "er.define_flags(); er.FLAGS(sys.argv)\n"
              "built = config.build_config(er.FLAGS.gin_file)\n"
              "print(json.dumps([dataclasses.asdict(er.settings_from_flags(built)),"
              " built.model_dir]))\n")
    done = subprocess.run([sys.executable, "-c", replay] + argv[1:], cwd=REPO, check=True,
                          capture_output=True, text=True)
    replayed, model_dir = json.loads(done.stdout.strip().splitlines()[-1])
    assert replayed == s["robustness-student-1"].robustness_record()
    assert model_dir == s["student-1"].directory
    # Default corruptions: all of them.
    _, default = _plan(tmp_path, "PipelineConfig.robustness = True")
    from nst.robustness import corruptions
    assert _by_name(default)["robustness-teacher"].robustness.corruptions == \
        corruptions.CORRUPTIONS


@pytest.mark.parametrize("binding,match", [
    ("PipelineConfig.robustness_corruptions = 'fgo'", "robustness_corruptions='fgo'.*fog"),
    ("PipelineConfig.robustness_severities = '0-2'", "robustness_severities.*Severity 0"),
    ("PipelineConfig.robustness_fgsm_epsilons = '300'", r"fgsm_epsilons.*\(0, 255\]"),
    ("PipelineConfig.robustness_num_examples = -1", "robustness_num_examples = -1"),
])
def test_bad_robustness_settings_fail_at_plan_time(tmp_path, binding, match):
    with pytest.raises(ValueError, match=match):
        _plan(tmp_path, "PipelineConfig.robustness = True", binding)
    assert not (tmp_path / "run").exists()


def test_robustness_settings_may_change_on_a_finished_run(tmp_path):
    """Turning robustness on, or changing what it measures, keeps the trained stages (a
    measurement only reads the models) and reruns only the stale measurements."""
    config, stages = _plan(tmp_path)
    pc.prepare_run_dir(config, stages)
    measured, measured_stages = _plan(tmp_path, *ROBUST)
    pc.prepare_run_dir(measured, measured_stages)  # not refused
    stage = _by_name(measured_stages)["robustness-teacher"]
    os.makedirs(stage.directory)
    with open(stage.done_path, "w") as f:
        json.dump({"settings": stage.robustness_record()}, f)
    assert stage.is_done()
    _, other = _plan(tmp_path, *ROBUST, "PipelineConfig.robustness_severities = '1-5'")
    pc.prepare_run_dir(measured, other)
    assert not _by_name(other)["robustness-teacher"].is_done()
    # A pipeline.json written before the robustness fields existed still matches.
    path = tmp_path / "run" / pc.PIPELINE_FILE
    old = json.loads(path.read_text())
    old["pipeline"] = {k: v for k, v in old["pipeline"].items()
                       if not k.startswith("robustness")}
    path.write_text(json.dumps(old))
    pc.prepare_run_dir(config, stages)
    # A training setting still may not change.
    changed, changed_stages = _plan(tmp_path, *ROBUST, "student/ExperimentConfig.train_steps = 9")
    with pytest.raises(ValueError, match="other settings"):
        pc.prepare_run_dir(changed, changed_stages)


# --------------------------------------------------------------------------- bad input


def test_unknown_model_fails_before_work(tmp_path):
    with pytest.raises(ValueError, match="student 1: Unknown model name 'efficientnet-b9'"):
        _plan(tmp_path, "student/ExperimentConfig.model_name = 'efficientnet-b9'")
    with pytest.raises(ValueError, match="Bad gin configuration"):
        _plan(tmp_path, "PipelineConfig.no_such_field = 1")
    assert not (tmp_path / "run").exists()


def test_smaller_student_is_allowed_but_warned(tmp_path):
    with mock.patch.object(pc.logging, "warning") as warning:
        _plan(tmp_path, "student/ExperimentConfig.width_coefficient = 0.1")
    assert any("smaller than its teacher" in call.args[0] for call in warning.call_args_list)


def test_run_dir_of_another_config_is_refused_unless_overwritten(tmp_path):
    config, stages = _plan(tmp_path)
    pc.prepare_run_dir(config, stages)
    (tmp_path / "run" / "marker").write_text("old run")
    other, other_stages = _plan(tmp_path, "teacher/ExperimentConfig.train_steps = 7")
    with pytest.raises(ValueError,
                       match=r"(?s)other settings.*stages\.teacher\.train_steps: 600 -> 7"):
        pc.prepare_run_dir(other, other_stages)
    pc.prepare_run_dir(config, stages)  # the same settings: fine
    pc.prepare_run_dir(other, other_stages, overwrite=True)
    assert not (tmp_path / "run" / "marker").exists()


def test_missing_data_directories_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="label_data_dir=.*nowhere"):
        _plan(tmp_path, dataset="records", label_data_dir=str(tmp_path / "nowhere"),
              unlabel_data_dir=str(tmp_path))
    (tmp_path / "labeled").mkdir()
    (tmp_path / "labeled" / "train-00000-of-00001").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="unlabel_data_dir=.*holds no extra-"):
        _plan(tmp_path, dataset="records", label_data_dir=str(tmp_path / "labeled"),
              unlabel_data_dir=str(tmp_path / "labeled"))


# --------------------------------------------------------------------------- real runs


def _command(run_dir, *extra):
    return [sys.executable, "-m", "nst.pipeline", "--quick", f"--run_dir={run_dir}",
            "--gin_param=PipelineConfig.num_iterations = 1", *extra]


def _final_numbers(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    # Everything but the wall-clock time of each evaluation.
    return {s["name"]: {split: {k: v for k, v in m.items() if k != "time"}
                        for split, m in s["metrics"].items()}
            for s in results["stages"]}, results


def _test_correct(model_dir, data_dir):
    """Correct test images of the model in `model_dir`: EMA weights, inference mode."""
    import numpy as np
    import tensorflow as tf

    from nst.data import readers, schema
    from nst.models import saving
    model = saving.load_model(model_dir)
    records = list(readers.read_examples(os.path.join(data_dir, "test-*"), schema.LABELED,
                                         10).as_numpy_iterator())
    images = np.stack([tf.io.decode_image(r["image"], channels=3).numpy()
                       for r in records]).astype(np.float32)
    labels = np.array([r["label"] for r in records])
    logits = model(images, training=False).numpy()
    return int((logits.argmax(axis=1) == labels).sum())


def test_until_stops_after_the_named_stage(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run(_command(run_dir, "--until=tacher"), cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 1 and "--until=tacher: no such stage" in done.stderr
    assert "'teacher'" in done.stderr and not run_dir.exists()
    for _ in range(2):  # the second time the data stage is done and skipped
        done = subprocess.run(_command(run_dir, "--until=data"), cwd=REPO, check=True,
                              capture_output=True, text=True)
        assert "Stopping after data" in done.stderr or "data: done earlier" in done.stderr
        assert (run_dir / "data" / "stage_done.json").exists()
        assert not (run_dir / "iteration_0" / "teacher").exists()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    subprocess.run(_command(run_dir), check=True, cwd=REPO, capture_output=True)
    return str(run_dir)


@pytest.mark.slow
def test_quick_run_writes_every_stage_and_the_report(quick_run):
    numbers, results = _final_numbers(quick_run)
    assert list(numbers) == ["teacher", "student-1"]
    for metrics in numbers.values():
        assert set(metrics) == {"dev", "test"}
        assert metrics["test"]["num_images"] == 539
    # Each stage's reported test accuracy is that of its own checkpoint: recomputed here
    # from the saved EMA weights on the test records, outside the training code.
    for stage in results["stages"]:
        correct = _test_correct(stage["model_dir"], os.path.join(quick_run, "data"))
        assert abs(stage["metrics"]["test"]["top_1_accuracy"] * 539 - correct) < 0.5, \
            stage["name"]
    summary = results["stages"][1]["pseudo_labels"]
    assert summary["num_classes"] == 10 and summary["total_after"] > 0
    assert sum(summary["counts_before"]) == 979
    for name in ("report.md", "commands.sh", "pipeline.json", "plots/accuracy.png",
                 "plots/confidence_iteration_1.png", "plots/class_counts_iteration_1.png",
                 "iteration_1/filtered/data", "iteration_1/student/stage_done.json"):
        assert os.path.exists(os.path.join(quick_run, name)), name
    report = open(os.path.join(quick_run, "report.md")).read()
    assert "student-1" in report and "teacher" in report
    # A finished run is all skipped on a rerun and changes nothing.
    before = open(os.path.join(quick_run, "results.json")).read()
    done = subprocess.run(_command(quick_run), check=True, cwd=REPO, capture_output=True,
                          text=True)
    assert done.stderr.count("done earlier, skipped") == 5
    assert _final_numbers(quick_run)[0] == numbers
    assert json.loads(before)["stages"] == json.loads(
        open(os.path.join(quick_run, "results.json")).read())["stages"]


@pytest.mark.slow
def test_robustness_of_a_finished_run_is_reported(quick_run):
    """PipelineConfig.robustness on the finished quick run: only the measurements run;
    report.md gets the table and the plot; the numbers agree with the run's own eval
    and with the mCE formula."""
    extra = [f"--gin_param={b}" for b in ROBUST]
    done = subprocess.run(_command(quick_run, *extra), check=True, cwd=REPO,
                          capture_output=True, text=True)
    assert done.stderr.count("done earlier, skipped") == 5
    results = json.load(open(os.path.join(quick_run, "results.json")))
    measured = {r["name"]: r for r in results["robustness"]}
    assert list(measured) == ["teacher", "student-1"]
    for stage in results["stages"]:
        entry = measured[stage["name"]]
        assert entry["num_examples"] == 539
        assert entry["clean_error"] == pytest.approx(
            1 - stage["metrics"]["test"]["top_1_accuracy"], abs=1e-9)
        full = json.load(open(entry["output"]))
        errors = full["corruptions"]
        assert entry["error_by_severity"] == pytest.approx(
            {s: (errors["gaussian_noise"][s] + errors["contrast"][s]) / 2 for s in ("1", "3")})
    teacher = json.load(open(measured["teacher"]["output"]))["corruptions"]
    student = json.load(open(measured["student-1"]["output"]))["corruptions"]
    ce = [sum(student[c].values()) / sum(teacher[c].values()) for c in teacher]
    assert measured["student-1"]["mce"] == pytest.approx(sum(ce) / len(ce))
    assert measured["teacher"]["mce"] is None
    report = open(os.path.join(quick_run, "report.md")).read()
    assert "## Robustness" in report and "FGSM ε=2" in report and "100 (ref)" in report
    assert os.path.exists(os.path.join(quick_run, "plots", "robustness.png"))
    again = subprocess.run(_command(quick_run, *extra), check=True, cwd=REPO,
                           capture_output=True, text=True)
    assert again.stderr.count("done earlier, skipped") == 7


@pytest.mark.slow
@pytest.mark.parametrize("kill_when", ["iteration_0/teacher/checkpoint",
                                       "iteration_1/predictions/extra-00001-of-00004"])
def test_killed_run_resumes_to_the_same_numbers(quick_run, tmp_path, kill_when):
    """SIGKILL while a stage runs (teacher training after its first checkpoint, or predict
    after its second shard); rerunning the same command gives the uninterrupted run's
    numbers exactly."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen(_command(run_dir), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (run_dir / kill_when).exists() and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "iteration_1" / "student" / "stage_done.json").exists()
    subprocess.run(_command(run_dir), check=True, cwd=REPO, capture_output=True)
    assert _final_numbers(run_dir)[0] == _final_numbers(quick_run)[0]


# --------------------------------------------------------------------------- Fashion-MNIST

FASHION = "fashion_mnist/noisy_student.gin"


def _fashion_plan(tmp_path, source_dir, *params, **overrides):
    return _plan(tmp_path, f"PipelineConfig.source_dir = '{source_dir}'",
                 "PipelineConfig.dev_per_class = 5", *params, gin=FASHION, **overrides)


def test_fashion_recipe_plans_growing_students(tmp_path, fashion_idx):
    fashion_idx(str(tmp_path / "src"), train_per_class=50, test_per_class=2)
    config, stages = _fashion_plan(tmp_path, tmp_path / "src")
    s = _by_name(stages)
    assert [st.name for st in stages] == ["data", "teacher", "predict-1", "filter-1",
                                          "student-1", "predict-2", "filter-2", "student-2"]
    assert s["data"].data_args == {"dataset": "fashion_mnist", "labels_per_class": 40,
                                   "seed": 0, "source_dir": str(tmp_path / "src"),
                                   "dev_per_class": 5}
    assert pipeline.stage_commands(s["data"], config.run_dir) == [shlex.join([
        "nst-make-fashion-mnist", f"--output_dir={config.run_dir}/data", "--dev_per_class=5",
        "--labels_per_class=40", "--seed=0", f"--source_dir={tmp_path / 'src'}"])]
    widths = [s[n].settings.width_coefficient for n in ("teacher", "student-1", "student-2")]
    assert widths == [0.25, 0.35, 0.5]
    for name in ("teacher", "student-1", "student-2"):
        settings = config_lib.finalize(dataclasses.replace(s[name].settings, mode="train"))
        assert (settings.task_name, settings.small_image_model,
                settings.input_image_size) == ("fashion_mnist", True, 32)
        assert s[name].settings.augment_name == "v1"
    student = s["student-1"].settings
    assert student.teacher_softmax_temp == 1.0 and student.unlabel_ratio == 6.0
    # 50 - 5 dev leaves 45 per class: 46 labeled per class is named before any work.
    with pytest.raises(ValueError, match="labels_per_class.*too large"):
        _fashion_plan(tmp_path, tmp_path / "src", "PipelineConfig.labels_per_class = 46")
    config, stages = _fashion_plan(tmp_path, tmp_path / "src",
                                   "PipelineConfig.labels_per_class = 4")
    # auto num_image: (50 - 5 - 4) unlabeled images per class.
    assert _by_name(stages)["filter-1"].filter_config.num_image == 41


def test_fashion_missing_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="PipelineConfig.source_dir.*apt-get install "
                                                "dataset-fashion-mnist"):
        _fashion_plan(tmp_path, tmp_path / "nowhere")
    assert not (tmp_path / "run").exists()


def test_fashion_run_dir_of_another_seed_is_refused(tmp_path, fashion_idx):
    fashion_idx(str(tmp_path / "src"), train_per_class=30, test_per_class=2)
    config, stages = _fashion_plan(tmp_path, tmp_path / "src",
                                   "PipelineConfig.labels_per_class = 4")
    pc.prepare_run_dir(config, stages)
    other, other_stages = _fashion_plan(tmp_path, tmp_path / "src",
                                        "PipelineConfig.labels_per_class = 4",
                                        "PipelineConfig.data_seed = 1")
    with pytest.raises(ValueError, match=r"(?s)other settings.*data_seed: 0 -> 1"):
        pc.prepare_run_dir(other, other_stages)
    digits_config, digits_stages = _plan(tmp_path)
    with pytest.raises(ValueError, match=r"(?s)other settings.*dataset: 'fashion_mnist' -> "
                                         r"'digits'"):
        pc.prepare_run_dir(digits_config, digits_stages)


@pytest.mark.slow
def test_tiny_fashion_run_reports_pseudo_label_accuracy(tmp_path, fashion_idx):
    source = tmp_path / "src"
    fashion_idx(str(source), train_per_class=30, test_per_class=3)
    run_dir = tmp_path / "run"
    params = [f"PipelineConfig.source_dir = '{source}'", "PipelineConfig.dev_per_class = 5",
              "PipelineConfig.labels_per_class = 5", "PipelineConfig.num_iterations = 1",
              "PipelineConfig.min_threshold = 0.0",
              "ExperimentConfig.iterations_per_loop = 10",
              "teacher/ExperimentConfig.train_steps = 20",
              "teacher/ExperimentConfig.save_checkpoints_steps = 20",
              "student/ExperimentConfig.train_steps = 10",
              "student/ExperimentConfig.save_checkpoints_steps = 10",
              "student/ExperimentConfig.unlabel_ratio = 1.0"]
    command = [sys.executable, "-m", "nst.pipeline", f"--gin_file={FASHION}",
               f"--run_dir={run_dir}"] + [f"--gin_param={p}" for p in params]
    subprocess.run(command, check=True, cwd=REPO, capture_output=True)
    results = json.loads((run_dir / "results.json").read_text())
    info = json.loads((run_dir / "data" / "dataset_info.json").read_text())
    assert {k: v["num_records"] for k, v in info["splits"].items()} == {
        "train": 50, "dev": 50, "extra": 200, "test": 30}
    teacher, student = results["stages"]
    assert teacher["metrics"]["test"]["num_images"] == 30
    accuracy = student["pseudo_labels"]["accuracy"]
    before, after = accuracy["before"], accuracy["after"]
    assert before["records"] == before["with_true_label"] == 200
    assert after["records"] == student["pseudo_labels"]["total_after"]
    # The accuracy is that of the predictions the stage wrote: recount them here.
    from nst.data import readers, schema
    rows = list(readers.read_examples(str(run_dir / "iteration_1" / "predictions" / "extra-*"),
                                      schema.PSEUDO_LABELED, 10).as_numpy_iterator())
    assert before["correct"] == sum(int(r["label"] == r["true_label"]) for r in rows)
    report = (run_dir / "report.md").read_text()
    expected = f"{100 * before['correct'] / 200:.2f}% of 200 images"
    assert "Pseudo-label accuracy against the withheld true labels: before filtering " \
        + expected in report
    assert "pseudo-label accuracy after (%)" in report
    stage_done = json.loads((run_dir / "iteration_1" / "student" / "stage_done.json")
                            .read_text())
    assert stage_done["seconds"] > 0
