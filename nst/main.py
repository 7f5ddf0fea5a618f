"""The training / evaluation binary: `python -m nst.main --mode=...` (console: `nst-main`).

Flags carry the original's names and defaults (spec §2.2); `--gin_file` and
`--gin_param` bind `ExperimentConfig` fields; explicit flags override gin
(`nst/config.py` documents the precedence). `--gin_file` takes a path or the name of a
shipped recipe, e.g. `--gin_file=svhn/student_online.gin` (`nst/recipes/`).

  --mode=train            train to the end of the schedule, resuming from model_dir
  --mode=eval             evaluate the latest checkpoint (EMA weights) on
                          --eval_splits; with --eval_timeout, keep evaluating
                          new checkpoints until none arrives for that long
  --mode=train_and_eval   alternate: train to each checkpoint, evaluate it
  --mode=predict          teacher predictions -> pseudo-labelled TFRecords
                          (nst/pseudo/predict.py; --reassign_label re-labels filtered data)
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nst  # noqa: E402,F401  (pins the Keras backend)
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from nst import cli_errors  # noqa: E402
from nst import config as config_lib  # noqa: E402
from nst import distribute  # noqa: E402

FLAGS = flags.FLAGS


def load_config() -> config_lib.ExperimentConfig:
    return config_lib.build_config(FLAGS.gin_file, FLAGS.gin_param,
                                   config_lib.explicit_flags(FLAGS))


def make_strategy(config):
    return distribute.resolve_strategy(tpu=config.tpu, use_tpu=config.use_tpu,
                                       gcp_project=config.gcp_project,
                                       tpu_zone=config.tpu_zone, master=config.master)


def run(config: config_lib.ExperimentConfig, strategy=None):
    """Runs one mode of the binary with a finalised config; returns eval results if any."""
    # Deferred: flag parsing should not build TF graphs.
    from nst.train import checkpoint as ckpt_lib
    from nst.train import loop

    if config.mode == "predict":
        from nst.pseudo import predict
        distribute.set_precision(config.use_bfloat16)
        strategy = strategy or make_strategy(config)
        logging.info("Strategy: %s", distribute.describe(strategy))
        return predict.run_prediction(config, strategy)
    if not config.model_dir:
        raise ValueError("--model_dir is required")
    distribute.set_precision(config.use_bfloat16)
    strategy = strategy or make_strategy(config)
    logging.info("Strategy: %s", distribute.describe(strategy))
    existed = tf.io.gfile.exists(config.model_dir)
    try:
        trainer = loop.Trainer(config, strategy)
        if config.mode in ("train", "train_and_eval"):
            # prepare() first: it checks the inputs and refuses a model_dir of another
            # architecture before this run's settings replace that run's FLAGS.json.
            trainer.prepare()
            if trainer.is_chief:
                config_lib.write_effective_config(config, config.model_dir)
        else:
            trainer.check_inputs()
    except BaseException:
        _remove_if_new(config.model_dir, existed)
        raise
    if config.mode == "train":
        trainer.train()
        return None
    if config.mode == "train_and_eval":
        results = {}

        def evaluate(step):
            results.update(trainer.evaluate_splits(step))
            logging.info("step %d: %s", step, loop.summarize(results))

        trainer.train(after_save=evaluate)
        if not results and trainer.is_chief:  # already trained: evaluate the final checkpoint once
            trainer.restore_latest()
            evaluate(trainer.step)
        return results
    # eval: the training run's FLAGS.json is left alone.
    ckpt_lib.check_model_dir(trainer.student, config.model_dir)
    results = {}
    paths = ([tf.train.latest_checkpoint(config.model_dir)] if config.eval_timeout is None
             else tf.train.checkpoints_iterator(config.model_dir, timeout=config.eval_timeout))
    for path in paths:
        if path is None:
            raise FileNotFoundError(f"No checkpoint to evaluate in {config.model_dir}")
        step = trainer.restore_latest(path)
        results = trainer.evaluate_splits(step)
        logging.info("%s (step %d): %s", path, step, loop.summarize(results))
        if step >= config.train_last_step_num:
            break
    if not results:
        logging.warning("No checkpoint arrived in %s within --eval_timeout=%s s",
                        config.model_dir, config.eval_timeout)
    return results


def _remove_if_new(model_dir: str, existed: bool):
    """A model_dir that this run created and whose start-up failed is deleted again, so that
    it does not look like a started run (issue 14, item 5)."""
    if not existed and tf.io.gfile.exists(model_dir):
        logging.info("Start-up failed: removing %s, which this run created", model_dir)
        tf.io.gfile.rmtree(model_dir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run(load_config())


def cli():
    config_lib.define_flags()
    cli_errors.run(main)


if __name__ == "__main__":
    cli()
