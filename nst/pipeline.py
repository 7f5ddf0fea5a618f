"""The whole method in one command: `python -m nst.pipeline` (console: `nst-pipeline`).

    teacher (supervised) -> [predict -> filter -> student] x N  (-> fine-tune)

Iteration i's student learns from the model of iteration i-1 (the teacher for i = 1) and
becomes the next teacher. With `online_teacher` the predict and filter stages are skipped:
the student runs its teacher on the raw unlabeled images itself (the original SVHN
`run.sh`). With no arguments the run is the offline digits demo of
`nst/recipes/digits/`.

A run directory holds everything, under names that say what they are:

  pipeline.json                  the settings of the run (a rerun must match them)
  configs/<stage>.gin            every ExperimentConfig setting of each nst-main stage
  commands.sh                    the same run as separate commands (one per stage and shard)
  data/                          digits demo data (or the data dirs of the config)
  iteration_0/teacher/           model_dir of the teacher
  iteration_<i>/predictions/     pseudo-labelled records of the unlabeled set, info/
  iteration_<i>/filtered/        thresholds, stats/, data/train-0-*-of-* (balanced records)
  iteration_<i>/student/         model_dir of student i
  finetune/                      optional fixed-resolution fine-tuning (§5.9)
  robustness/<stage>/            with PipelineConfig.robustness: nst-eval-robustness
                                 results.json of the model of <stage> (teacher, student-i)
  report.md, results.json, plots/

Every stage writes `<stage dir>/stage_done.json` last; a rerun skips stages that have it
and continues the others where they stopped (training resumes from its checkpoints,
predict and filter from their finished shards), so killing the pipeline loses nothing and
the final numbers equal those of an uninterrupted run with the same seed.

Configuration is gin (`nst/pipeline_config.py` documents it): `PipelineConfig` for the loop
and scoped `ExperimentConfig` bindings for the stages: `teacher/`, `student/`,
`student/iteration_<i>/`, `finetune/`.
"""

import dataclasses
import gc
import os
import shlex
import time
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nst  # noqa: E402,F401  (pins the Keras backend)
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from nst import config as config_lib  # noqa: E402
from nst import cli_errors, fileio  # noqa: E402
from nst import pipeline_config as pc  # noqa: E402
from nst.pipeline_config import Stage  # noqa: E402
from nst.pseudo import filter as filter_lib  # noqa: E402
from nst.pseudo import label_accuracy  # noqa: E402


# --------------------------------------------------------------------------- commands


def stage_commands(stage: Stage, run_dir: str) -> List[str]:
    """Shell commands that run `stage` on its own (one per shard where shards exist)."""
    gin_file = os.path.join(run_dir, "configs", f"{stage.name}.gin")
    if stage.kind == "data":
        d = dict(stage.data_args)
        script = pc.GENERATED_DATASETS[d.pop("dataset", "digits")][1]
        return [shlex.join([script, f"--output_dir={stage.directory}"]
                           + [f"--{key}={value}" for key, value in sorted(d.items())])]
    if stage.kind == "train":
        return [shlex.join(["nst-main", f"--gin_file={gin_file}"])]
    if stage.kind == "robustness":
        return [shlex.join(["nst-eval-robustness", f"--gin_file={gin_file}"]
                           + robustness_flags(stage.robustness))]
    if stage.kind == "predict":
        return [shlex.join(["nst-main", f"--gin_file={gin_file}", f"--shard_id={shard}"])
                for shard in range(stage.settings.num_shards)]
    f = stage.filter_config
    if stage.kind == "pseudo_label":
        from nst.pseudo import beam_predict  # Beam is an extra: only for this stage
        return [shlex.join(["nst-pseudo-label-beam", f"--gin_file={gin_file}"]
                           + beam_predict.filter_flags(f)
                           + shlex.split(stage.beam_args))]
    # Every FilterConfig field, generated from the config: a new field cannot be left out.
    base = ["nst-filter-unlabel"] + f.to_flags()
    shards = range(f.num_shards)
    return ([shlex.join(base + ["--only_get_stats=1", f"--shard_id={s}"]) for s in shards]
            + [shlex.join(base + ["--only_get_stats=2"])]
            + [shlex.join(base + ["--only_get_stats=0", f"--shard_id={s}"]) for s in shards]
            + [shlex.join(base + ["--only_get_stats=3"])])


def robustness_flags(settings) -> List[str]:
    """`nst-eval-robustness` flags of an `eval_robustness.Settings` (its seed is the
    stage config's `seed`)."""
    return [f"--data_dir={settings.data_dir}", f"--split={settings.split}",
            f"--corruptions={','.join(settings.corruptions) or 'none'}",
            f"--severities={','.join(map(str, settings.severities))}",
            f"--fgsm_epsilons={','.join(f'{e:g}' for e in settings.fgsm_epsilons)}",
            f"--num_examples={settings.num_examples}", f"--output={settings.output}",
            f"--baseline_results={settings.baseline_results}"]


def write_stage_configs(stages: List[Stage], run_dir: str):
    directory = os.path.join(run_dir, "configs")
    tf.io.gfile.makedirs(directory)
    for stage in stages:
        if stage.settings is not None:
            header = f"# Stage {stage.name} of the run in {run_dir} (written by nst-pipeline).\n"
            fileio.atomic_write_text(os.path.join(directory, f"{stage.name}.gin"),
                                     header + config_lib.gin_bindings(stage.settings))


def write_commands(stages: List[Stage], run_dir: str) -> str:
    lines = ["#!/bin/sh", "# The run as separate commands: run each block after the one before;",
             "# the commands inside a block (one per shard) may run in parallel on",
             "# different machines. Every command resumes where it stopped.", "set -e"]
    for stage in stages:
        lines += ["", f"# --- {stage.name} ({stage.kind}) -> {stage.directory}"]
        lines += stage_commands(stage, run_dir)
    path = os.path.join(run_dir, "commands.sh")
    fileio.atomic_write_text(path, "\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- running


def _clear_keras():
    import keras
    keras.backend.clear_session()
    gc.collect()


def _run_train(stage: Stage, run_dir: str) -> Dict:
    from nst import main
    from nst import report
    # Exactly what `nst-main --gin_file=configs/<stage>.gin` runs.
    config = config_lib.build_config([os.path.join(run_dir, "configs", f"{stage.name}.gin")])
    main.run(config)
    _clear_keras()
    return {"metrics": report.metrics_from_eval_results(config.model_dir)}


def _run_predict(stage: Stage, run_dir: str) -> Dict:
    from nst import main
    config = config_lib.build_config([os.path.join(run_dir, "configs", f"{stage.name}.gin")])
    summaries = main.run(config)
    _clear_keras()
    return {"num_records": sum(s.get("num_records", 0) for s in summaries
                               if not s["skipped"])}


def _run_filter(stage: Stage) -> Dict:
    filter_lib.run_all(stage.filter_config)  # the four steps, resuming where they stopped
    return _pseudo_label_summary(stage)


def _run_pseudo_label(stage: Stage, run_dir: str) -> Dict:
    """predict + filter as one Beam job (`nst.pseudo.beam_predict`); a rerun skips the
    shards it predicted and the filter steps it finished, as the local stages do."""
    from nst.pseudo import beam_predict
    config = config_lib.finalize(config_lib.build_config(
        [os.path.join(run_dir, "configs", f"{stage.name}.gin")]))
    beam_predict.run_pseudo_label_beam(config, stage.filter_config,
                                       shlex.split(stage.beam_args))
    _clear_keras()
    return _pseudo_label_summary(stage)


def _pseudo_label_summary(stage: Stage) -> Dict:
    """The filter's numbers for the report (`report.pseudo_label_summary`, accuracy of
    the pseudo labels before and after filtering); ValueError if nothing was kept."""
    from nst import report
    f = stage.filter_config
    summary = report.pseudo_label_summary(f)
    if not summary["total_after"]:
        raise ValueError(
            f"{stage.name} kept no pseudo-labelled image: no prediction of the teacher "
            f"reached min_threshold={f.min_threshold} (see {f.output_dir}/threshold.json). "
            f"Lower PipelineConfig.min_threshold or train the teacher longer.")
    summary["accuracy"] = {
        "before": label_accuracy.pseudo_label_accuracy(f.input_pattern(),
                                                       f.num_label_classes),
        "after": label_accuracy.pseudo_label_accuracy(f.data_pattern(), f.num_label_classes)}
    return {"pseudo_labels": summary}


def _run_robustness(stage: Stage, run_dir: str) -> Dict:
    """What `nst-eval-robustness` with `robustness_flags` runs; its summary for the report
    (the whole measurement is in `stage.robustness.output`)."""
    from nst import eval_robustness
    config = config_lib.build_config([os.path.join(run_dir, "configs", f"{stage.name}.gin")])
    results = eval_robustness.run(stage.robustness, config)
    _clear_keras()
    return {"settings": stage.robustness_record(),
            "robustness": dict(eval_robustness.summary(results),
                               model_stage=stage.model_stage, output=stage.robustness.output)}


def _run_data(stage: Stage) -> Dict:
    d = dict(stage.data_args)
    if d.pop("dataset", "digits") == "fashion_mnist":
        from nst.data.sources.fashion_mnist import make_fashion_mnist_dataset as make
    else:
        from nst.data.sources.digits import make_digits_dataset as make
    info = make(stage.directory, **d)
    return {"splits": {k: v["num_records"] for k, v in info["splits"].items()}}


def run_stage(stage: Stage, run_dir: str) -> Dict:
    """Runs one stage; its stage_done.json records what it made and its `seconds` (the
    time of the run that finished it, plus `resumed` earlier attempts' time when known)."""
    start = time.time()
    if stage.kind == "data":
        summary = _run_data(stage)
    elif stage.kind == "train":
        summary = _run_train(stage, run_dir)
    elif stage.kind == "predict":
        summary = _run_predict(stage, run_dir)
    elif stage.kind == "pseudo_label":
        summary = _run_pseudo_label(stage, run_dir)
    elif stage.kind == "robustness":
        summary = _run_robustness(stage, run_dir)
    else:
        summary = _run_filter(stage)
    summary = dict(summary, stage=stage.name, kind=stage.kind, iteration=stage.iteration,
                   seconds=round(time.time() - start, 1))
    fileio.atomic_write_json(stage.done_path, summary)
    return summary


def results_for_report(pipeline: pc.PipelineConfig, stages: List[Stage],
                       summaries: Dict[str, Dict]) -> Dict:
    """The `nst.report` results dict of the stages done so far."""
    entries = []
    for stage in stages:
        if stage.kind != "train":
            continue
        done = summaries.get(stage.name, {})
        pseudo = (summaries.get(f"filter-{stage.iteration}")
                  or summaries.get(f"pseudo-label-{stage.iteration}") or {}).get(
                      "pseudo_labels")
        entries.append({"name": stage.name, "iteration": stage.iteration,
                        "model_name": stage.settings.model_name, "model_dir": stage.directory,
                        "metrics": done.get("metrics"),
                        "pseudo_labels": pseudo if stage.role == "student" else None})
    results = {"title": pipeline.title, "seed": pipeline.seed,
               "config": dataclasses.asdict(pipeline), "stages": entries}
    measured = [dict(summaries[s.name]["robustness"], name=s.model_stage,
                     iteration=s.iteration)
                for s in stages if s.kind == "robustness" and s.name in summaries]
    if measured:
        results["robustness"] = measured
    return results


def run(pipeline: pc.PipelineConfig, stages: List[Stage], emit_only: bool = False,
        until: Optional[str] = None) -> Dict:
    """Runs (or only writes the commands of) every unfinished stage, or those up to and
    including the stage named `until`; returns results."""
    from nst import report
    names = [stage.name for stage in stages]
    if until is not None and until not in names:
        raise ValueError(f"--until={until}: no such stage; the stages are {names}")
    run_dir = pipeline.run_dir
    write_stage_configs(stages, run_dir)
    commands = write_commands(stages, run_dir)
    if emit_only:
        logging.info("Wrote the stage configs to %s/configs and the commands to %s",
                     run_dir, commands)
        return {"commands": commands}
    summaries, start = {}, time.time()
    for number, stage in enumerate(stages, 1):
        if stage.is_done():
            summaries[stage.name] = fileio.read_json(stage.done_path)
            logging.info("[%d/%d] %s: done earlier, skipped", number, len(stages), stage.name)
            if stage.name == until:
                break
            continue
        logging.info("[%d/%d] %s (%s) -> %s   (%.0f s into this run)", number, len(stages),
                     stage.name, stage.kind, stage.directory, time.time() - start)
        summaries[stage.name] = run_stage(stage, run_dir)
        if stage.kind in ("train", "filter", "pseudo_label", "robustness"):
            report.write_report(run_dir, results_for_report(pipeline, stages, summaries))
        if stage.name == until:
            logging.info("Stopping after %s (--until)", until)
            break
    results = results_for_report(pipeline, stages, summaries)
    written = report.write_report(run_dir, results)
    logging.info("Done in %.0f s. %s", time.time() - start, report.verdict(results["stages"]))
    logging.info("Report: %s", written["report"])
    return results


# --------------------------------------------------------------------------- CLI

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_multi_string("gin_file", [], "Pipeline gin files (default: the digits "
                              "demo, digits/noisy_student.gin); paths, or names of the "
                              "recipes shipped in nst/recipes/ (svhn/pipeline_online.gin).")
    flags.DEFINE_multi_string("gin_param", [], "Extra gin bindings, e.g. "
                              "'PipelineConfig.num_iterations = 3'.")
    flags.DEFINE_string("run_dir", None, "Run directory (default: PipelineConfig.run_dir).")
    flags.DEFINE_integer("seed", None, "Seed of every stage (default: PipelineConfig.seed).")
    flags.DEFINE_bool("quick", False, "Smaller demo for tests (adds digits/quick.gin).")
    flags.DEFINE_bool("online_teacher", None, "Student runs its teacher itself; no "
                      "predict/filter stages (default: PipelineConfig.online_teacher).")
    flags.DEFINE_bool("overwrite", False, "Delete a run directory made with other settings "
                      "and start afresh.")
    flags.DEFINE_string("until", None, "Run the stages up to and including this one "
                        "(e.g. 'teacher') and stop; a later run without it goes on.")
    flags.DEFINE_bool("emit_commands", False, "Only write configs/ and commands.sh (one "
                      "command per stage and shard, for a cluster) and exit.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    overrides = {k: v for k, v in (("run_dir", FLAGS.run_dir), ("seed", FLAGS.seed),
                                   ("online_teacher", FLAGS.online_teacher)) if v is not None}
    gin_files = list(FLAGS.gin_file) or [pc.DEFAULT_GIN_FILE]
    if FLAGS.quick:
        gin_files.append(pc.QUICK_GIN_FILE)
    pipeline, stages = pc.plan(gin_files, FLAGS.gin_param, overrides)
    if FLAGS.until is not None and FLAGS.until not in [s.name for s in stages]:
        raise app.UsageError(f"--until={FLAGS.until}: no such stage; the stages are "
                             f"{[s.name for s in stages]}")
    pc.prepare_run_dir(pipeline, stages, overwrite=FLAGS.overwrite)
    run(pipeline, stages, emit_only=FLAGS.emit_commands, until=FLAGS.until)


def cli():
    define_flags()
    cli_errors.run(main)


if __name__ == "__main__":
    cli()
