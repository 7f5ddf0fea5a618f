"""The Noisy Student training objective (spec §5.2-§5.4).

    targets = soft_targets_from_logits(teacher_logits, temperature)   # online
    data_loss, metrics = noisy_student_loss(
        logits, labels, labeled_batch_size=B, unlabel_ratio=r,
        label_smoothing=eps, teacher_softmax_temp=tau, teacher_logits=t)
    loss = data_loss + l2_regularization(student.trainable_variables, wd)

Notation: the student sees one batch of B labeled rows followed by U
unlabeled rows (per replica); K classes; r = `unlabel_ratio`; eps = label
smoothing; tau = teacher temperature, -1 meaning hard (one-hot) targets.
Every function here works on one replica's batch: under a
`tf.distribute` strategy the caller scales the loss for the gradient
all-reduce.
"""

from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

HARD = -1.0
"""`teacher_softmax_temp` value that selects hard (one-hot argmax) targets."""

MASK_NORMALIZATIONS = ("original", "mean")

# Smallest positive normal float32: log() of a clipped zero stays finite.
_TINY = float(np.finfo(np.float32).tiny)


def _check_temperature(temperature: float):
    if not temperature > 0:
        raise ValueError(f"A soft-target temperature must be > 0, got {temperature}")


def soft_targets_from_logits(teacher_logits, temperature: float):
    """Online soft targets: `softmax(teacher_logits / temperature)`.

    Args:
      teacher_logits: `[U, K]` teacher logits (any float dtype, e.g.
        bfloat16); computed in float32.
      temperature: tau > 0.

    Returns:
      `[U, K]` float32 rows summing to 1.
    """
    _check_temperature(temperature)
    logits = tf.cast(teacher_logits, tf.float32)
    return tf.nn.softmax(logits / temperature, axis=-1)


def soft_targets_from_probs(probs, temperature: float):
    """Offline soft targets: `p^(1/tau) / sum_k p_k^(1/tau)` of stored probabilities.

    Computed in log space, `softmax(log(max(p, tiny)) / tau)`, so a small
    tau cannot underflow a whole row to zeros (the original's `pow` can);
    classes with `p = 0` get exactly 0, as `0^(1/tau)` does. tau = 1 returns
    `p` renormalised. A row without any positive entry (malformed record)
    yields an all-zero target, i.e. contributes no loss.

    Args:
      probs: `[U, K]` non-negative probabilities (record `probabilities`).
      temperature: tau > 0.

    Returns:
      `[U, K]` float32.
    """
    _check_temperature(temperature)
    probs = tf.cast(probs, tf.float32)
    if temperature == 1.0:
        return tf.math.divide_no_nan(probs, tf.reduce_sum(probs, axis=-1, keepdims=True))
    scaled = tf.math.log(tf.maximum(probs, _TINY)) / temperature
    # Subtracting the row maximum keeps exp() in range; the largest weight is 1.
    weights = tf.exp(scaled - tf.reduce_max(scaled, axis=-1, keepdims=True))
    weights = tf.where(probs > 0, weights, tf.zeros_like(weights))
    return tf.math.divide_no_nan(weights, tf.reduce_sum(weights, axis=-1, keepdims=True))


def hard_targets(scores, num_classes: Optional[int] = None):
    """One-hot of `argmax(scores)` (tau = -1): `[U, K]` float32.

    Args:
      scores: `[U, K]` teacher logits or probabilities.
      num_classes: K; defaults to the static last dimension of `scores`.
    """
    num_classes = num_classes or scores.shape[-1]
    return tf.one_hot(tf.argmax(scores, axis=-1, output_type=tf.int32), num_classes,
                      dtype=tf.float32)


def smooth_labels(one_hot, label_smoothing: float):
    """`(1 - eps) * one_hot + eps / K` for `[N, K]` one-hot rows."""
    if not label_smoothing:
        return one_hot
    num_classes = tf.cast(tf.shape(one_hot)[-1], one_hot.dtype)
    return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def cross_entropy(targets, logits):
    """Per-row `-sum_k q_k log softmax(z)_k`: `[N, K], [N, K] -> [N]` float32."""
    return -tf.reduce_sum(targets * tf.nn.log_softmax(logits, axis=-1), axis=-1)


def _mean_max_prob(probs):
    return tf.reduce_mean(tf.reduce_max(probs, axis=-1))


def _argmax_agreement(logits, targets):
    """Fraction of rows where argmax(logits) == argmax(targets)."""
    same = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32),
                    tf.argmax(targets, axis=-1, output_type=tf.int32))
    return tf.reduce_mean(tf.cast(same, tf.float32))


def _unlabeled_targets(unl_labels, num_classes, *, label_smoothing, teacher_softmax_temp,
                       teacher_logits, unl_probs):
    """Returns `([U, K] float32 targets, is_soft)` per the §5.2 table."""
    if teacher_logits is not None and unl_probs is not None:
        raise ValueError("Pass teacher_logits (online teacher) or unl_probs (offline soft "
                         "labels), not both")
    if teacher_softmax_temp == HARD:
        if teacher_logits is not None:
            one_hot = hard_targets(teacher_logits, num_classes)
        else:
            # Offline hard labels are the stored 0-based record labels.
            one_hot = tf.one_hot(unl_labels, num_classes, dtype=tf.float32)
        # Hard pseudo labels are smoothed like the labeled ones (§10 item 1).
        return smooth_labels(one_hot, label_smoothing), False
    _check_temperature(teacher_softmax_temp)
    # Soft targets are used as they are: no label smoothing.
    if teacher_logits is not None:
        return soft_targets_from_logits(teacher_logits, teacher_softmax_temp), True
    if unl_probs is not None:
        return soft_targets_from_probs(unl_probs, teacher_softmax_temp), True
    raise ValueError(f"Soft targets (teacher_softmax_temp={teacher_softmax_temp}) need "
                     "teacher_logits (online) or unl_probs (offline)")


def noisy_student_loss(logits, labels, *, labeled_batch_size: int, unlabel_ratio: float,
                       label_smoothing: float, teacher_softmax_temp: float = HARD,
                       teacher_logits=None, unl_probs=None,
                       label_data_sample_prob: float = 1.0, sample_uniform=None,
                       mask_normalization: str = "original"
                       ) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    """Data loss `L_lab + r * L_unl` of one replica's mixed batch (§5.3).

    `L_lab = (1/B) sum_i m_i CE(smooth(onehot(y_i)), z_i)` over the labeled
    rows; `L_unl` = mean CE over the unlabeled rows against the pseudo
    targets (hard targets smoothed like labels, soft targets not). The
    exact ratio r weights `L_unl`, not the rounded U / B. With r = 0, or no
    unlabeled rows, this is plain supervised training. The L2 term is
    separate (`l2_regularization`).

    Args:
      logits: `[B + U, K]` float32 student logits, labeled rows first.
      labels: `[B + U]` int labels (0-based); rows B.. are the records'
        stored pseudo labels, used as offline hard targets.
      labeled_batch_size: B (Python int, per replica).
      unlabel_ratio: r (the flag's value).
      label_smoothing: eps in [0, 1).
      teacher_softmax_temp: tau; -1 = hard targets, > 0 = soft targets.
      teacher_logits: `[U, K]` online teacher logits of the unlabeled rows, or
        None for offline pseudo labels.
      unl_probs: `[U, K]` stored probabilities (offline soft targets), or None.
      label_data_sample_prob: p in (0, 1]; p < 1 keeps each labeled row's loss
        with probability p (mask m_i = floor(p + u_i)).
      sample_uniform: `[B]` U[0, 1) draws u_i for that mask, drawn by the
        caller so this function stays deterministic; required when p < 1.
      mask_normalization: "original" divides the masked sum by B, as the
        original does (which scales `L_lab` by about p, §11); "mean" divides
        by `sum_i m_i` instead (our fix; 0 when every row is masked).

    Returns:
      `(data_loss, metrics)`: a float32 scalar and a dict of float32 scalars:
      `lab/acc` (argmax == label), `lab/pred_prob` (mean max softmax
      probability), `lab/loss` (= L_lab), `train/data_loss`; with unlabeled
      rows also `unl/pred_prob`, `unl/acc_to_target` (student argmax ==
      target argmax), `ext/loss` (= L_unl) and, for soft targets only,
      `unl/target_prob` (mean max target probability). The labeled metrics
      ignore the mask, like the original's.
    """
    if mask_normalization not in MASK_NORMALIZATIONS:
        raise ValueError(f"mask_normalization must be one of {MASK_NORMALIZATIONS}, "
                         f"got {mask_normalization!r}")
    if not 0.0 < label_data_sample_prob <= 1.0:
        raise ValueError(f"label_data_sample_prob must be in (0, 1], got {label_data_sample_prob}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if unlabel_ratio < 0:
        raise ValueError(f"unlabel_ratio must be >= 0, got {unlabel_ratio}")
    batch = int(labeled_batch_size)
    if batch <= 0:
        raise ValueError(f"labeled_batch_size must be positive, got {labeled_batch_size}")

    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    rows, num_classes = logits.shape[0], logits.shape[-1]
    if num_classes is None:
        raise ValueError("logits need a static class dimension K")
    if rows is not None and rows < batch:
        raise ValueError(f"logits have {rows} rows but labeled_batch_size is {batch}")
    has_unlabeled = unlabel_ratio > 0 and (rows is None or rows > batch)

    metrics = {}
    lab_logits, lab_labels = logits[:batch], labels[:batch]
    lab_probs = tf.nn.softmax(lab_logits, axis=-1)
    lab_pred = tf.argmax(lab_logits, axis=-1, output_type=tf.int32)
    metrics["lab/acc"] = tf.reduce_mean(tf.cast(tf.equal(lab_pred, lab_labels), tf.float32))
    metrics["lab/pred_prob"] = _mean_max_prob(lab_probs)

    lab_targets = smooth_labels(tf.one_hot(lab_labels, num_classes, dtype=tf.float32),
                                label_smoothing)
    lab_ce = cross_entropy(lab_targets, lab_logits)  # [B]
    if label_data_sample_prob == 1.0:
        lab_loss = tf.reduce_mean(lab_ce)
    else:
        if sample_uniform is None:
            raise ValueError("label_data_sample_prob < 1 needs sample_uniform, [B] U[0, 1) draws")
        uniform = tf.cast(sample_uniform, tf.float32)
        uniform.shape.assert_is_compatible_with([batch])
        # Bernoulli(p): floor(p + u) is 1 with probability p for u ~ U[0, 1).
        mask = tf.floor(label_data_sample_prob + uniform)
        masked_sum = tf.reduce_sum(lab_ce * mask)
        if mask_normalization == "original":
            lab_loss = masked_sum / batch
        else:
            lab_loss = tf.math.divide_no_nan(masked_sum, tf.reduce_sum(mask))
    metrics["lab/loss"] = lab_loss

    data_loss = lab_loss
    if has_unlabeled:
        unl_logits = logits[batch:]
        targets, is_soft = _unlabeled_targets(
            labels[batch:], num_classes, label_smoothing=label_smoothing,
            teacher_softmax_temp=teacher_softmax_temp, teacher_logits=teacher_logits,
            unl_probs=unl_probs)
        unl_ce = cross_entropy(targets, unl_logits)  # [U]
        num_unlabeled = tf.cast(tf.shape(unl_ce)[0], tf.float32)
        unl_loss = tf.math.divide_no_nan(tf.reduce_sum(unl_ce), num_unlabeled)
        metrics["unl/pred_prob"] = _mean_max_prob(tf.nn.softmax(unl_logits, axis=-1))
        metrics["unl/acc_to_target"] = _argmax_agreement(unl_logits, targets)
        if is_soft:
            metrics["unl/target_prob"] = _mean_max_prob(targets)
        metrics["ext/loss"] = unl_loss
        # The original weights by the exact r: (L_lab*B*p + L_unl*B*p*r) / (B*p).
        data_loss = lab_loss + unlabel_ratio * unl_loss
    metrics["train/data_loss"] = data_loss
    return data_loss, metrics


def is_batch_norm_variable(variable_or_path) -> bool:
    """Whether a variable belongs to a batch-norm layer (excluded from L2).

    nst's BN layers are named `bn` or `*_bn` (`stem/bn/gamma`,
    `blocks_0/depthwise_bn/beta`); Keras' default `batch_normalization*`
    names are recognised too. Judged on the layer component, the one before
    the variable's own name.
    """
    path = getattr(variable_or_path, "path", variable_or_path)
    path = str(path).split(":")[0]
    parts = path.split("/")
    if len(parts) < 2:
        return False
    layer = parts[-2]
    return layer.endswith("bn") or layer.startswith("batch_normalization")


def l2_regularization(variables, weight_decay: float):
    """`weight_decay * sum_v 0.5 * ||v||^2` over the non-BN `variables` (§5.3).

    Coupled L2 in the loss, as the original (not decoupled weight decay):
    kernels, SE biases, the logits kernel and bias count; BN gamma/beta (and
    any BN statistics) do not. Pass the student's trainable variables only:
    the original also summed the frozen teacher's, which only shifted the
    logged loss (§11).

    Returns:
      float32 scalar.
    """
    selected = [v for v in variables if not is_batch_norm_variable(v)]
    if not weight_decay or not selected:
        return tf.constant(0.0, tf.float32)
    total = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in selected])
    return tf.cast(weight_decay, tf.float32) * total
