"""tools/benchmark_ssl.py's table (the runs themselves are the demo, tested in
tests/test_pipeline.py)."""

import functools
import json
import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)  # its absl flags may be defined once per process
def _tool():
    spec = importlib.util.spec_from_file_location(
        "benchmark_ssl", os.path.join(REPO, "tools", "benchmark_ssl.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_is_mean_and_sample_std_over_seeds():
    rows = {"teacher": {"test": [0.90, 0.92, 0.94], "dev": [0.8, 0.8, 0.8]},
            "student-1": {"test": [0.95, None, 0.97], "dev": [None, None, None]}}
    text = _tool().table(rows, ["0", "1", "2"]).splitlines()
    assert text[0].startswith("| model | test top-1 (%)")
    assert text[2] == "| teacher | 92.00 ± 2.00 | 80.00 ± 0.00 | 90.00, 92.00, 94.00 |"
    assert text[3] == "| student-1 | 96.00 ± 1.41 | — | 95.00, —, 97.00 |"


def test_pseudo_and_seconds_tables():
    tool = _tool()
    pseudo = tool.pseudo_table({"student-1": {"before": [0.8, 0.82], "after": [0.81, None]}},
                               ["0", "1"]).splitlines()
    assert pseudo[2] == "| student-1 | 81.00 ± 1.41 | 81.00 (1 seed) | 81.00, — |"
    seconds = tool.seconds_table({"main recipe": [600.0, 1200.0]}, ["0", "1"]).splitlines()
    assert seconds[2] == "| main recipe | 15.0 | 10.0, 20.0 |"


def test_run_seconds_sums_the_stages(tmp_path):
    for stage, seconds in (("a", 1.5), ("b/c", 2.0)):
        (tmp_path / stage).mkdir(parents=True)
        (tmp_path / stage / "stage_done.json").write_text(f'{{"seconds": {seconds}}}')
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "stage_done.json").write_text("{}")  # an older run: no time recorded
    assert _tool().run_seconds(str(tmp_path)) == 3.5


def test_each_ablation_changes_one_thing_of_student_1(tmp_path):
    """Planned with the benchmark's bindings, every ablation's student 1 differs from the
    main recipe's student 1 only where it should; the teacher is the main run's."""
    import dataclasses

    from nst import pipeline_config as pc
    tool = _tool()
    recipe = tool.DATASETS["fashion_mnist"].recipe
    _, main_stages = pc.plan([recipe], [], {"run_dir": str(tmp_path / "main")},
                             check_data=False)
    main = {s.name: s for s in main_stages}
    base = dataclasses.asdict(main["student-1"].settings)
    expected = {
        "reference": {},
        "no_noise": {"augment_name": None, "remove_aug": True, "dropout_rate": 0.0,
                     "stochastic_depth_rate": 0.0},
        "no_randaugment": {"augment_name": None, "remove_aug": True},
        "no_model_noise": {"dropout_rate": 0.0, "stochastic_depth_rate": 0.0},
        "hard_labels": {"teacher_softmax_temp": -1.0},
        "no_filter": {},
        "same_size": {"width_coefficient": 0.25},
        "long_student": {"train_ratio": 4.0},  # finalize() scales the steps
    }
    assert set(expected) == set(tool.ABLATIONS)
    data_dir = str(tmp_path / "main" / "data")
    for name in tool.ABLATIONS:
        params = tool.ablation_params(name, data_dir, main["teacher"].directory, 0.25)
        config, stages = pc.plan([recipe], params, {"run_dir": str(tmp_path / name)},
                                 check_data=False)
        by_name = {s.name: s for s in stages}
        assert "teacher" not in by_name and "data" not in by_name  # the main run's
        assert by_name["predict-1"].settings.label_data_dir == data_dir + "/unlabeled"
        assert by_name["predict-1"].settings.predict_ckpt_path == main["teacher"].directory
        settings = dataclasses.asdict(by_name["student-1"].settings)
        changed = {k: v for k, v in settings.items()
                   if v != base[k] and k not in ("model_dir", "unlabel_data_dir")}
        assert settings["label_data_dir"] == data_dir == base["label_data_dir"]
        assert changed == expected[name], name
        f, main_f = by_name["filter-1"].filter_config, main["filter-1"].filter_config
        if name == "no_filter":
            assert (f.min_threshold, f.use_all) == (0.0, True)
        else:
            assert (f.min_threshold, f.use_all, f.num_image, f.seed) == (
                main_f.min_threshold, main_f.use_all, main_f.num_image, main_f.seed)


def test_all_labels_run_trains_student_1_as_a_supervised_teacher(tmp_path):
    """The all_labels run's teacher stage has student 1's settings (width, steps, images
    per step: 32 labeled + 6 x 32 pseudo-labelled = 224) with every image labeled, on data
    made at the unlabeled split's images per class."""
    import dataclasses

    from nst import pipeline_config as pc
    tool = _tool()
    recipe = tool.DATASETS["fashion_mnist"].recipe
    _, main_stages = pc.plan([recipe], [], {"run_dir": str(tmp_path / "main")},
                             check_data=False)
    student = dataclasses.asdict({s.name: s for s in main_stages}["student-1"].settings)
    params = ["PipelineConfig.labels_per_class = 5460"] + tool.all_labels_params(
        student, num_labeled=400)
    _, stages = pc.plan([recipe], params, {"run_dir": str(tmp_path / "all")},
                        check_data=False)
    by_name = {s.name: s for s in stages}
    assert by_name["data"].data_args["labels_per_class"] == 5460
    teacher = dataclasses.asdict(by_name["teacher"].settings)
    assert (teacher["width_coefficient"], teacher["train_steps"],
            teacher["train_batch_size"], teacher["unlabel_ratio"]) == (0.35, 2000, 224, 0.0)
    differ = {k for k in teacher if teacher[k] != student[k]}
    assert differ == {"model_dir", "unlabel_data_dir", "label_data_dir", "train_batch_size",
                      "unlabel_ratio", "teacher_softmax_temp", "base_learning_rate",
                      "num_train_images"}
    # The same learning rate at every step as student 1 (32 of 400 labeled images a step):
    # peak 0.128 * 32 / 256 = 0.016, warm-up and decay in epochs of 12.5 steps.
    from nst.train.schedule import NoisyStudentSchedule

    def schedule(s, num_train_images):
        return NoisyStudentSchedule(s["base_learning_rate"], s["train_batch_size"],
                                    num_train_images, s["train_steps"])
    ours, theirs = schedule(teacher, teacher["num_train_images"]), schedule(student, 400)
    assert teacher["num_train_images"] == 2800
    assert ours.peak_learning_rate == pytest.approx(0.016)
    steps = [0, 1, 30, 62, 63, 500, 1234, 1999]
    assert [float(ours(s)) for s in steps] == pytest.approx(
        [float(theirs(s)) for s in steps], rel=1e-6)


def test_all_labels_phase_uses_the_seeds_data_and_student_1(tmp_path, monkeypatch):
    """--all_labels: one `--until=teacher` run per ablation seed after its ablations, its
    labels per class the unlabeled split's, its model student 1's; archived, in the table."""
    tool = _tool()
    calls = []

    def fake_pipeline(run_dir, seed, params, log_path, extra_flags=()):
        calls.append((os.path.relpath(run_dir, tmp_path / "work"), tuple(extra_flags),
                      params))
        os.makedirs(os.path.join(run_dir, "data"), exist_ok=True)
        with open(os.path.join(run_dir, "pipeline.json"), "w") as f:
            json.dump({"stages": {"teacher": {"width_coefficient": 0.25}, "student-1": {
                "width_coefficient": 0.5, "train_steps": 30, "train_batch_size": 4,
                "unlabel_ratio": 3.0, "save_checkpoints_steps": 10,
                "label_data_sample_prob": 1.0, "base_learning_rate": 0.2,
                "num_train_images": None}}}, f)
        with open(os.path.join(run_dir, "data", "dataset_info.json"), "w") as f:
            json.dump({"splits": {"extra": {"per_class": [7, 9, 8]},
                                  "train": {"num_records": 6}}}, f)
        return {"stages": [{"name": "teacher", "iteration": 0, "model_dir": run_dir + "/t",
                            "metrics": {"test": {"top_1_accuracy": 0.9}}}]}

    monkeypatch.setattr(tool, "_pipeline", fake_pipeline)
    monkeypatch.setattr(tool, "_commit", lambda: "c")
    store = tmp_path / "archive"
    tool.FLAGS(["benchmark_ssl", "--dataset=digits", "--seeds=3", "--ablations=none",
                "--all_labels", f"--work_dir={tmp_path / 'work'}", f"--archive_dir={store}",
                f"--output={tmp_path / 'out.json'}"])
    try:
        tool.main([])
        assert [c[:2] for c in calls] == [("seed_3/main", ()),
                                          ("seed_3/all_labels", ("--until=teacher",))]
        params = calls[1][2]
        assert "PipelineConfig.labels_per_class = 7" in params  # the smallest class
        assert params[-6:] == ["teacher/ExperimentConfig.width_coefficient = 0.5",
                               "teacher/ExperimentConfig.train_steps = 30",
                               "teacher/ExperimentConfig.train_batch_size = 16",
                               "teacher/ExperimentConfig.save_checkpoints_steps = 10",
                               "teacher/ExperimentConfig.base_learning_rate = 0.05",
                               "teacher/ExperimentConfig.num_train_images = 24"]
        assert json.load(open(store / "seed_3_all_labels.json"))["results"]["stages"][0][
            "metrics"]["test"]["top_1_accuracy"] == 0.9
        rows = json.load(open(tmp_path / "out.json"))["rows"]
        assert rows[tool.ALL_LABELS]["test"] == [0.9]
    finally:
        tool.FLAGS.unparse_flags()


def test_peers_run_on_a_small_split():
    import numpy as np

    from nst import peers
    rng = np.random.RandomState(0)
    centers = rng.rand(3, 16).astype(np.float32)

    def sample(n):
        y = np.arange(n) % 3
        return (centers[y] + 0.05 * rng.randn(n, 16)).astype(np.float32), y

    data = {"train": sample(9), "dev": sample(30), "test": sample(30),
            "unlabeled": (sample(60)[0], np.full(60, -1))}
    fitted = peers.fit_peers(data, pca_components=5)
    assert set(fitted) == set(peers.PEERS)
    for name, result in fitted.items():
        assert result["test"] == 1.0, name  # well separated clusters
        param, grid = peers.GRIDS[name]
        assert result["param"][param] in grid
    try:
        peers.fit_peers(data, peers=["knn"])
    except ValueError as e:
        assert "unknown peers ['knn']" in str(e)
    else:
        raise AssertionError("an unknown peer must be refused")


def test_finished_runs_are_archived_and_taken_from_the_archive_on_another_machine(
        tmp_path, monkeypatch):
    """Runs a fake pipeline: every finished run is archived; with the work dir gone (a
    fresh machine) the tables come from the archive without running anything, and an
    ablation missing from the archive gets a teacher of its own (`--until=teacher`)."""
    import shutil

    tool = _tool()
    calls = []

    def fake_pipeline(run_dir, seed, params, log_path, extra_flags=()):
        calls.append((os.path.relpath(run_dir, tmp_path / "work"), tuple(extra_flags)))
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "pipeline.json"), "w") as f:
            json.dump({"stages": {"teacher": {"width_coefficient": 0.25}}}, f)
        with open(os.path.join(run_dir, "stage_done.json"), "w") as f:
            json.dump({"seconds": 60.0}, f)
        accuracy = 0.5 + 0.1 * seed + (0.01 if "PipelineConfig.student_noise = False"
                                       in params else 0.0)
        return {"stages": [
            {"name": "teacher", "iteration": 0, "model_dir": os.path.join(run_dir, "t"),
             "metrics": {"test": {"top_1_accuracy": 0.4}}},
            {"name": "student-1", "iteration": 1, "model_dir": os.path.join(run_dir, "s"),
             "metrics": {"test": {"top_1_accuracy": accuracy}}, "params": params}]}

    monkeypatch.setattr(tool, "_pipeline", fake_pipeline)
    work, store = tmp_path / "work", tmp_path / "archive"
    tool.FLAGS(["benchmark_ssl", "--dataset=digits", "--seeds=0,1", "--ablations=no_noise",
                "--peers=false", f"--work_dir={work}", f"--archive_dir={store}",
                f"--output={tmp_path / 'out.json'}"])
    try:
        tool.main([])
        assert calls == [("seed_0/main", ()), ("seed_1/main", ()), ("seed_0/no_noise", ()),
                         ("seed_1/no_noise", ())]
        tables = json.load(open(tmp_path / "out.json"))["tables"]
        assert sorted(os.listdir(store)) == [f"seed_{s}_{r}.json" for s in (0, 1)
                                             for r in ("main", "no_noise")]
        assert json.load(open(store / "seed_1_main.json"))["seconds"] == 60.0

        # A rerun on the same machine resumes the finished runs (nothing left to do)
        # and leaves their archive entries, date and commit included, as they were.
        stored = {n: (store / n).read_text() for n in os.listdir(store)}
        monkeypatch.setattr(tool, "_commit", lambda: "another-commit")
        newer = fake_pipeline

        def fake_pipeline_with_more_settings(*args, **kwargs):
            return dict(newer(*args, **kwargs), config={"a_new_setting": 1})

        monkeypatch.setattr(tool, "_pipeline", fake_pipeline_with_more_settings)
        tool.main([])
        assert {n: (store / n).read_text() for n in os.listdir(store)} == stored

        calls.clear()
        shutil.rmtree(work)
        tool.main([])
        assert calls == []
        assert json.load(open(tmp_path / "out.json"))["tables"] == tables

        os.remove(store / "seed_0_no_noise.json")
        assert not work.exists()  # nothing was run or written there
        tool.main([])
        assert calls == [("seed_0/teacher", ("--until=teacher",)), ("seed_0/no_noise", ())]
        params = json.load(open(store / "seed_0_no_noise.json"))["results"]["stages"][1][
            "params"]
        assert f"PipelineConfig.teacher_path = '{work}/seed_0/teacher/t'" in params
        assert json.load(open(tmp_path / "out.json"))["tables"] == tables
    finally:
        tool.FLAGS.unparse_flags()


def test_peers_of_an_archived_only_seed_use_a_rerun_data_stage(tmp_path, monkeypatch):
    """On a fresh machine whose main run of a seed is only in the archive, the peers are
    fitted on that seed's data made again (`--until=data` in seed_<s>/teacher), which the
    ablations' teacher then shares."""
    from nst import peers as peers_lib

    tool = _tool()
    calls, loaded = [], []
    store = tmp_path / "archive"
    store.mkdir()
    main = {"stages": [{"name": "teacher", "iteration": 0, "model_dir": "/elsewhere/t",
                        "metrics": {"test": {"top_1_accuracy": 0.4}}}]}
    with open(store / "seed_3_main.json", "w") as f:
        json.dump({"results": main, "seconds": 1.0}, f)

    def fake_pipeline(run_dir, seed, params, log_path, extra_flags=()):
        calls.append((os.path.relpath(run_dir, tmp_path / "work"), tuple(extra_flags)))
        os.makedirs(run_dir, exist_ok=True)
        return main

    def fake_load(data_dir, num_classes, crop=0):
        loaded.append(os.path.relpath(data_dir, tmp_path / "work"))
        return {}

    fitted = {name: {"test": 0.7, "dev": 0.6, "param": 1.0} for name in peers_lib.NAMES}
    monkeypatch.setattr(tool, "_pipeline", fake_pipeline)
    monkeypatch.setattr(peers_lib, "load_run_data", fake_load)
    monkeypatch.setattr(peers_lib, "fit_peers", lambda data, seed: fitted)
    tool.FLAGS(["benchmark_ssl", "--dataset=fashion_mnist", "--seeds=3", "--ablations=none",
                f"--work_dir={tmp_path / 'work'}", f"--archive_dir={store}"])
    try:
        tool.main([])
    finally:
        tool.FLAGS.unparse_flags()
    assert calls == [("seed_3/teacher", ("--until=data",))]
    assert loaded == ["seed_3/teacher/data"]
    assert json.load(open(store / "seed_3_peers.json"))["results"] == fitted


def test_robustness_of_the_models_on_disk_once_per_setting(tmp_path, monkeypatch):
    """--robustness measures the seed's teacher first, then every student on disk against
    it; a rerun with the same settings measures nothing; the table is mean ± std in %."""
    tool = _tool()
    work, store = tmp_path / "work", tmp_path / "archive"
    for run, stage in (("teacher", "iteration_0/teacher"), ("no_noise", "iteration_1/student"),
                       ("reference", "iteration_1/student")):
        (work / "seed_4" / run / stage).mkdir(parents=True)
        (work / "seed_4" / run / stage / "stage_done.json").write_text("{}")
    (work / "seed_4" / "same_size").mkdir()  # started, no student yet: not measured
    calls = []
    clean = {"teacher": 0.2, "no_noise": 0.25, "reference": 0.15}

    def fake_eval(command, stdout=None, stderr=None):
        args = dict(a[2:].split("=", 1) for a in command[3:])
        calls.append((os.path.relpath(args["gin_file"], work), args.get("baseline_results")))
        run = os.path.relpath(args["gin_file"], work).split(os.sep)[1]
        error = clean[run]
        results = {"dataset": {"num_examples": 100}, "clean": {"error": error},
                   "corruptions": {"fog": {"1": error + 0.1, "3": error + 0.3}},
                   "mean_corruption_error": error + 0.2, "fgsm_accuracy": {"2": 0.5},
                   "baseline_results": args.get("baseline_results")}
        if "baseline_results" in args:
            results.update(mce=(2 * error + 0.4) / 0.8, relative_mce=1.0)
        with open(args["output"], "w") as f:
            json.dump(results, f)
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(tool.subprocess, "run", fake_eval)
    monkeypatch.setattr(tool, "_commit", lambda: "c")
    tool.FLAGS(["benchmark_ssl", "--dataset=fashion_mnist", f"--work_dir={work}",
                f"--archive_dir={store}", "--robustness_num_examples=100",
                "--robustness_corruptions=fog"])
    try:
        (work / "seed_4" / "robustness").mkdir()
        measured = tool.measure_robustness("4", ["no_noise", "same_size", "reference"])
        teacher_json = str(work / "seed_4" / "robustness" / "teacher.json")
        assert calls == [("seed_4/teacher/configs/teacher.gin", None),
                         ("seed_4/no_noise/configs/student-1.gin", teacher_json),
                         ("seed_4/reference/configs/student-1.gin", teacher_json)]
        assert list(measured) == ["teacher", "no_noise student-1", "reference student-1"]
        assert measured["reference student-1"]["summary"]["error_by_severity"] == \
            pytest.approx({"1": 0.25, "3": 0.45})
        assert json.load(open(store / "seed_4_robustness.json"))["results"] == measured
        calls.clear()
        assert tool.measure_robustness("4", ["no_noise", "same_size", "reference"]) == measured
        assert calls == []
        # Another machine: the archive has the teacher's summary but not its whole JSON,
        # which a new student's mCE needs, so the teacher is measured again first.
        os.remove(teacher_json)
        (work / "seed_4" / "same_size" / "iteration_1" / "student").mkdir(parents=True)
        (work / "seed_4" / "same_size" / "iteration_1" / "student" / "stage_done.json"
         ).write_text("{}")
        clean["same_size"] = 0.18
        again = tool.measure_robustness("4", ["no_noise", "same_size", "reference"])
        assert calls == [("seed_4/teacher/configs/teacher.gin", None),
                         ("seed_4/same_size/configs/student-1.gin", teacher_json)]
        assert again["teacher"] == measured["teacher"]
        assert again["same_size student-1"]["summary"]["clean_error"] == pytest.approx(0.18)
        calls.clear()
        text = tool.robustness_table({"4": measured}, ["4"])
        assert "first 100 test images" in text
        row = next(line for line in text.splitlines() if line.startswith("| reference"))
        assert row == ("| reference student-1 | 15.00 (1 seed) | 35.00 (1 seed) | "
                       "87.50 (1 seed) | 100.00 (1 seed) | 50.00 (1 seed) | 4 |")
    finally:
        tool.FLAGS.unparse_flags()


def _student_1(test, correct):
    """A results.json stage of student 1 whose teacher got `correct` of 2 x 10 predictions
    right (class 0: `correct`, class 1: none) before filtering."""
    return {"name": "student-1", "iteration": 1, "model_dir": "/elsewhere/s",
            "metrics": {"test": {"top_1_accuracy": test}},
            "pseudo_labels": {"accuracy": {"before": {
                "records": 20, "correct": correct, "accuracy": correct / 20,
                "per_class": [{"records": 10, "correct": correct},
                              {"records": 10, "correct": 0}]}}}}


def test_one_teacher_per_seed_is_required():
    tool = _tool()
    same = {"a": {"results": {"stages": [_student_1(0.8, 7)]}},
            "b": {"results": {"stages": [_student_1(0.7, 7)]}},
            "no_true_labels": {"results": {"stages": [{"name": "student-1", "iteration": 1}]}}}
    tool.check_one_teacher(5, same)  # one teacher (the unlabelled-free run cannot tell)
    with pytest.raises(RuntimeError) as e:
        tool.check_one_teacher(5, dict(same, c={"results": {"stages": [_student_1(0.9, 8)]}}))
    message = str(e.value)
    assert "seed 5" in message
    assert "a, b: 7 of 20 right" in message and "c: 8 of 20 right" in message
    assert "seed_5_<ablation>.json" in message


def test_reference_is_the_main_student_when_the_ablations_share_its_teacher(
        tmp_path, monkeypatch):
    """An archive whose ablations learnt from the main run's teacher but lacks `reference`:
    the reference is the main run's student 1 (nothing is trained, the entry is archived),
    and the Δ table is the paired per-seed difference. Archived ablations from a teacher
    other than the one retrained here are refused after the first run that shows it."""
    tool = _tool()
    store = tmp_path / "archive"
    store.mkdir()
    teacher = {"name": "teacher", "iteration": 0, "model_dir": "/elsewhere/t",
               "metrics": {"test": {"top_1_accuracy": 0.6}}}
    for seed, main_test, no_noise_test in ((0, 0.80, 0.785), (1, 0.82, 0.79)):
        main = {"stages": [teacher, _student_1(main_test, 7),
                           {"name": "student-2", "iteration": 2,
                            "metrics": {"test": {"top_1_accuracy": 0.9}}}]}
        (store / f"seed_{seed}_main.json").write_text(json.dumps(
            {"results": main, "seconds": 60.0, "commit": "m", "finished": "then"}))
        (store / f"seed_{seed}_no_noise.json").write_text(json.dumps(
            {"results": {"stages": [_student_1(no_noise_test, 7)]}, "seconds": 30.0}))
    calls = []

    def fake_pipeline(run_dir, seed, params, log_path, extra_flags=()):
        calls.append(os.path.relpath(run_dir, tmp_path / "work"))
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "pipeline.json"), "w") as f:
            json.dump({"stages": {"teacher": {"width_coefficient": 0.25}}}, f)
        return {"stages": [teacher, _student_1(0.81, 9)]}  # another teacher's predictions

    monkeypatch.setattr(tool, "_pipeline", fake_pipeline)
    tool.FLAGS(["benchmark_ssl", "--dataset=digits", "--seeds=0,1",
                "--ablations=reference,no_noise", f"--work_dir={tmp_path / 'work'}",
                f"--archive_dir={store}", f"--output={tmp_path / 'out.json'}"])
    try:
        tool.main([])
        assert calls == []
        reference = json.load(open(store / "seed_1_reference.json"))
        assert reference["from"] == "main" and reference["commit"] == "m"
        assert [s["name"] for s in reference["results"]["stages"]] == ["student-1"]
        tables = json.load(open(tmp_path / "out.json"))["tables"]
        label = tool.ABLATIONS["no_noise"][0]
        assert f"| {label} | -2.25 ± 1.06 | -1.50, -3.00 |" in tables

        # seed 0's reference is gone and its no_noise came from another teacher than
        # the main run's: the reference is trained from a retrained teacher, whose
        # predictions differ from the archived no_noise's, and that is refused.
        os.remove(store / "seed_0_reference.json")
        (store / "seed_0_no_noise.json").write_text(json.dumps(
            {"results": {"stages": [_student_1(0.785, 8)]}, "seconds": 30.0}))
        with pytest.raises(RuntimeError, match="seed 0: the ablations did not all learn"):
            tool.main([])
        assert calls == ["seed_0/teacher", "seed_0/reference"]
        assert not (store / "seed_0_reference.json").exists()  # refused before archiving
    finally:
        tool.FLAGS.unparse_flags()
