"""The pure computations of robustness evaluation: corruption errors and FGSM.

No model, files or flags here, so every formula is testable on hand-made numbers.

Corruption error (Hendrycks & Dietterich 2019, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", section 3), with E_{s,c} the
top-1 error at severity s of corruption c and E_clean the clean error:
  CE_c          = Σ_s E_{s,c} / Σ_s E^base_{s,c}
  mCE           = mean_c CE_c
  relative CE_c = Σ_s (E_{s,c} − E_clean) / Σ_s (E^base_{s,c} − E^base_clean)
  relative mCE  = mean_c relative CE_c
The paper's baseline is AlexNet; here it is any model evaluated by this tool
(typically the teacher), given as its results JSON.
"""

import math
from typing import Dict, Mapping, Optional, Sequence

import tensorflow as tf

# Errors per corruption name, per severity: {"gaussian_noise": {1: 0.12, 2: 0.2, ...}}.
Errors = Mapping[str, Mapping[int, float]]


def _ratio(numerator: float, denominator: float, floor: float = 0.0) -> Optional[float]:
    # A denominator <= `floor` (a baseline with zero error, or no drop) leaves the ratio
    # undefined: None in the JSON rather than Inf, which strict JSON cannot hold.
    if denominator <= floor:
        return None
    return numerator / denominator


def corruption_errors(errors: Errors, baseline: Errors) -> Dict[str, Optional[float]]:
    """CE_c = Σ_s E_{s,c} / Σ_s E^base_{s,c} over the severities of `errors`.

    `baseline` must hold every corruption and severity of `errors` (checked by
    the caller before any work; a KeyError here is a programming error).
    """
    return {c: _ratio(sum(per_s.values()), sum(baseline[c][s] for s in per_s))
            for c, per_s in errors.items()}


def relative_corruption_errors(errors: Errors, clean: float, baseline: Errors,
                               baseline_clean: float, num_examples: Optional[int] = None
                               ) -> Dict[str, Optional[float]]:
    """Relative CE_c = Σ_s (E_{s,c} − E_clean) / Σ_s (E^base_{s,c} − E^base_clean).

    Undefined (None) for a corruption that does not hurt the baseline: the
    ratio is only meaningful for a positive denominator. Errors measured on
    `num_examples` images are multiples of 1 / num_examples, so a denominator
    below half of that is zero up to rounding (a mild corruption that leaves a
    99 %-accurate baseline's mistakes as they were would otherwise divide by
    ~1e-17). Without `num_examples` only a denominator <= 0 is undefined.
    """
    min_drop = 0.5 / num_examples if num_examples else 0.0
    return {c: _ratio(sum(e - clean for e in per_s.values()),
                      sum(baseline[c][s] - baseline_clean for s in per_s), min_drop)
            for c, per_s in errors.items()}


def mean_defined(values: Sequence[Optional[float]]) -> Optional[float]:
    """Mean of the values that are not None; None when none is (or for no values)."""
    defined = [v for v in values if v is not None and math.isfinite(v)]
    return sum(defined) / len(defined) if defined else None


def mean_error(errors: Errors) -> Optional[float]:
    """The unnormalised mean corruption error: mean over c and s of E_{s,c}."""
    return mean_defined([e for per_s in errors.values() for e in per_s.values()])


def error_by_severity(errors: Errors) -> Dict[int, Optional[float]]:
    """Mean over corruptions of E_{s,c}, per severity s: the curve of error against
    severity that the report plots."""
    severities = sorted({s for per_s in errors.values() for s in per_s})
    return {s: mean_defined([per_s[s] for per_s in errors.values() if s in per_s])
            for s in severities}


def fgsm_images(model_fn, images: tf.Tensor, labels: tf.Tensor, epsilon: float) -> tf.Tensor:
    """One fast-gradient-sign step (Goodfellow et al. 2015) in pixel space.

    x' = clip(x + ε · sign(∇_x L(model_fn(x), y)), 0, 255), L the softmax
    cross-entropy against the true label. The gradient is taken with respect
    to the 0..255 pixels the model is fed: any normalisation must happen
    inside `model_fn` (nst EfficientNets normalise inside the model).

    Args:
      model_fn: float32 [B, S, S, 3] pixels -> [B, K] logits (inference mode).
      images: float32 [B, S, S, 3] in 0..255.
      labels: int [B], 0-based.
      epsilon: step in pixel units, in (0, 255].

    Returns:
      float32 [B, S, S, 3] adversarial pixels in 0..255.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(images)
        logits = tf.cast(model_fn(images), tf.float32)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.cast(labels, tf.int32), logits))
    # The sum, not the mean: sign() ignores the scale, and a per-image sum keeps
    # each image's gradient independent of the batch size.
    gradient = tape.gradient(loss, images)
    return tf.clip_by_value(images + epsilon * tf.sign(gradient), 0.0, 255.0)


def check_epsilons(epsilons: Sequence[float], flag: str = "--fgsm_epsilons"):
    """Raises ValueError naming `flag` for an ε outside (0, 255]."""
    bad = [e for e in epsilons if not (0 < e <= 255)]
    if bad:
        raise ValueError(f"{flag}: every ε must be in (0, 255] pixel units; got {bad}")
