"""The original's learning-rate schedule (spec §5.6, §2.1 step 6).

Linear warm-up from 0 over 5 labeled epochs, then staircase decay by 0.97
every `d_epochs` epochs, counted from step 0 (so the LR drops at once at
the end of warm-up). Epochs count labeled images only.
"""

import math
from typing import Optional, Tuple

import keras
import tensorflow as tf

DECAY_FACTOR = 0.97
WARMUP_EPOCHS = 5
DEFAULT_DECAY_EPOCHS = 2.4


def resolve_train_steps(train_steps: int, train_last_step_num: Optional[int] = -1,
                        train_ratio: float = 1.0) -> Tuple[int, int]:
    """The original's step bookkeeping (§2.1 step 6).

    `train_last_step_num` of -1 (or None) becomes `train_steps`; then, if
    `train_ratio != 1`, both are multiplied by it and truncated to int.

    Returns:
      `(train_steps, train_last_step_num)`: the schedule length and the
      number of steps to actually train.
    """
    if train_last_step_num is None or train_last_step_num == -1:
        train_last_step_num = train_steps
    if train_ratio != 1:
        train_steps = int(train_steps * train_ratio)
        train_last_step_num = int(train_last_step_num * train_ratio)
    return int(train_steps), int(train_last_step_num)


@keras.saving.register_keras_serializable(package="nst")
class NoisyStudentSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """LR(step) of the original (§5.6), for the optimizer's `iterations`.

        spe     = N / (B * p)                          steps per labeled epoch
        lr_peak = base_learning_rate * B * p / 256
        s       = step + (train_steps - train_last_step_num)
        W       = int(5 * spe)
        lr(s)   = lr_peak * s / W                      if s < W
                = lr_peak * 0.97 ** floor(s / (spe * d_epochs))  otherwise

    with `d_epochs = 2.4 * train_ratio`, or, when `final_base_lr` is set,
    chosen so that the per-256 LR decays from `base_learning_rate` to
    `final_base_lr` over the epochs after warm-up:
    `(train_steps * B / N - 5) / (ln(final / base) / ln(0.97))`.

    The step-dependent part runs in float32 like the original's
    `exponential_decay` (and so on TPUs, which lack float64); the constants
    are computed in Python doubles.

    Args:
      base_learning_rate: LR per 256 labeled images.
      train_batch_size: B, the GLOBAL labeled batch size.
      num_train_images: N, labeled training images.
      train_steps: schedule length in steps, already multiplied by
        `train_ratio` (see `resolve_train_steps`).
      label_data_sample_prob: p in (0, 1]; the effective labeled batch is B*p.
      train_ratio: stretches the default decay interval.
      final_base_lr: per-256 LR to reach at the end; None or 0 = default decay.
      train_last_step_num: steps actually trained (fine-tuning the schedule's
        tail), already multiplied by `train_ratio`; None or -1 = all.
    """

    def __init__(self, base_learning_rate: float, train_batch_size: int,
                 num_train_images: int, train_steps: int,
                 label_data_sample_prob: float = 1.0, train_ratio: float = 1.0,
                 final_base_lr: Optional[float] = None,
                 train_last_step_num: Optional[int] = None):
        if train_batch_size <= 0 or num_train_images <= 0 or train_steps <= 0:
            raise ValueError("train_batch_size, num_train_images and train_steps must be positive")
        if not 0.0 < label_data_sample_prob <= 1.0:
            raise ValueError("label_data_sample_prob must be in (0, 1], "
                             f"got {label_data_sample_prob}")
        self.base_learning_rate = float(base_learning_rate)
        self.train_batch_size = int(train_batch_size)
        self.num_train_images = int(num_train_images)
        self.train_steps = int(train_steps)
        self.label_data_sample_prob = float(label_data_sample_prob)
        self.train_ratio = float(train_ratio)
        self.final_base_lr = final_base_lr
        self.train_last_step_num = train_last_step_num

        effective_batch = self.train_batch_size * self.label_data_sample_prob
        self.steps_per_epoch = self.num_train_images / effective_batch
        self.peak_learning_rate = self.base_learning_rate * effective_batch / 256.0
        if final_base_lr:
            if not 0 < final_base_lr < self.base_learning_rate:
                raise ValueError(f"final_base_lr ({final_base_lr}) must be in "
                                 f"(0, base_learning_rate={self.base_learning_rate})")
            # Epochs after warm-up; the original uses B, not B*p, here.
            epochs = (self.train_steps * self.train_batch_size / self.num_train_images
                      - WARMUP_EPOCHS)
            if epochs <= 0:
                raise ValueError(f"train_steps={self.train_steps} do not cover the "
                                 f"{WARMUP_EPOCHS} warm-up epochs")
            num_decays = math.log(final_base_lr / self.base_learning_rate) / math.log(DECAY_FACTOR)
            self.decay_epochs = epochs / num_decays
        else:
            self.decay_epochs = DEFAULT_DECAY_EPOCHS * self.train_ratio
        self.decay_steps = self.steps_per_epoch * self.decay_epochs
        self.warmup_steps = int(WARMUP_EPOCHS * self.steps_per_epoch)
        if train_last_step_num is None or train_last_step_num == -1:
            self.step_offset = 0
        else:
            # Fine-tuning the tail: behave as if train_steps - n steps were done.
            self.step_offset = self.train_steps - int(train_last_step_num)

    def __call__(self, step):
        """LR at optimizer step `step` (int, int tensor or variable): float32 scalar."""
        with tf.name_scope("noisy_student_lr"):
            # Offset in integers so large steps stay exact.
            s = tf.cast(tf.convert_to_tensor(step), tf.int64) + self.step_offset
            s_float = tf.cast(s, tf.float32)
            num_decays = tf.floor(s_float / tf.constant(self.decay_steps, tf.float32))
            decayed = self.peak_learning_rate * tf.pow(
                tf.constant(DECAY_FACTOR, tf.float32), num_decays)
            if self.warmup_steps <= 0:
                return decayed
            warmup = self.peak_learning_rate * s_float / float(self.warmup_steps)
            return tf.where(s < self.warmup_steps, warmup, decayed)

    def epoch(self, step):
        """Labeled epochs done after `step` optimizer steps (`train/epoch`): float32."""
        return tf.cast(tf.convert_to_tensor(step), tf.float32) / self.steps_per_epoch

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "train_batch_size": self.train_batch_size,
            "num_train_images": self.num_train_images,
            "train_steps": self.train_steps,
            "label_data_sample_prob": self.label_data_sample_prob,
            "train_ratio": self.train_ratio,
            "final_base_lr": self.final_base_lr,
            "train_last_step_num": self.train_last_step_num,
        }
