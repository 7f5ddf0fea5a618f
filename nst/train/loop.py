"""The training loop: `iterations_per_loop` steps of `strategy.run` per call.

    trainer = Trainer(config, strategy)
    trainer.train()                 # resumes from model_dir if it can
    trainer.evaluate_splits(step)   # EMA weights, every image of each split

One call of the compiled loop runs up to `iterations_per_loop` steps on the
devices (the TPU host round trip of the original), then the host logs,
writes summaries and saves checkpoints. Each replica step is one student
forward pass over its B labeled + U unlabeled rows, the online teacher (if
any) on the U unlabeled rows only, the Noisy Student loss plus L2, and a
TF1-RMSProp update of gradients averaged over replicas; EMA shadows follow
each update.
"""

import contextlib
import dataclasses
import math
import os
import time
from typing import Dict, Optional

import keras
import tensorflow as tf
from absl import logging

from nst import config as config_lib
from nst import distribute
from nst.data import input_pipeline as ip
from nst.data import readers
from nst.models import config as model_config_lib
from nst.models import group_norm
from nst.models import saving
from nst.models.efficientnet import EfficientNet, build_model
from nst.train import checkpoint as ckpt_lib
from nst.train import evaluate as eval_lib
from nst.train import objective
from nst.train.ema import ExponentialMovingAverage
from nst.train.optimizer import TF1RMSProp
from nst.train.schedule import NoisyStudentSchedule


class NonFiniteLossError(FloatingPointError):
    """Training metrics, or the state about to be saved, hold NaN or Inf.

    Nothing is saved. `last_good` is the newest checkpoint of model_dir that
    passes the same check (`Trainer.check_state`), or None if none does.
    """

    def __init__(self, message: str, last_good: Optional[str] = None):
        super().__init__(message)
        self.last_good = last_good


@dataclasses.dataclass
class StateCheck:
    """Whether the live training state may be saved (`Trainer.check_state`).

    Attributes:
      bad_variables: checkpoint names ("model/...", "ema/...", "optimizer/...")
        of float variables holding NaN or Inf on some replica.
      num_variables: float variables checked.
      loss: {"raw", "EMA"}: probe loss (labeled cross-entropy plus L2, inference
        mode) with the raw and, when EMA is on, the EMA weights.
      num_probe_images: images in the probe batch.
    """
    bad_variables: list
    num_variables: int
    loss: Dict[str, float]
    num_probe_images: int

    @property
    def ok(self) -> bool:
        return not self.bad_variables and all(math.isfinite(v) for v in self.loss.values())

    def describe(self) -> str:
        parts = []
        if self.bad_variables:
            parts.append(f"{len(self.bad_variables)} of {self.num_variables} float variables "
                         f"hold NaN or Inf (e.g. {', '.join(self.bad_variables[:3])})")
        parts.append(f"probe loss on {self.num_probe_images} training images, inference "
                     "mode: " + ", ".join(f"{k} weights {v:.4g}" for k, v in self.loss.items()))
        return "; ".join(parts)


def _task_id(strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", 0) or 0)


def count_records(patterns) -> int:
    """Number of records in the files matching `patterns` (one read pass)."""
    files = readers.list_files(patterns)
    return int(tf.data.TFRecordDataset(files, num_parallel_reads=8).reduce(
        tf.constant(0, tf.int64), lambda n, _: n + 1))


class Trainer:
    """Student (and optional teacher), optimizer, EMA and checkpoints of one run.

    Args:
      config: a finalised `ExperimentConfig`.
      strategy: the `tf.distribute.Strategy` to train under.
      jit_compile: compile each replica step with XLA (the TPU path compiles
        anyway; on CPU this is slower and used by the compile tests).
    """

    def __init__(self, config: config_lib.ExperimentConfig,
                 strategy: Optional[tf.distribute.Strategy] = None, jit_compile: bool = False):
        self.config = config
        self.strategy = strategy or tf.distribute.get_strategy()
        self.jit_compile = jit_compile
        if not config.model_dir:
            raise ValueError("--model_dir is required")
        if not config.label_data_dir:
            raise ValueError("--label_data_dir is required")
        # Initial weights and the noise layers' seeds follow --seed, so that two
        # runs with one seed (e.g. an interrupted and an uninterrupted one, or
        # every worker of a multi-worker job) start from the same weights.
        keras.utils.set_random_seed(config.seed)
        replicas = self.strategy.num_replicas_in_sync
        self.batch_size = distribute.per_replica_batch_size(config.train_batch_size, self.strategy)
        self.unlabeled_batch = (ip.unlabeled_batch_size(
            self.batch_size, config.unlabel_ratio, config.label_data_sample_prob)
            if config.unlabel_ratio > 0 else 0)
        self.num_train_images = self._num_train_images()
        normalization = config_lib.normalization(config)
        self.is_chief = bool(self.strategy.extended.should_checkpoint)

        with self.strategy.scope():
            self.student, self.image_size = build_model(
                config.model_name, config.num_label_classes,
                width=config.width_coefficient, depth=config.depth_coefficient,
                resolution=config.input_image_size, dropout_rate=config.dropout_rate,
                stochastic_depth_rate=config.stochastic_depth_rate,
                small_image=config.small_image_model, normalization=normalization,
                bn_group_size=group_norm.group_size(config.num_shards_per_group, replicas))
            self.student.freeze_layers(config.fix_layer_num)
            self.teacher = self._build_teacher(normalization)
            self.schedule = NoisyStudentSchedule(
                base_learning_rate=config.base_learning_rate,
                train_batch_size=config.train_batch_size,
                num_train_images=self.num_train_images, train_steps=config.train_steps,
                label_data_sample_prob=config.label_data_sample_prob,
                train_ratio=config.train_ratio, final_base_lr=config.final_base_lr,
                train_last_step_num=config.train_last_step_num)
            self.optimizer = TF1RMSProp(learning_rate=self.schedule)
            self.optimizer.build(self.student.trainable_variables)
            self.ema = ExponentialMovingAverage(self.student, config.moving_average_decay)
        self.checkpoint = ckpt_lib.make_checkpoint(self.student, self.optimizer, self.ema)
        # Every worker of a multi-worker job must take part in a save, but only
        # the chief writes to model_dir; the others write to a scratch
        # directory that is deleted after each save.
        self._save_dir = config.model_dir if self.is_chief else os.path.join(
            config.model_dir, f".worker_{_task_id(self.strategy)}_tmp")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._save_dir, max_to_keep=config.keep_checkpoint_max)
        self._metric_keys = sorted(self._dry_run_metrics())
        self._loop = None
        self._probe = None
        self._check_fn = None
        # The checkpoint the live weights came from, if they are unchanged since
        # (named in eval errors).
        self._weights_from = None
        self.skipped = None

    # ------------------------------------------------------------------ setup

    def _train_files(self):
        return os.path.join(self.config.label_data_dir, "train*")

    def _num_train_images(self) -> int:
        c = self.config
        if c.num_train_images:
            return c.num_train_images
        if c.mode == "eval" and not tf.io.gfile.glob(self._train_files()):
            # Only the LR schedule needs it, and eval does not train: an eval
            # job may run where only the eval splits are.
            return 1
        return count_records(self._train_files())

    def _build_teacher(self, normalization):
        config = self.config
        if not config.teacher_model_name or config.mode == "eval":
            return None  # eval never runs the teacher (the original built it for nothing)
        if not saving.checkpoint_exists(config.teacher_model_path):
            raise FileNotFoundError(f"No teacher checkpoint at --teacher_model_path="
                                    f"{config.teacher_model_path}")
        resolution = config.teacher_image_size or (
            config.input_image_size if config.small_image_model else None)
        stored = saving.stored_model_config(config.teacher_model_path)
        if stored is None:
            # The teacher keeps its table width, depth and resolution: the
            # original's overrides leaked into the teacher (§11).
            teacher, resolution = build_model(
                config.teacher_model_name, config.num_label_classes, resolution=resolution,
                small_image=config.small_image_model, normalization=normalization,
                name="teacher")
        else:
            # An nst checkpoint says which network it holds (including width and
            # depth overrides it was trained with): build exactly that one.
            teacher_config, stored_size = stored
            expected = model_config_lib.get_config(config.teacher_model_name).name
            if teacher_config.name != expected:
                raise ValueError(
                    f"--teacher_model_name={config.teacher_model_name} but the checkpoint at "
                    f"--teacher_model_path={config.teacher_model_path} holds "
                    f"{teacher_config.name}")
            if teacher_config.num_classes != config.num_label_classes:
                raise ValueError(
                    f"The teacher at --teacher_model_path={config.teacher_model_path} predicts "
                    f"{teacher_config.num_classes} classes but the data has "
                    f"{config.num_label_classes} (--num_label_classes / --task_name)")
            resolution = resolution or stored_size or teacher_config.resolution
            teacher = EfficientNet(teacher_config, image_size=resolution, name="teacher")
        report = saving.load_weights(teacher, config.teacher_model_path, use_ema="auto")
        teacher.trainable = False
        self.teacher_image_size = resolution
        logging.info("Teacher %s at %dpx from %s (%d tensors, %d from EMA)",
                     config.teacher_model_name, resolution, config.teacher_model_path,
                     report.num_loaded, report.num_from_ema)
        return teacher

    def _loss_kwargs(self):
        c = self.config
        return dict(labeled_batch_size=self.batch_size, unlabel_ratio=c.unlabel_ratio,
                    label_smoothing=c.label_smoothing, teacher_softmax_temp=c.teacher_softmax_temp,
                    label_data_sample_prob=c.label_data_sample_prob,
                    mask_normalization=c.label_mask_normalization)

    def _dry_run_metrics(self) -> Dict[str, float]:
        """The metric names of one step, from the objective on zeros (eager, cheap)."""
        k, b, u = self.config.num_label_classes, self.batch_size, self.unlabeled_batch
        logits = tf.zeros([b + u, k])
        labels = tf.zeros([b + u], tf.int32)
        extra = {}
        if u:
            if self.teacher is not None:
                extra["teacher_logits"] = tf.zeros([u, k])
            else:
                extra["unl_probs"] = tf.fill([u, k], 1.0 / k)
        if self.config.label_data_sample_prob < 1:
            extra["sample_uniform"] = tf.zeros([b])
        _, metrics = objective.noisy_student_loss(logits, labels, **self._loss_kwargs(), **extra)
        return dict(metrics, **{"train/loss": 0.0})

    def views(self):
        """(student view, unlabeled view, teacher view or None)."""
        c = self.config
        student = ip.ViewConfig(
            image_size=self.image_size, small_image=c.small_image_model,
            augment_name=c.augment_name, randaug_layer=c.randaug_layer,
            randaug_mag=c.randaug_mag, cutout_op=c.cutout_op, flip=config_lib.random_flip(c),
            remove_aug=c.remove_aug, out_of_range=c.randaug_out_of_range)
        unlabeled = student if c.unl_aug == "default" else dataclasses.replace(
            student, augment_name=c.unl_aug or None)
        teacher = None
        if self.teacher is not None:
            teacher = ip.ViewConfig(image_size=self.teacher_image_size,
                                    small_image=c.small_image_model)
        return student, unlabeled, teacher

    def train_dataset(self, start_step: int):
        c = self.config
        student_view, unlabeled_view, teacher_view = self.views()
        unlabeled = (readers.list_unlabeled_files(c.unlabel_data_dir)
                     if c.unlabel_ratio > 0 else None)
        skipped = readers.SkippedRecords() if c.skip_corrupt else None
        self.skipped = skipped

        def dataset_fn(context):
            per_pipeline = context.num_replicas_in_sync // context.num_input_pipelines
            return ip.student_train_dataset(
                self._train_files(), unlabeled, c.num_label_classes, self.batch_size,
                student_view, unlabel_ratio=c.unlabel_ratio,
                label_data_sample_prob=c.label_data_sample_prob,
                unlabeled_view=unlabeled_view, teacher_view=teacher_view,
                input_context=context, seed=c.seed, use_cache=c.use_cache,
                num_train_shards=c.num_train_shards, skip_corrupt=c.skip_corrupt,
                skipped=skipped, start_batch=start_step * per_pipeline)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # ------------------------------------------------------------------ steps

    def _replica_step(self, batch):
        c = self.config
        extra = {}
        if self.unlabeled_batch:
            if self.teacher is not None:
                extra["teacher_logits"] = tf.stop_gradient(tf.cast(
                    self.teacher(batch["teacher_image"], training=False), tf.float32))
            else:
                extra["unl_probs"] = batch["unl_probs"]
        if c.label_data_sample_prob < 1:
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            seed = tf.stack([tf.cast(self.optimizer.iterations, tf.int32) + c.seed * 7919,
                             tf.cast(replica, tf.int32)])
            extra["sample_uniform"] = tf.random.stateless_uniform([self.batch_size], seed)
        variables = self.student.trainable_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(self.student(batch["image"], training=True), tf.float32)
            data_loss, metrics = objective.noisy_student_loss(
                logits, batch["label"], **self._loss_kwargs(), **extra)
            loss = data_loss + objective.l2_regularization(variables, c.weight_decay)
            # Keras optimizers sum gradients over replicas; the original averaged.
            scaled = loss / self.strategy.num_replicas_in_sync
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        metrics = dict(metrics)
        metrics["train/loss"] = loss
        return {k: tf.cast(metrics[k], tf.float32) for k in self._metric_keys}

    def _make_loop(self):
        replica_step = self._replica_step
        if self.jit_compile:
            replica_step = tf.function(replica_step, jit_compile=True)
        keys = self._metric_keys

        @tf.function
        def loop(iterator, steps):
            totals = {k: tf.constant(0.0) for k in keys}
            for _ in tf.range(steps):
                per_replica = self.strategy.run(replica_step, args=(next(iterator),))
                self.ema.update(self.optimizer.iterations)
                # A new dict each iteration: AutoGraph tracks rebinding, not item updates.
                totals = {k: totals[k] + self.strategy.reduce(
                    tf.distribute.ReduceOp.MEAN, per_replica[k], axis=None) for k in keys}
            return {k: v / tf.cast(steps, tf.float32) for k, v in totals.items()}

        return loop

    # ------------------------------------------------------------------ state checks

    def _checked_variables(self):
        """[(checkpoint name, variable)] of every float variable a checkpoint holds."""
        groups = [("model", saving.variables_by_path(self.student).items())]
        if self.ema.enabled:
            groups.append(("ema", self.ema.shadows_by_path().items()))
        groups.append(("optimizer", [(v.path, v) for v in self.optimizer.variables]))
        return [(f"{group}/{name}", v) for group, items in groups for name, v in items
                if tf.as_dtype(v.dtype).is_floating]

    def _probe_batch(self):
        """The first eval-view batch of the training files (labels included), once."""
        if self._probe is None:
            c = self.config
            student_view, _, _ = self.views()
            # Read apart from the training stream, whose position a resumed run
            # must reproduce exactly.
            dataset = ip.eval_dataset(self._train_files(), c.num_label_classes,
                                      self.batch_size, student_view,
                                      skip_corrupt=c.skip_corrupt)
            batch = next(iter(dataset), None)
            if batch is None:
                raise FileNotFoundError(f"No training images in {self._train_files()}")
            self._probe = (batch["image"], batch["label"])
        return self._probe

    def _make_check(self):
        c = self.config
        named = self._checked_variables()
        variables = [v for _, v in named]
        strategy = self.strategy

        def replica_check(images, labels):
            logits = tf.cast(self.student(images, training=False), tf.float32)
            onehot = tf.one_hot(labels, c.num_label_classes)
            if c.label_smoothing:
                onehot = onehot * (1 - c.label_smoothing) + c.label_smoothing / c.num_label_classes
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(onehot, logits))
            # L2 too: |w| past ~1e19 overflows it, and the next step's loss with it.
            loss += objective.l2_regularization(self.student.trainable_variables,
                                                c.weight_decay)
            # Per replica: a replica's copy (e.g. of BN statistics) may differ.
            bad = tf.stack([tf.reduce_any(tf.logical_not(tf.math.is_finite(
                tf.convert_to_tensor(v)))) for v in variables])
            return tf.cast(bad, tf.float32), loss

        @tf.function
        def check(images, labels):
            bad, loss = strategy.run(replica_check, args=(images, labels))
            return (strategy.reduce(tf.distribute.ReduceOp.SUM, bad, axis=None),
                    strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None))

        return check, [name for name, _ in named]

    def check_state(self) -> StateCheck:
        """Whether the live state may be saved: finite float variables and probe loss.

        The probe loss is that of one fixed batch of labeled training images, in
        inference mode, with the raw and (EMA on) the EMA weights. Collective:
        every worker must call it, and all get the same answer.
        """
        if self._check_fn is None:
            self._check_fn, self._checked_names = self._make_check()
        images, labels = self._probe_batch()
        bad, raw = self._check_fn(images, labels)
        loss = {"raw": float(raw)}
        if self.ema.enabled:
            with self.ema.swapped(self.student):
                _, ema = self._check_fn(images, labels)
            loss["EMA"] = float(ema)
        names = [n for n, b in zip(self._checked_names, bad.numpy()) if b > 0]
        return StateCheck(names, len(self._checked_names), loss, int(images.shape[0]))

    def last_good_checkpoint(self):
        """(the newest checkpoint that passes `check_state`, the newer ones that fail).

        Restores each candidate, newest first, into the live objects: they hold
        the good one afterwards (or the oldest candidate if none passes).
        Collective, like `check_state`.
        """
        # The chief's list for every worker: the others' managers point to
        # their deleted scratch directories, and all must check the same
        # checkpoints in the same order.
        state = tf.train.get_checkpoint_state(self.config.model_dir)
        paths = list(state.all_model_checkpoint_paths) if state is not None else []
        failed = []
        for path in reversed(paths):
            try:
                self.checkpoint.read(path).expect_partial()
            except (tf.errors.OpError, ValueError, AssertionError) as e:
                logging.warning("Cannot read %s: %s", path, e)
                failed.append(path)
                continue
            check = self.check_state()
            if check.ok:
                self._weights_from = path
                return path, failed
            logging.warning("%s is not a good checkpoint: %s", path, check.describe())
            failed.append(path)
        self._weights_from = None
        return None, failed

    def _stop(self, what: str):
        """Raises NonFiniteLossError: `what`, then the verified last good checkpoint."""
        good, failed = self.last_good_checkpoint()
        model_dir = self.config.model_dir
        if good is not None:
            where = (f"The last good checkpoint (finite variables and probe loss, checked "
                     f"now) is {good}")
            if failed:
                where += (f"; newer ones fail the same check and must be deleted before "
                          f"resuming from it: {', '.join(failed)}")
            where += ". Resume with a lower --base_learning_rate (or other settings)."
        elif failed:
            where = (f"None of the checkpoints in {model_dir} ({', '.join(failed)}) passes the "
                     f"same check: training must restart from scratch, in a new --model_dir, "
                     f"with a lower --base_learning_rate.")
        else:
            where = (f"There is no earlier checkpoint in {model_dir}: training must restart "
                     f"from scratch with a lower --base_learning_rate.")
        raise NonFiniteLossError(f"{what} {where}", last_good=good)

    # ------------------------------------------------------------------ train

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def prepare(self) -> bool:
        """Checks model_dir, writes the model config, resumes or initialises.

        Returns True when training resumes from a checkpoint.
        """
        c = self.config
        # Every check before the first write (issue 14, item 5): a run that fails here
        # leaves model_dir as it found it.
        ckpt_lib.check_model_dir(self.student, c.model_dir)
        self.check_inputs()
        init = c.init_model_path if (c.init_model and not c.teacher_model_name) else None
        if c.init_model and c.teacher_model_name:
            logging.warning("--init_model is ignored with an online teacher (the student "
                            "starts from random weights, as in the original)")
        resumed = ckpt_lib.restore_or_initialize(self.checkpoint, self.manager, self.student,
                                                 init, directory=c.model_dir)
        if self.is_chief:
            saving.write_model_config(self.student, c.model_dir)
        if not resumed and init:
            self._reset_ema()
        return resumed

    def check_inputs(self):
        """Raises FileNotFoundError naming the first missing input of this run's mode (the
        labeled train files, the unlabeled dirs, the eval splits) — cheap globs only, so
        that a run with a mistyped data dir stops before it writes anything."""
        c = self.config
        if c.mode in ("train", "train_and_eval"):
            readers.list_files(self._train_files())
            if c.unlabel_ratio > 0:
                readers.list_unlabeled_files(c.unlabel_data_dir)
        if c.mode in ("eval", "train_and_eval"):
            self.eval_splits()

    def _reset_ema(self):
        """Sets every EMA shadow to its weight's current value (after init_model)."""
        if not self.ema.enabled:
            return
        weights = saving.variables_by_path(self.student)
        for path, shadow in self.ema.shadows_by_path().items():
            shadow.assign(tf.cast(weights[path].value, shadow.dtype))

    def train(self, until_step: Optional[int] = None, after_save=None) -> Dict[str, float]:
        """Trains until `until_step` (default: the end of the schedule).

        `after_save(step)` runs after every checkpoint (train_and_eval uses it
        to evaluate). Returns the metrics of the last loop call.
        """
        c = self.config
        end = (c.train_last_step_num if until_step is None
               else min(until_step, c.train_last_step_num))
        save_every = max(c.save_checkpoints_steps, c.iterations_per_loop)
        step = self.step
        if step >= end:
            logging.info("Already trained to step %d (target %d)", step, end)
            return {}
        # Before the training stream, at the same point of every run (resumed or not).
        self._probe_batch()
        iterator = iter(self.train_dataset(step))
        if self._loop is None:
            self._loop = self._make_loop()
        writer = (None if c.skip_host_call or not self.is_chief
                  else tf.summary.create_file_writer(os.path.join(c.model_dir, "train")))
        metrics = {}
        images_per_step = (self.batch_size + self.unlabeled_batch) * \
            self.strategy.num_replicas_in_sync
        start_time, start_step = time.time(), step
        while step < end:
            next_save = (step // save_every + 1) * save_every
            steps = min(c.iterations_per_loop, next_save - step, end - step)
            tick = time.time()
            metrics = {k: float(v) for k, v in
                       self._loop(iterator, tf.constant(steps, tf.int32)).items()}
            elapsed = time.time() - tick
            self._weights_from = None
            if not all(math.isfinite(v) for v in metrics.values()):
                self._stop(f"Non-finite training metrics between steps {step} and "
                           f"{step + steps}: {metrics}. Stopped without saving.")
            step = self.step
            lr = float(self.schedule(step))
            metrics.update({"train/lr": lr, "train/epoch": float(self.schedule.epoch(step))})
            rate = steps * images_per_step / max(elapsed, 1e-9)
            done = (step - start_step) / max(end - start_step, 1)
            eta = (time.time() - start_time) * (1 - done) / max(done, 1e-9)
            logging.info("step %d/%d (%.0f%%)  loss %.4f  lr %.3g  %.1f img/s  ETA %s",
                         step, end, 100 * done, metrics["train/loss"], lr, rate,
                         time.strftime("%H:%M:%S", time.gmtime(eta)))
            if writer is not None:
                with writer.as_default(step=step):
                    for k, v in metrics.items():
                        tf.summary.scalar(k, v)
                    tf.summary.scalar("train/images_per_second", rate)
                writer.flush()
            if step % save_every == 0 or step >= end:
                self.save(step)
                if after_save is not None and self.is_chief:
                    after_save(step)
        if self.skipped is not None and self.skipped.count:
            logging.warning("Skipped %d corrupt training records", self.skipped.count)
        return metrics

    def save(self, step: int) -> str:
        """Checks the state (`check_state`), then writes a checkpoint.

        Every worker must call it (only the chief's checkpoint is kept).

        Raises:
          NonFiniteLossError: the state is not finite; nothing is written, and
            the message names the last checkpoint that passes the check.
        """
        check = self.check_state()
        if not check.ok:
            self._stop(f"Not saving step {step}: the state to save is not finite "
                       f"({check.describe()}).")
        tf.io.gfile.makedirs(self._save_dir)
        path = self.manager.save(checkpoint_number=step)
        if self.is_chief:
            self._weights_from = path
        else:
            tf.io.gfile.rmtree(self._save_dir)
        return path

    # ------------------------------------------------------------------ eval

    def eval_splits(self):
        """{split: files} of the requested eval splits that exist."""
        found = {}
        for split in [s.strip() for s in self.config.eval_splits.split(",") if s.strip()]:
            pattern = os.path.join(self.config.label_data_dir, f"{split}*")
            if tf.io.gfile.glob(pattern):
                found[split] = pattern
            else:
                logging.warning("No files for eval split %r (%s)", split, pattern)
        if not found:
            raise FileNotFoundError(
                f"None of the eval splits {self.config.eval_splits!r} has files in "
                f"{self.config.label_data_dir}; pass e.g. --eval_splits=validation")
        return found

    def evaluate_splits(self, step: Optional[int] = None) -> Dict[str, dict]:
        """Evaluates every eval split with the EMA weights; appends to eval_results.json."""
        c = self.config
        step = self.step if step is None else step
        student_view, _, _ = self.views()
        splits = self.eval_splits()
        results = {}
        weights = (self.ema.swapped(self.student) if self.ema.enabled
                   else contextlib.nullcontext())
        with weights:
            for split, pattern in splits.items():
                # The original's subset sizes (§2.1): dev (and ImageNet's validation)
                # num_eval_images, test num_test_images; None = the whole split.
                limit = c.num_test_images if split == "test" else (
                    c.num_eval_images if split in ("dev", "validation") else None)
                dataset = ip.eval_dataset(pattern, c.num_label_classes, c.eval_batch_size,
                                          student_view, max_images=limit)
                source = (f"the {'EMA ' if self.ema.enabled else ''}weights of "
                          f"{self._weights_from or f'{c.model_dir} at step {step}'} "
                          f"on split {split!r}")
                result = eval_lib.evaluate(self.student, dataset, c.num_label_classes,
                                           c.label_smoothing, source=source)
                result.update(split=split, global_step=step)
                eval_lib.append_result(c.model_dir, result)
                writer = tf.summary.create_file_writer(os.path.join(c.model_dir, f"eval_{split}"))
                with writer.as_default(step=step):
                    for k in ("top_1_accuracy", "top_5_accuracy", "loss"):
                        tf.summary.scalar(k, result[k])
                writer.flush()
                results[split] = result
        return results

    def restore_latest(self, path: Optional[str] = None) -> int:
        """Loads a checkpoint (default: the latest in model_dir) for evaluation."""
        path = path or tf.train.latest_checkpoint(self.config.model_dir)
        if path is None:
            raise FileNotFoundError(f"No checkpoint in {self.config.model_dir}")
        self.checkpoint.read(path).expect_partial()
        self._weights_from = path
        return self.step


def summarize(results: Dict[str, dict]) -> str:
    return ", ".join(f"{s}: top-1 {r['top_1_accuracy']:.4f} top-5 {r['top_5_accuracy']:.4f}"
                     for s, r in results.items())

