#!/usr/bin/env python
"""Does Noisy Student help? A recipe over several seeds, with classical peers and ablations.

For each seed (training and data split alike):
  * the main recipe (`nst-pipeline`): teacher, students 1..N, in <work_dir>/seed_<s>/main;
  * the classical peers of `nst.peers` on the same labeled / unlabeled / dev / test
    records (the main run's data directory);
  * ablations: student 1 trained from the same teacher, on the same unlabeled data, with
    one thing changed (ABLATIONS), each in <work_dir>/seed_<s>/<ablation>.
Every ablation run points at the main run's teacher and data, and with the same seed its
predict and filter stages give exactly the main run's pseudo labels (unless the ablation
changes the filter). Order of work: the main recipe on every seed first, then the peers,
then the ablations on `--ablation_seeds` (default: all seeds), so that a short compute
budget still yields the main table. Every run resumes when the command is rerun;
`--output` (JSON) and `--markdown` are rewritten after every finished run.

  python tools/benchmark_ssl.py --dataset=fashion_mnist --labels_per_class=40 \\
      --seeds=0,1,2 --work_dir=/var/tmp/nst_ssl_fashion
  python tools/benchmark_ssl.py --seeds=0,1,2       # the digits demo (no peers)

With `--all_labels`, each ablation seed also gets the run that tells whether the pseudo
labels or the training hold student 1 back: student 1's model, steps, images per step and learning-rate
curve trained as a supervised teacher on the true labels of as many images as student 1 gets
pseudo labels for (<work_dir>/seed_<s>/all_labels, `nst-pipeline --until=teacher`).

Wall time per run is the sum of its stages' own times (`seconds` in each
stage_done.json), so it is right for resumed runs too.

With `--robustness`, a last phase measures every model still on disk with
`nst-eval-robustness` on the test split (`--robustness_*` flags: corruptions, severities,
FGSM ε, first N images): per seed the teacher the students learnt from, then the main run's
students and each ablation's student-1, with the teacher as the mCE baseline; the table
gives mean ± std over the seeds that have each model. Each model is measured once per
setting (seed_<s>/robustness/, archived as seed_<s>_robustness.json).

With `--archive_dir` every finished run (and the peers of a seed) is also stored there as
one small JSON file (its results.json, wall time, date and commit); a run that the work
directory lacks but the archive holds is not run again. Committed, the archive carries a
benchmark over several machines: runs finished on one are reported on the next. An
ablation needs its seed's teacher and data on this machine: when the main run is only in
the archive, the recipe's data and teacher stages are run again (`nst-pipeline
--until=teacher`, deterministic for a given seed and machine) in <work_dir>/seed_<s>/teacher.
Deterministic per machine, not across CPUs: a teacher retrained on another CPU type can
come out points apart, so a seed's ablations must all come from one teacher. The teacher's
predictions before filtering (per class: how many, how many right) identify it; a seed whose
runs disagree on them is refused with an error naming the two groups. The `reference` row
is the main run's student 1 itself, not trained again, whenever the ablations learn from the
main run's teacher (the main run is on this machine, or the archived ablations share its
predictions). The tables add each ablation's paired difference from the reference of the
same seed (mean ± std over seeds, in points).
"""

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import app, flags

from nst import fileio

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Dataset:
    recipe: str             # gin file of the main recipe
    labels_per_class: int
    crop: int               # border the data set's images were padded with (peers)
    ablations: tuple        # default ablations
    peers: bool             # fit the classical peers by default


DATASETS = {
    "digits": Dataset("digits/noisy_student.gin", 10, 0, ("no_noise",), False),
    "fashion_mnist": Dataset("fashion_mnist/noisy_student.gin", 40, 2,
                             ("no_noise", "no_randaugment", "no_model_noise", "hard_labels",
                              "no_filter", "same_size"), True),
}

# name -> (row label, gin bindings). "{teacher_width}" is the main run's teacher width.
ABLATIONS = {
    # No change: student-1 of the main recipe from the ablations' own teacher, which is
    # retrained when the main run came from the archive; the other rows compare with it.
    "reference": ("student-1 of the main recipe (the ablations' reference)", []),
    "no_noise": ("student-1 without noise", ["PipelineConfig.student_noise = False"]),
    "no_randaugment": ("student-1 without input noise (no RandAugment, crop or flip; "
                       "dropout and stochastic depth kept)",
                       ["student/ExperimentConfig.augment_name = None",
                        "student/ExperimentConfig.remove_aug = True"]),
    "no_model_noise": ("student-1 without model noise (no dropout or stochastic depth; "
                       "RandAugment kept)",
                       ["student/ExperimentConfig.dropout_rate = 0.0",
                        "student/ExperimentConfig.stochastic_depth_rate = 0.0"]),
    "hard_labels": ("student-1 with hard pseudo labels",
                    ["student/ExperimentConfig.teacher_softmax_temp = -1.0"]),
    "no_filter": ("student-1 without filtering or balancing (every pseudo label once)",
                  ["PipelineConfig.min_threshold = 0.0", "PipelineConfig.use_all = True"]),
    "same_size": ("student-1 of the teacher's size",
                  ["student/iteration_1/ExperimentConfig.width_coefficient = "
                   "{teacher_width}"]),
    # Not one of the paper's ablations and not run by default (4x the cost): how much of
    # the gap to the paper is training length. train_ratio stretches the whole schedule,
    # decay interval included, so the LR follows the same curve over 4x the steps.
    "long_student": ("student-1 trained 4x longer (train_ratio 4)",
                     ["student/ExperimentConfig.train_ratio = 4.0"]),
}

ALL_LABELS = "student-1's model and schedule, every label true (all_labels)"

flags.DEFINE_enum("dataset", "digits", list(DATASETS), "Which recipe.")
flags.DEFINE_integer("labels_per_class", None, "Labeled images per class (default: the "
                     "recipe's: digits 10, fashion_mnist 40).")
flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
flags.DEFINE_string("ablation_seeds", None, "Seeds to run the ablations on (default: all "
                    "--seeds).")
flags.DEFINE_string("ablations", None, f"Comma-separated ablations of {list(ABLATIONS)}, "
                    f"'none', or unset for the data set's default.")
flags.DEFINE_bool("peers", None, "Fit the classical peers (default: fashion_mnist yes, "
                  "digits no).")
flags.DEFINE_string("work_dir", "/tmp/nst_ssl", "Where the runs go.")
flags.DEFINE_string("source_dir", None, "fashion_mnist: directory of the IDX files.")
flags.DEFINE_multi_string("gin_param", [], "Extra bindings for every run (e.g. for a "
                          "smaller smoke run).")
flags.DEFINE_bool("quick", False, "Use the --quick pipeline settings (tests).")
flags.DEFINE_string("output", "", "Write the tables and raw numbers to this JSON file.")
flags.DEFINE_string("archive_dir", "", "Copy every finished run's results (and wall time) "
                    "here, and take a run that --work_dir lacks from here instead of "
                    "running it again: a benchmark spread over machines resumes from a "
                    "committed archive.")
flags.DEFINE_string("markdown", "", "Write the tables to this Markdown file.")
flags.DEFINE_bool("all_labels", False, "After the ablations, per ablation seed: student 1's "
                  "model and schedule trained supervised on the true labels of as many "
                  "images as it gets pseudo labels for (run 'all_labels'): what student 1 "
                  "would reach if every pseudo label were right.")
flags.DEFINE_bool("robustness", False, "After the runs, measure every model still on "
                  "disk with nst-eval-robustness (the seed's teacher is the mCE baseline)")
flags.DEFINE_string("robustness_corruptions", "", "Corruptions (default: all)")
flags.DEFINE_string("robustness_severities", "1-5", "Severities")
flags.DEFINE_string("robustness_fgsm_epsilons", "1,2,4,8", "FGSM ε in pixels over 0..255")
flags.DEFINE_integer("robustness_num_examples", 0, "Only the first N test images "
                     "(0 = all)")


def _check_ablations(names: List[str]) -> List[str]:
    unknown = sorted(set(names) - set(ABLATIONS))
    if unknown:
        raise app.UsageError(f"--ablations: unknown {unknown}; known: {list(ABLATIONS)}")
    return names


def _archive_path(seed, name: str) -> str:
    return os.path.join(FLAGS.archive_dir, f"seed_{seed}_{name}.json")


def archived(seed, name: str) -> Optional[Dict]:
    """{"results", "seconds", ...} of a finished run in --archive_dir, or None."""
    if not FLAGS.archive_dir or not os.path.exists(_archive_path(seed, name)):
        return None
    with open(_archive_path(seed, name)) as f:
        return json.load(f)


def archive(seed, name: str, run_dir: str, results: Dict) -> Dict:
    """Stores a finished run's results and wall time in --archive_dir; returns the entry."""
    entry = {"results": results, "seconds": run_seconds(run_dir),
             "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "commit": _commit()}
    _store(seed, name, entry)
    return entry


def _store(seed, name: str, entry: Dict):
    """Writes one archive entry (atomically) when there is an --archive_dir."""
    if FLAGS.archive_dir:
        os.makedirs(FLAGS.archive_dir, exist_ok=True)
        fileio.atomic_write_text(_archive_path(seed, name), json.dumps(entry, indent=1))


def _commit() -> Optional[str]:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    return done.stdout.strip() if done.returncode == 0 else None


def _run(seed, name: str, params: List[str], extra_flags: Sequence[str] = (),
         check=None) -> Dict:
    """The archive entry of one run: taken from --archive_dir when --work_dir does not
    hold the run, otherwise run (or resumed) and archived; `check(results)` may refuse a
    finished run before it reaches the archive."""
    run_dir = os.path.join(FLAGS.work_dir, f"seed_{seed}", name)
    entry = archived(seed, name)
    if entry is not None and not os.path.exists(run_dir):
        return entry
    results = _pipeline(run_dir, int(seed), params,
                        os.path.join(FLAGS.work_dir, "logs", f"seed_{seed}_{name}.log"),
                        extra_flags)
    if check is not None:
        check(results)
    if entry is not None and _measured(entry["results"]) == _measured(results):
        return entry  # finished earlier: its date, commit and time stay those of that run
    return archive(seed, name, run_dir, results)


def _measured(results: Dict) -> Dict:
    """A run's results without its settings listing ("config", which grows when the
    pipeline gains a setting) and plot paths: what decides whether it is the same run."""
    return {k: v for k, v in results.items() if k not in ("config", "plots")}


def _pipeline(run_dir: str, seed: int, params: List[str], log_path: str,
              extra_flags: Sequence[str] = ()) -> Dict:
    """Runs (or resumes) one nst-pipeline run; returns its results.json."""
    command = [sys.executable, "-m", "nst.pipeline", f"--gin_file={_recipe()}",
               f"--run_dir={run_dir}", f"--seed={seed}", *extra_flags]
    command += [f"--gin_param={p}" for p in params]
    if FLAGS.quick:
        command.append("--quick")
    _logged_run(command, log_path, f"{run_dir}: nst-pipeline")
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)


def _logged_run(command: List[str], log_path: str, what: str):
    """Runs `command` with its output appended to `log_path`; RuntimeError naming `what`
    and the log if it fails."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{what} failed (exit {done.returncode}); see {log_path}")


def _recipe() -> str:
    return DATASETS[FLAGS.dataset].recipe


def _data_params(seed: int, labels_per_class: Optional[int] = None) -> List[str]:
    params = [f"PipelineConfig.data_seed = {seed}"]
    labels_per_class = labels_per_class or FLAGS.labels_per_class
    if labels_per_class is not None:
        params.append(f"PipelineConfig.labels_per_class = {labels_per_class}")
    if FLAGS.source_dir:
        params.append(f"PipelineConfig.source_dir = '{FLAGS.source_dir}'")
    return params


def ablation_params(name: str, data_dir: str, teacher_dir: str,
                    teacher_width: float) -> List[str]:
    """Gin bindings of one ablation run: one student from the main run's teacher, on the
    main run's data, with the ablation's one change."""
    return ["PipelineConfig.num_iterations = 1",
            f"PipelineConfig.teacher_path = '{teacher_dir}'",
            "PipelineConfig.dataset = 'records'",
            f"PipelineConfig.label_data_dir = '{data_dir}'",
            f"PipelineConfig.unlabel_data_dir = '{os.path.join(data_dir, 'unlabeled')}'",
            ] + [b.format(teacher_width=teacher_width) for b in ABLATIONS[name][1]]


def all_labels_params(student: Dict, num_labeled: int) -> List[str]:
    """Gin bindings that make the recipe's teacher stage train like student 1 (`student`:
    its settings in pipeline.json; `num_labeled`: its labeled images): its width, steps,
    images per step (labeled plus pseudo-labelled, all of them labeled here) and its
    learning-rate curve. With the data made at as many labels per class as the unlabeled
    split holds, this is student 1 with every pseudo label right.

    The schedule counts labeled images: peak LR = base * B_labeled / 256, and epochs of
    N / B_labeled steps set warm-up and decay. Base LR and N are scaled by the ratio of the
    batches so that both stay what student 1 had (otherwise the LR would peak 7x higher and
    hardly decay over 54,600 "labeled" images)."""
    labeled = student["train_batch_size"] * student["label_data_sample_prob"]
    images = round(student["train_batch_size"] * (1 + student["unlabel_ratio"]))
    scale = images / labeled
    return [f"teacher/ExperimentConfig.width_coefficient = {student['width_coefficient']}",
            f"teacher/ExperimentConfig.train_steps = {student['train_steps']}",
            f"teacher/ExperimentConfig.train_batch_size = {images}",
            f"teacher/ExperimentConfig.save_checkpoints_steps = "
            f"{student['save_checkpoints_steps']}",
            f"teacher/ExperimentConfig.base_learning_rate = "
            f"{student['base_learning_rate'] / scale!r}",
            f"teacher/ExperimentConfig.num_train_images = "
            f"{round((student['num_train_images'] or num_labeled) * scale)}"]


def run_all_labels(seed, base: Dict) -> Dict:
    """The archive entry of the seed's all_labels run (nst-pipeline --until=teacher)."""
    with open(os.path.join(base["run_dir"], "pipeline.json")) as f:
        student = json.load(f)["stages"]["student-1"]
    info = fileio.read_json(os.path.join(base["data_dir"], "dataset_info.json"))
    per_class = min(info["splits"]["extra"]["per_class"])
    return _run(seed, "all_labels", _data_params(int(seed), per_class)
                + all_labels_params(student, info["splits"]["train"]["num_records"])
                + FLAGS.gin_param, ["--until=teacher"])


def run_seconds(run_dir: str) -> float:
    """Sum of the stages' own times (stage_done.json 'seconds'), resumes included."""
    total = 0.0
    for root, _, names in os.walk(run_dir):
        if "stage_done.json" in names:
            with open(os.path.join(root, "stage_done.json")) as f:
                total += float(json.load(f).get("seconds", 0.0))
    return total


def _rerun_dir(seed, until: str) -> Tuple[str, Optional[Dict]]:
    """The main run's directory of a seed and None, or, when the main run came from the
    archive (another machine), <work_dir>/seed_<s>/teacher with the main recipe's stages up
    to `until` run again there (the data stage is deterministic given the seed) and their
    results."""
    main_dir = os.path.join(FLAGS.work_dir, f"seed_{seed}", "main")
    if os.path.exists(main_dir):
        return main_dir, None
    rerun_dir = os.path.join(FLAGS.work_dir, f"seed_{seed}", "teacher")
    return rerun_dir, _pipeline(
        rerun_dir, int(seed), _data_params(int(seed)) + FLAGS.gin_param,
        os.path.join(FLAGS.work_dir, "logs", f"seed_{seed}_teacher.log"), [f"--until={until}"])


def _ablation_base(seed, main_results: Dict) -> Dict:
    """Teacher and data for the ablations of a seed: the main run's, or, when the main run
    came from the archive, a retrained teacher in <work_dir>/seed_<s>/teacher (its accuracy
    is logged beside the archived one)."""
    main_dir, results = _rerun_dir(seed, "teacher")
    if results is None:
        results = main_results
    else:
        print(f"seed {seed}: teacher retrained for the ablations: test top-1 "
              f"{_top1(_stage(results, 0), 'test')} (archived main run: "
              f"{_top1(_stage(main_results, 0), 'test')})", flush=True)
    with open(os.path.join(main_dir, "pipeline.json")) as f:
        teacher_width = json.load(f)["stages"]["teacher"]["width_coefficient"]
    return {"run_dir": main_dir, "data_dir": os.path.join(main_dir, "data"),
            "teacher_dir": _stage(results, 0)["model_dir"], "teacher_width": teacher_width}


def _teacher_is_main(seed, main_results: Dict, done: Dict[str, Dict]) -> bool:
    """Whether the seed's ablations learn from the main run's own teacher: the main run is
    on this machine, or the archived ablations learnt from its teacher's predictions."""
    if os.path.exists(os.path.join(FLAGS.work_dir, f"seed_{seed}", "main")):
        return True
    main = teacher_predictions(main_results)
    return main is not None and any(teacher_predictions(e["results"]) == main
                                    for e in done.values())


def _top1(stage: Dict, split: str) -> Optional[float]:
    return ((stage.get("metrics") or {}).get(split) or {}).get("top_1_accuracy")


def _stage(results: Dict, iteration: int) -> Dict:
    return next(s for s in results["stages"] if s["iteration"] == iteration)


def teacher_predictions(results: Dict) -> Optional[Tuple[Tuple[int, int], ...]]:
    """What a run's student 1 learnt from, as its results record it: per predicted class,
    the teacher's predictions on the unlabeled split and how many were right, before
    filtering. Runs with equal values learnt from the same teacher; None when the split
    has no true labels to count against."""
    stage = next((s for s in results.get("stages", []) if s.get("iteration") == 1), None)
    before = _label_accuracy(stage).get("before")
    if not before or not before.get("per_class"):
        return None
    return tuple((c["records"], c["correct"]) for c in before["per_class"])


def check_one_teacher(seed, entries: Dict[str, Dict]):
    """Refuses a seed's ablations that learnt from different teachers: their differences
    would then mix the ablation with the teacher. A teacher retrained on another machine
    (another CPU, other float rounding) can come out points apart from the archived one,
    so an archive completed there must not be mixed with what was run here."""
    groups: Dict[Tuple, List[str]] = {}
    for name, entry in entries.items():
        key = teacher_predictions(entry["results"])
        if key is not None:
            groups.setdefault(key, []).append(name)
    if len(groups) > 1:
        found = "; ".join(f"{', '.join(names)}: {sum(c for _, c in key)} of "
                          f"{sum(r for r, _ in key)} right" for key, names in groups.items())
        raise RuntimeError(
            f"seed {seed}: the ablations did not all learn from the same teacher's pseudo "
            f"labels (before filtering, {found}); a retrained teacher came out different "
            f"from the one the archived runs used. Rerun all of seed {seed}'s ablations "
            f"into another --archive_dir, or remove the archive entries "
            f"seed_{seed}_<ablation>.json of one group")


def reference_from_main(main_entry: Dict) -> Dict:
    """The `reference` row when the ablations' teacher is the main run's: the main run's
    student 1 is that run already (same teacher, pseudo labels, settings and seed), so it
    is taken instead of training it a second time."""
    results = dict(main_entry["results"])
    results["stages"] = [s for s in results["stages"] if s.get("iteration") == 1]
    return {"results": results, "seconds": None, "from": "main",
            "finished": main_entry.get("finished"), "commit": main_entry.get("commit")}


def _label_accuracy(stage: Optional[Dict]) -> Dict:
    """A stage's pseudo-label accuracy report ({} when the unlabeled split has no true
    labels, or for a stage without pseudo labels)."""
    return ((stage or {}).get("pseudo_labels") or {}).get("accuracy") or {}


def _pseudo_accuracy(stage: Dict) -> Dict[str, Optional[float]]:
    accuracy = _label_accuracy(stage)
    return {when: (accuracy.get(when) or {}).get("accuracy") for when in ("before", "after")}


# ----------------------------------------------------------------------------- robustness


def _robustness_flags() -> List[str]:
    return [f"--corruptions={FLAGS.robustness_corruptions}",
            f"--severities={FLAGS.robustness_severities}",
            f"--fgsm_epsilons={FLAGS.robustness_fgsm_epsilons}",
            f"--num_examples={FLAGS.robustness_num_examples}"]


def robustness_models(seed, ablations: List[str]) -> List[Tuple[str, str, str]]:
    """(label, run dir, stage) of each model of a seed still on disk: the teacher the
    students learnt from first (the main run's, or the ablations' retrained one), then
    the main run's students and each ablation's student-1."""
    seed_dir = os.path.join(FLAGS.work_dir, f"seed_{seed}")
    main_dir = os.path.join(seed_dir, "main")
    teacher_run = main_dir if os.path.exists(main_dir) else os.path.join(seed_dir, "teacher")
    models = []
    if os.path.exists(os.path.join(teacher_run, "iteration_0", "teacher",
                                   "stage_done.json")):
        models.append(("teacher", teacher_run, "teacher"))
    for run, stages in [("main", ["student-1", "student-2"])] + [
            (name, ["student-1"]) for name in ablations]:
        for stage in stages:
            iteration = stage.split("-")[1]
            if os.path.exists(os.path.join(seed_dir, run, f"iteration_{iteration}",
                                           "student", "stage_done.json")):
                models.append((f"{run} {stage}", os.path.join(seed_dir, run), stage))
    return models


def measure_robustness(seed, ablations: List[str]) -> Dict[str, Dict]:
    """{label: nst-eval-robustness summary} of the seed's models on disk, each measured
    once per setting (kept in <work_dir>/seed_<s>/robustness/ and the archive)."""
    from nst import eval_robustness
    models = robustness_models(seed, ablations)
    stored = (archived(seed, "robustness") or {}).get("results", {})
    if not models or models[0][0] != "teacher":
        return stored  # no teacher here: only what the archive holds
    out_dir = os.path.join(FLAGS.work_dir, f"seed_{seed}", "robustness")
    settings = _robustness_flags()
    teacher_json = os.path.join(out_dir, "teacher.json")
    data_dir = os.path.join(models[0][1], "data")
    measured = dict(stored)
    todo = [m for m in models if measured.get(m[0], {}).get("settings") != settings]
    if todo and todo[0][0] != "teacher" and not os.path.exists(teacher_json):
        # The archive has the teacher's summary, but the students' mCE needs its whole
        # JSON, which stays on the machine that measured it: measure the teacher again.
        todo.insert(0, models[0])
    for label, run_dir, stage in todo:
        output = os.path.join(out_dir, label.replace(" ", "_") + ".json")
        command = [sys.executable, "-m", "nst.eval_robustness",
                   f"--gin_file={os.path.join(run_dir, 'configs', stage + '.gin')}",
                   f"--data_dir={data_dir}", "--split=test", f"--output={output}",
                   *settings] + ([] if label == "teacher" else
                                 [f"--baseline_results={teacher_json}"])
        _logged_run(command, os.path.join(FLAGS.work_dir, "logs",
                                          f"seed_{seed}_robustness.log"),
                    f"{label} of seed {seed}: nst-eval-robustness")
        with open(output) as f:
            summary = eval_robustness.summary(json.load(f))
        before = measured.get(label, {})
        if before.get("settings") == settings and before.get("summary") != summary:
            print(f"seed {seed}: the {label} measured here differs from the archived one "
                  f"(clean error {before['summary']['clean_error']:.4f} -> "
                  f"{summary['clean_error']:.4f}); the new one is kept", flush=True)
        measured[label] = {"settings": settings, "summary": summary}
        _store(seed, "robustness", {"results": measured, "commit": _commit(), "finished":
                                    time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        print(f"seed {seed}: robustness of {label} measured", flush=True)
    return measured


def robustness_table(measured: Dict[str, Dict[str, Dict]], seeds) -> str:
    """Mean ± std over the seeds that have each model: errors and FGSM accuracy in %."""
    labels = list(dict.fromkeys(label for per in measured.values() for label in per))
    if not labels:
        return ""
    epsilons = sorted({e for per in measured.values() for m in per.values()
                       for e in m["summary"]["fgsm_accuracy"]}, key=float)
    lines = ["| model | clean error (%) | mean corruption error (%) | mCE vs teacher (%) "
             "| relative mCE (%) |" + "".join(f" FGSM ε={e} acc. (%) |" for e in epsilons)
             + " seeds |", "|---|---|---|---|---|" + "---|" * len(epsilons) + "---|"]
    for label in labels:
        rows = [measured[s][label]["summary"] for s in seeds if label in measured.get(s, {})]
        cells = [_mean_std([r["clean_error"] for r in rows]),
                 _mean_std([r["mean_corruption_error"] for r in rows]),
                 "100 (ref)" if label == "teacher" else _mean_std([r["mce"] for r in rows]),
                 "100 (ref)" if label == "teacher" else
                 _mean_std([r["relative_mce"] for r in rows])]
        cells += [_mean_std([r["fgsm_accuracy"].get(e) for r in rows]) for e in epsilons]
        used = ", ".join(s for s in seeds if label in measured.get(s, {}))
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {used} |")
    n = {m["summary"]["num_examples"] for per in measured.values() for m in per.values()}
    return (f"Robustness on the first {', '.join(map(str, sorted(n)))} test images:\n\n"
            + "\n".join(lines))


class Benchmark:
    """Collects rows {name: {"test": [per seed], "dev": [per seed]}} as runs finish."""

    def __init__(self, seeds: List[str]):
        self.seeds = seeds
        self.rows: Dict[str, Dict[str, List[Optional[float]]]] = {}
        self.pseudo: Dict[str, Dict[str, List[Optional[float]]]] = {}
        self.seconds: Dict[str, List[Optional[float]]] = {}
        self.peer_params: Dict[str, List] = {}
        self.robustness: Dict[str, Dict[str, Dict]] = {}  # seed -> label -> entry
        self.ablation_rows: List[str] = []

    def put(self, row: str, seed: str, test, dev):
        entry = self.rows.setdefault(row, {"test": [None] * len(self.seeds),
                                           "dev": [None] * len(self.seeds)})
        i = self.seeds.index(seed)
        entry["test"][i], entry["dev"][i] = test, dev

    def put_run(self, results: Dict, seed: str, only_iteration: Optional[int] = None,
                label: Optional[str] = None):
        for stage in results["stages"]:
            if only_iteration is not None and stage["iteration"] != only_iteration:
                continue
            row = label or stage["name"]
            self.put(row, seed, _top1(stage, "test"), _top1(stage, "dev"))
            if stage["iteration"] >= 1:
                pseudo = self.pseudo.setdefault(
                    row, {w: [None] * len(self.seeds) for w in ("before", "after")})
                for when, value in _pseudo_accuracy(stage).items():
                    pseudo[when][self.seeds.index(seed)] = value

    def put_seconds(self, name: str, seed: str, seconds: float):
        self.seconds.setdefault(name, [None] * len(self.seeds))[
            self.seeds.index(seed)] = seconds

    def tables(self) -> str:
        return "\n\n".join(t for t in [table(self.rows, self.seeds),
                                       delta_table(self.rows, self.seeds,
                                                   ABLATIONS["reference"][0],
                                                   self.ablation_rows),
                                       pseudo_table(self.pseudo, self.seeds),
                                       seconds_table(self.seconds, self.seeds),
                                       robustness_table(self.robustness, self.seeds)] if t)

    def save(self):
        if FLAGS.output:
            fileio.atomic_write_text(FLAGS.output, json.dumps(
                {"dataset": FLAGS.dataset, "seeds": self.seeds, "rows": self.rows,
                 "pseudo_label_accuracy": self.pseudo, "seconds": self.seconds,
                 "peer_params": self.peer_params, "robustness": self.robustness,
                 "tables": self.tables()}, indent=2))
        if FLAGS.markdown:
            fileio.atomic_write_text(FLAGS.markdown, self.tables() + "\n")


def _mean_std(values, signed: bool = False) -> str:
    values = np.array([v for v in values if v is not None], np.float64) * 100
    sign = "+" if signed else ""
    if not len(values):
        return "—"
    if len(values) == 1:  # no spread to report from one seed
        return f"{values[0]:{sign}.2f} (1 seed)"
    return f"{values.mean():{sign}.2f} ± {values.std(ddof=1):.2f}"


def _per_seed(values, scale=100.0, digits=2, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return ", ".join("—" if v is None else f"{scale * v:{sign}.{digits}f}" for v in values)


def table(rows, seeds) -> str:
    lines = [f"| model | test top-1 (%) | dev top-1 (%) | test top-1 per seed ({', '.join(seeds)}) |",
             "|---|---|---|---|"]
    for name, splits in rows.items():
        lines.append(f"| {name} | {_mean_std(splits['test'])} | {_mean_std(splits['dev'])} | "
                     f"{_per_seed(splits['test'])} |")
    return "\n".join(lines)


def delta_table(rows, seeds, reference: str, labels: Sequence[str]) -> str:
    """Each ablation against the reference of the same seed, in points: mean ± sample std
    of the per-seed differences. The ablations share the reference's teacher, data and
    seed, so the paired difference is what each one measures."""
    if reference not in rows:
        return ""
    lines = [f"| ablation of student 1 | Δ test top-1 vs reference (pts) | per seed "
             f"({', '.join(seeds)}) |", "|---|---|---|"]
    for label in labels:
        if label == reference or label not in rows:
            continue
        deltas = [None if a is None or r is None else a - r
                  for a, r in zip(rows[label]["test"], rows[reference]["test"])]
        lines.append(f"| {label} | {_mean_std(deltas, signed=True)} | "
                     f"{_per_seed(deltas, signed=True)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def pseudo_table(pseudo, seeds) -> str:
    lines = [f"| pseudo labels of | accuracy before filtering (%) | after filtering (%) "
             f"| after, per seed ({', '.join(seeds)}) |", "|---|---|---|---|"]
    for name, values in pseudo.items():
        lines.append(f"| {name} | {_mean_std(values['before'])} | "
                     f"{_mean_std(values['after'])} | {_per_seed(values['after'])} |")
    return "\n".join(lines)


def seconds_table(seconds, seeds) -> str:
    lines = [f"| run | wall time (min), mean | per seed ({', '.join(seeds)}) |",
             "|---|---|---|"]
    for name, values in seconds.items():
        known = [v for v in values if v is not None]
        mean = f"{np.mean(known) / 60:.1f}" if known else "—"
        lines.append(f"| {name} | {mean} | {_per_seed(values, 1 / 60, 1)} |")
    return "\n".join(lines)


def main(argv):
    del argv
    dataset = DATASETS[FLAGS.dataset]
    seeds = [s.strip() for s in FLAGS.seeds.split(",") if s.strip()]
    ablation_seeds = seeds if FLAGS.ablation_seeds is None else [
        s.strip() for s in FLAGS.ablation_seeds.split(",") if s.strip()]
    if set(ablation_seeds) - set(seeds):
        raise app.UsageError("--ablation_seeds must be a subset of --seeds")
    if FLAGS.ablations is None:
        ablations = list(dataset.ablations)
    elif FLAGS.ablations.strip() in ("", "none"):
        ablations = []
    else:
        ablations = _check_ablations([a.strip() for a in FLAGS.ablations.split(",")
                                      if a.strip()])
    peers = dataset.peers if FLAGS.peers is None else FLAGS.peers
    bench = Benchmark(seeds)
    main_results = {}
    start = time.time()

    for seed in seeds:  # 1. the main recipe on every seed
        entry = _run(seed, "main", _data_params(int(seed)) + FLAGS.gin_param)
        main_results[seed] = entry["results"]
        bench.put_run(entry["results"], seed)
        bench.put_seconds("main recipe", seed, entry["seconds"])
        bench.save()
        print(f"[{time.time() - start:.0f} s] seed {seed}: main recipe done", flush=True)

    if peers:  # 2. classical peers on each seed's split
        from nst import peers as peers_lib
        for seed in seeds:
            path = os.path.join(FLAGS.work_dir, f"seed_{seed}", "peers.json")
            stored = archived(seed, "peers")
            if os.path.exists(path):
                with open(path) as f:
                    fitted = json.load(f)
            elif stored is not None:
                fitted = stored["results"]
            else:
                data = peers_lib.load_run_data(
                    os.path.join(_rerun_dir(seed, "data")[0], "data"),
                    num_classes=10, crop=dataset.crop)
                fitted = peers_lib.fit_peers(data, seed=int(seed))
                fileio.atomic_write_text(path, json.dumps(fitted, indent=2))
            if FLAGS.archive_dir and stored is None:
                archive(seed, "peers", "", fitted)
            for name, result in fitted.items():
                bench.put(peers_lib.NAMES[name], seed, result["test"], result["dev"])
                bench.peer_params.setdefault(name, []).append(result["param"])
            bench.save()
            print(f"[{time.time() - start:.0f} s] seed {seed}: peers done", flush=True)

    derived_reference = set()  # seeds whose reference is the main run's student 1
    for seed in ablation_seeds:  # 3. ablations of student 1
        base = None  # the run whose teacher and data the ablations share
        done = {n: e for n in ablations if n != "reference"
                for e in [archived(seed, n)] if e is not None}
        check_one_teacher(seed, done)
        for name in ablations:
            label = ABLATIONS[name][0]
            entry = archived(seed, name)
            if entry is None and name == "reference" and _teacher_is_main(
                    seed, main_results[seed], done):
                entry = reference_from_main({"results": main_results[seed],
                                             **(archived(seed, "main") or {})})
                _store(seed, name, entry)
            elif entry is None or os.path.exists(
                    os.path.join(FLAGS.work_dir, f"seed_{seed}", name)):
                base = base or _ablation_base(seed, main_results[seed])
                entry = _run(seed, name, _data_params(int(seed)) + ablation_params(
                    name, base["data_dir"], base["teacher_dir"], base["teacher_width"])
                    + FLAGS.gin_param, check=lambda results, name=name: check_one_teacher(
                        seed, dict(done, **{name: {"results": results}})))
            done[name] = entry
            check_one_teacher(seed, done)  # archived entries; a new run was checked before
            if entry.get("from") == "main":
                derived_reference.add(seed)
            if label not in bench.ablation_rows:
                bench.ablation_rows.append(label)
            bench.put_run(entry["results"], seed, only_iteration=1, label=label)
            bench.put_seconds(label, seed, entry["seconds"])
            bench.save()
            print(f"[{time.time() - start:.0f} s] seed {seed}: {name} done", flush=True)
        if FLAGS.all_labels:
            entry = archived(seed, "all_labels")
            if entry is None or os.path.exists(
                    os.path.join(FLAGS.work_dir, f"seed_{seed}", "all_labels")):
                base = base or _ablation_base(seed, main_results[seed])
                entry = run_all_labels(seed, base)
            bench.put_run(entry["results"], seed, only_iteration=0, label=ALL_LABELS)
            bench.put_seconds(ALL_LABELS, seed, entry["seconds"])
            bench.save()
            print(f"[{time.time() - start:.0f} s] seed {seed}: all_labels done", flush=True)

    if FLAGS.robustness:  # 4. robustness of the models on disk
        for seed in seeds:
            measured = measure_robustness(seed, ablations if seed in ablation_seeds else [])
            if seed in derived_reference and "main student-1" in measured:
                measured.setdefault("reference student-1", measured["main student-1"])
            bench.robustness[seed] = measured
            bench.save()
            print(f"[{time.time() - start:.0f} s] seed {seed}: robustness done", flush=True)

    print(f"{FLAGS.dataset} over seeds {', '.join(seeds)} (mean ± sample std); ablations "
          f"on seeds {', '.join(ablation_seeds) if ablations else 'none'}")
    print(bench.tables())


if __name__ == "__main__":
    app.run(main)
