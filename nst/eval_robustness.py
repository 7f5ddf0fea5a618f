"""Robustness of a checkpoint: `python -m nst.eval_robustness` (console: `nst-eval-robustness`).

Evaluates one model (nst model dir or original TF1 checkpoint, EMA weights,
loaded as `--mode=predict` loads its model: `nst.pseudo.predict.load_teacher`)
on one split, clean, under corruptions (`nst.robustness.corruptions`) at
several severities and under a one-step FGSM attack, and writes one JSON file
(`--output`; format in docs/robustness.md, "Evaluation"). With
`--baseline_results` (this tool's JSON for another model, e.g. the teacher, on
the same data) it adds CE, mCE and their relative forms
(`nst.robustness.metrics`).

Inputs: labeled TFRecords (`--data_dir` + `--split`, the eval input pipeline)
or a prepared TFDS set (`--tfds_name=imagenet_a`,
`imagenet2012_corrupted/<corruption>_<severity>`, `--tfds_data_dir`,
`--split`, default "validation"/"test"). For `imagenet_a`, a 1000-class
model's logits are restricted to ImageNet-A's 200 classes before the argmax
(`nst.robustness.imagenet_a`).

Settings of the model (`--model_name`, `--num_label_classes`,
`--input_image_size`, `--eval_batch_size`, `--use_tpu`, `--use_bfloat16`,
`--gin_file`, ...) are nst-main's (`nst.config`); an nst model dir brings its
architecture and resolution in model_config.json. Every setting is checked
before the model is built or an image read.
"""

import dataclasses
import os
import time
from typing import Dict, Optional, Sequence, Tuple

from absl import app, flags, logging

import nst  # noqa: F401  (selects the Keras backend first)
import tensorflow as tf  # noqa: E402

from nst import config as config_lib  # noqa: E402
from nst import cli_errors, distribute, fileio  # noqa: E402
from nst.robustness import metrics  # noqa: E402

FLAGS = flags.FLAGS
FORMAT_VERSION = 1
IMAGENET_A = "imagenet_a"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The robustness run's own settings (the model's are an `ExperimentConfig`)."""
    data_dir: str = ""
    split: str = ""
    tfds_name: str = ""
    tfds_data_dir: Optional[str] = None
    corruptions: Tuple[str, ...] = ()
    severities: Tuple[int, ...] = (1, 2, 3, 4, 5)
    fgsm_epsilons: Tuple[float, ...] = ()
    baseline_results: str = ""
    output: str = ""
    seed: int = 0
    num_examples: int = 0  # the first N images of the split; 0 = all


# ----------------------------------------------------------------------------- parsing


def parse_severities(text: str, flag: str = "--severities") -> Tuple[int, ...]:
    """"1-5" or "1,3,5" (or a mix, "1-2,5") -> sorted unique ints; ValueError naming `flag`."""
    values = set()
    try:
        for part in [p.strip() for p in text.split(",") if p.strip()]:
            if "-" in part:
                low, high = (int(v) for v in part.split("-", 1))
                values.update(range(low, high + 1))
            else:
                values.add(int(part))
    except ValueError:
        raise ValueError(f"{flag}={text!r}: expected e.g. '1-5' or '1,3,5'") from None
    return tuple(sorted(values))


def parse_floats(text: str, flag: str) -> Tuple[float, ...]:
    try:
        return tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ValueError(f"{flag}={text!r}: expected comma-separated numbers") from None


def parse_names(text: str) -> Tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def corruption_names(text: str) -> Tuple[str, ...]:
    """A comma list of corruptions; "" = all of `corruptions.CORRUPTIONS`, "none" = none."""
    from nst.robustness import corruptions
    names = parse_names(text)
    if not names:
        return tuple(corruptions.CORRUPTIONS)
    return () if names == ("none",) else names


def epsilon_key(epsilon: float) -> str:
    return f"{epsilon:g}"


# ----------------------------------------------------------------------------- checks


def check_settings(settings: Settings):
    """Refuses bad corruption names, severities and ε, naming the flag (before any work)."""
    from nst.robustness import corruptions
    try:
        corruptions.check(settings.corruptions, settings.severities)
    except ValueError as e:
        raise ValueError(f"--corruptions / --severities: {e}") from e
    metrics.check_epsilons(settings.fgsm_epsilons)
    if isinstance(settings.num_examples, bool) or not isinstance(settings.num_examples, int) \
            or settings.num_examples < 0:
        raise ValueError(f"--num_examples={settings.num_examples!r}: expected an integer "
                         f">= 0 (0 = every image of the split)")
    if not settings.output:
        raise ValueError("--output is required (the results JSON)")
    if bool(settings.data_dir) == bool(settings.tfds_name):
        raise ValueError("Give exactly one input: --data_dir (labeled TFRecords) or "
                         "--tfds_name (a prepared TFDS set)")


def identity(settings: Settings, num_classes: int, image_size: int) -> Dict:
    """What a baseline must share with this run (num_examples is added after the clean pass)."""
    return {"data_dir": settings.data_dir or None, "tfds_name": settings.tfds_name or None,
            "split": settings.split, "num_classes": num_classes, "image_size": image_size}


def load_baseline(settings: Settings, ours: Dict) -> Optional[Dict]:
    """Reads and checks `--baseline_results` against this run; ValueError naming the file."""
    path = settings.baseline_results
    if not path:
        return None
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"--baseline_results={path}: no such file")
    try:
        baseline = fileio.read_json(path)
        theirs = baseline["dataset"]
        errors = baseline["corruptions"]
        baseline["clean"]["error"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--baseline_results={path} is not a results JSON of "
                         f"nst-eval-robustness ({type(e).__name__}: {e})") from None
    keys = ("data_dir", "tfds_name", "split", "num_classes")
    diff = [f"{k} {theirs.get(k)!r} there vs {ours[k]!r} here" for k in keys
            if theirs.get(k) != ours[k]]
    if diff:
        raise ValueError(f"--baseline_results={path} was measured on another data set: "
                         + ", ".join(diff))
    missing = [f"{c} severity {s}" for c in settings.corruptions for s in settings.severities
               if str(s) not in errors.get(c, {})]
    if missing:
        raise ValueError(f"--baseline_results={path} lacks corruptions/severities of this "
                         f"run: {', '.join(missing[:8])}"
                         + (f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""))
    return baseline


# ----------------------------------------------------------------------------- model


def _stored_num_classes(path: str) -> Optional[int]:
    from nst.models import saving
    stored = saving.stored_model_config(path) if saving.checkpoint_exists(path) else None
    return None if stored is None else stored[0].num_classes


def load_model(config: config_lib.ExperimentConfig, num_classes: int, strategy):
    """The EMA model of `--model_dir`, refusing one of another class count than the data."""
    from nst.models import saving
    from nst.pseudo import predict
    if not config.model_dir:
        raise ValueError("--model_dir is required")
    if not saving.checkpoint_exists(config.model_dir):
        raise FileNotFoundError(f"--model_dir={config.model_dir}: no checkpoint there")
    stored = _stored_num_classes(config.model_dir)
    if stored is not None and stored != num_classes:
        raise ValueError(f"--model_dir={config.model_dir} holds a {stored}-class model but "
                         f"the data has {num_classes} classes")
    config = dataclasses.replace(config, predict_ckpt_path=config.model_dir,
                                 num_label_classes=num_classes)
    return predict.load_teacher(config, strategy)


class Scorer:
    """Correct top-1 counts of a model on batches, clean or after one FGSM step.

    `subset` (class indices) restricts the argmax and the FGSM loss to those
    classes (ImageNet-A); labels stay in the model's class space.
    """

    def __init__(self, model, num_classes: int, subset: Optional[Sequence[int]] = None):
        mask = tf.zeros([num_classes])
        if subset is not None:
            mask = -1e9 * (1.0 - tf.reduce_sum(tf.one_hot(list(subset), num_classes), 0))
        self._mask = mask
        self._model = model
        image_spec = tf.TensorSpec([None, model.image_size, model.image_size, 3], tf.float32)
        label_spec = tf.TensorSpec([None], tf.int32)
        self.correct = tf.function(self._correct, input_signature=(image_spec, label_spec))
        self.fgsm_correct = tf.function(
            self._fgsm_correct, input_signature=(image_spec, label_spec,
                                                 tf.TensorSpec([], tf.float32)))

    def logits(self, images):
        return tf.cast(self._model(images, training=False), tf.float32) + self._mask

    def _correct(self, images, labels):
        logits = self.logits(images)
        hits = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels)
        finite = tf.reduce_all(tf.math.is_finite(logits))
        return tf.reduce_sum(tf.cast(hits, tf.int64)), tf.shape(labels, tf.int64)[0], finite

    def _fgsm_correct(self, images, labels, epsilon):
        adversarial = metrics.fgsm_images(self.logits, images, labels, epsilon)
        return self._correct(adversarial, labels)


def top1_error(scorer: Scorer, dataset, fgsm_epsilon: Optional[float] = None) -> Tuple[float, int]:
    """(top-1 error, number of images) over `dataset`."""
    correct = count = 0
    for batch in dataset:
        if fgsm_epsilon is None:
            c, n, finite = scorer.correct(batch["image"], batch["label"])
        else:
            c, n, finite = scorer.fgsm_correct(batch["image"], batch["label"],
                                               tf.constant(fgsm_epsilon, tf.float32))
        if not bool(finite):
            raise FloatingPointError("The model gives NaN or Inf logits: its weights are "
                                     "unusable")
        correct, count = correct + int(c), count + int(n)
    if count == 0:
        raise ValueError("The evaluation split holds no images")
    return 1.0 - correct / count, count


# ----------------------------------------------------------------------------- run


def _default_split(settings: Settings) -> str:
    return settings.split or "test"


def _inputs(settings: Settings, config):
    """(batches(view) -> dataset, number of classes) before the model exists."""
    from nst.robustness import inputs
    limit = settings.num_examples or None
    if settings.tfds_name:
        builder, num_classes = inputs.tfds_info(settings.tfds_name, settings.tfds_data_dir)
        # A prepared set lists its splits; without metadata (e.g. under
        # tfds.testing.mock_data) the list is empty and as_dataset decides.
        if builder.info.splits and settings.split not in builder.info.splits:
            raise ValueError(f"--split={settings.split!r}: {settings.tfds_name} has splits "
                             f"{sorted(builder.info.splits)}")
        return (lambda view: inputs.tfds_batches(builder, settings.split,
                                                 config.eval_batch_size, view, limit)), \
            num_classes
    pattern = os.path.join(settings.data_dir, f"{settings.split}*")
    if not tf.io.gfile.glob(pattern):
        raise FileNotFoundError(f"--data_dir/--split: no files match {pattern}")
    return (lambda view: inputs.record_batches(pattern, config.num_label_classes,
                                               config.eval_batch_size, view, limit)), \
        config.num_label_classes


def run(settings: Settings, config: config_lib.ExperimentConfig, strategy=None) -> Dict:
    """Evaluates the model and writes `settings.output`; returns the results dict."""
    from nst.data import input_pipeline as ip
    from nst.robustness import imagenet_a, inputs

    settings = dataclasses.replace(settings, split=_default_split(settings))
    check_settings(settings)
    # Now, not after the measurements: an output path that cannot be made fails first.
    if os.path.dirname(settings.output):
        tf.io.gfile.makedirs(os.path.dirname(settings.output))
    batches, num_classes = _inputs(settings, config)
    subset = None
    if settings.tfds_name.split("/")[0] == IMAGENET_A:
        if num_classes != imagenet_a.NUM_MODEL_CLASSES:
            raise ValueError(f"{IMAGENET_A} labels have {num_classes} classes, expected 1000")
        subset = imagenet_a.INDICES
    # The baseline's data set identity is checked with the stored image size
    # unknown yet; the size is compared once the model is built.
    ours = identity(settings, num_classes, image_size=None)
    baseline = load_baseline(settings, ours)

    distribute.set_precision(config.use_bfloat16)
    strategy = strategy or distribute.resolve_strategy(
        tpu=config.tpu, use_tpu=config.use_tpu, gcp_project=config.gcp_project,
        tpu_zone=config.tpu_zone, master=config.master)
    logging.info("Strategy: %s", distribute.describe(strategy))
    model = load_model(config, num_classes, strategy)
    ours["image_size"] = int(model.image_size)
    view = ip.ViewConfig(image_size=model.image_size, small_image=model.config.small_image)
    scorer = Scorer(model, num_classes, subset)

    start = time.time()
    clean_error, count = top1_error(scorer, inputs.prefetched(batches(view)))
    ours["num_examples"] = count
    if baseline is not None and baseline["dataset"].get("num_examples") != count:
        raise ValueError(f"--baseline_results={settings.baseline_results} counts "
                         f"{baseline['dataset'].get('num_examples')} images, this split {count}")
    errors: Dict[str, Dict[int, float]] = {}
    for name in settings.corruptions:
        errors[name] = {}
        for severity in settings.severities:
            dataset = inputs.corrupt_batches(batches(view), name, severity, settings.seed,
                                             config.eval_batch_size)
            errors[name][severity], _ = top1_error(scorer, inputs.prefetched(dataset))
            logging.info("%s severity %d: error %.4f", name, severity, errors[name][severity])
    fgsm = {}
    for epsilon in settings.fgsm_epsilons:
        error, _ = top1_error(scorer, inputs.prefetched(batches(view)), fgsm_epsilon=epsilon)
        fgsm[epsilon_key(epsilon)] = 1.0 - error

    results = {
        "format_version": FORMAT_VERSION,
        "model_dir": config.model_dir, "model_name": model.config.name,
        "dataset": ours, "seed": settings.seed,
        "clean": {"error": clean_error, "top_1_accuracy": 1.0 - clean_error},
        "corruptions": {c: {str(s): e for s, e in per_s.items()} for c, per_s in errors.items()},
        "mean_corruption_error": metrics.mean_error(errors),
        "fgsm_accuracy": fgsm,
        "baseline_results": settings.baseline_results or None,
        "seconds": time.time() - start,
    }
    if baseline is not None:
        base = {c: {s: baseline["corruptions"][c][str(s)] for s in settings.severities}
                for c in settings.corruptions}
        ce = metrics.corruption_errors(errors, base)
        relative = metrics.relative_corruption_errors(errors, clean_error, base,
                                                      baseline["clean"]["error"], count)
        results.update(ce=ce, mce=metrics.mean_defined(list(ce.values())),
                       relative_ce=relative,
                       relative_mce=metrics.mean_defined(list(relative.values())))
    fileio.atomic_write_json(settings.output, results)
    logging.info("Wrote %s: clean error %.4f, mCE %s", settings.output, clean_error,
                 results.get("mce"))
    return results


def summary(results: Dict) -> Dict:
    """The few numbers of a results dict that reports tabulate: clean error, mean
    corruption error, error per severity (mean over corruptions), mCE and relative mCE
    (None without a baseline), FGSM accuracy per ε, image count."""
    errors = {c: {int(s): e for s, e in per_s.items()}
              for c, per_s in results["corruptions"].items()}
    return {"num_examples": results["dataset"]["num_examples"],
            "clean_error": results["clean"]["error"],
            "mean_corruption_error": results["mean_corruption_error"],
            "error_by_severity": {str(s): e for s, e in
                                  metrics.error_by_severity(errors).items()},
            "mce": results.get("mce"), "relative_mce": results.get("relative_mce"),
            "fgsm_accuracy": results["fgsm_accuracy"],
            "baseline": results.get("baseline_results")}


# ----------------------------------------------------------------------------- flags


def define_flags():
    config_lib.define_flags()
    flags.DEFINE_string("data_dir", "", "Directory of labeled TFRecords (<split>*)")
    flags.DEFINE_string("split", "", "Split prefix (records) or TFDS split; default test")
    flags.DEFINE_string("tfds_name", "", "A prepared TFDS set instead of --data_dir: "
                        "imagenet_a, imagenet2012_corrupted/<corruption>_<severity>, ...")
    flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (default: TFDS's own)")
    flags.DEFINE_string("corruptions", "", "Comma-separated corruption names (default: all "
                        "of nst.robustness.corruptions.CORRUPTIONS); 'none' for none")
    flags.DEFINE_string("severities", "1-5", "Severities, e.g. '1-5' or '1,3,5'")
    flags.DEFINE_string("fgsm_epsilons", "", "FGSM steps in pixel units over 0..255, "
                        "e.g. 1,2,4,8,16 (default: no FGSM)")
    flags.DEFINE_string("baseline_results", "", "This tool's JSON for the baseline model "
                        "(e.g. the teacher): adds CE, mCE, relative mCE")
    flags.DEFINE_string("output", "", "Results JSON (written atomically)")
    flags.DEFINE_integer("num_examples", 0, "Evaluate only the first N images of the split "
                         "(in file order; a baseline must use the same N); 0 = all")


def settings_from_flags(config) -> Settings:
    return Settings(data_dir=FLAGS.data_dir, split=FLAGS.split, tfds_name=FLAGS.tfds_name,
                    tfds_data_dir=FLAGS.tfds_data_dir,
                    corruptions=corruption_names(FLAGS.corruptions),
                    severities=parse_severities(FLAGS.severities),
                    fgsm_epsilons=parse_floats(FLAGS.fgsm_epsilons, "--fgsm_epsilons"),
                    baseline_results=FLAGS.baseline_results, output=FLAGS.output,
                    seed=config.seed, num_examples=FLAGS.num_examples)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = config_lib.build_config(FLAGS.gin_file, FLAGS.gin_param,
                                     config_lib.explicit_flags(FLAGS))
    run(settings_from_flags(config), config)


def cli():
    define_flags()
    cli_errors.run(main)


if __name__ == "__main__":
    cli()
