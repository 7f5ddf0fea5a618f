"""Batch norm whose training statistics are shared by groups of replicas (§5.8).

The original's `num_shards_per_group` flag lets g consecutive TPU cores
normalise with common batch statistics: each replica's mean and
mean-of-squares are averaged over its group, and variance = E[x²] − E[x]².
Keras' `BatchNormalization(synchronized=True)` only offers g = all replicas.

`group_size(num_shards_per_group, num_replicas)` turns the flag into g;
`GroupBatchNormalization(group_size=g)` is a `keras.layers.BatchNormalization`
that uses those group statistics when it trains inside a replica context
with more than one replica, and is plain Keras batch norm everywhere else.
"""

import keras
import tensorflow as tf

# Above this many replicas the default (-1) groups replicas (§5.8).
_DEFAULT_PER_REPLICA_LIMIT = 8


def group_size(num_shards_per_group: int, num_replicas: int) -> int:
    """Number g of consecutive replicas that share batch-norm statistics.

    | num_shards_per_group | g                                            |
    |----------------------|----------------------------------------------|
    | -1 (default)         | 1 if n <= 8, else max(8, n // 8)             |
    | -2                   | n (one group: global batch norm)             |
    | 0 or 1               | 1 (per-replica statistics)                   |
    | g > 1                | g                                            |

    The table is applied on every platform. The original grouped only on TPU
    (on CPU/GPU it always used per-device statistics); pass 1 to reproduce
    that on a multi-GPU or multi-worker run with more than 8 replicas.

    Args:
      num_shards_per_group: the §2.2 flag.
      num_replicas: n = `strategy.num_replicas_in_sync`.

    Returns:
      g, a divisor of n (1 = plain per-replica batch norm).

    Raises:
      ValueError: an unknown flag value, n < 1, or a g that does not divide n.
    """
    for label, value in (("num_shards_per_group", num_shards_per_group),
                         ("num_replicas", num_replicas)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{label} must be an integer, got {value!r}")
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    if num_shards_per_group == -1:
        if num_replicas <= _DEFAULT_PER_REPLICA_LIMIT:
            return 1
        size = max(_DEFAULT_PER_REPLICA_LIMIT, num_replicas // _DEFAULT_PER_REPLICA_LIMIT)
    elif num_shards_per_group == -2:
        return num_replicas
    elif num_shards_per_group in (0, 1):
        return 1
    elif num_shards_per_group > 1:
        size = num_shards_per_group
    else:
        raise ValueError(f"num_shards_per_group must be -2, -1, 0 or a positive group size, "
                         f"got {num_shards_per_group}")
    if num_replicas % size:
        raise ValueError(
            f"batch-norm group size {size} (num_shards_per_group={num_shards_per_group}) "
            f"does not divide the {num_replicas} replicas; choose a divisor of "
            f"{num_replicas}, -2 for one global group, or 1 for per-replica statistics")
    return size


def group_moments(mean, variance, size, replica_context):
    """Averages per-replica moments over groups of consecutive replicas.

    With one collective for any group size: replica r writes [mean, E[x²]]
    into row r // g of a zero `[num_groups, 2, C]` tensor, the rows are
    summed over all replicas, and r reads back its own row divided by g.
    The all-reduce has a gradient (the summed upstream gradient), so
    training backpropagates through the other replicas' use of the statistics.

    Args:
      mean, variance: this replica's moments, `[C]` float32 (biased variance).
      size: g, dividing `replica_context.num_replicas_in_sync`.
      replica_context: a `tf.distribute.ReplicaContext` (or any object with
        `num_replicas_in_sync`, `replica_id_in_sync_group` and `all_reduce`).

    Returns:
      (mean, variance) of the group, `[C]` each; variance = E[x²] − E[x]²,
      clipped at 0 against rounding.
    """
    num_replicas = replica_context.num_replicas_in_sync
    if num_replicas % size:
        raise ValueError(f"batch-norm group size {size} does not divide the "
                         f"{num_replicas} replicas in sync; build the model with "
                         f"bn_group_size=group_size(num_shards_per_group, {num_replicas})")
    num_groups = num_replicas // size
    # E[x²] = Var[x] + E[x]² per replica; the group's E[x²] is their average.
    local = tf.stack([mean, variance + tf.square(mean)])            # [2, C]
    replica_id = tf.cast(replica_context.replica_id_in_sync_group, tf.int32)
    group = replica_id // size
    slot = tf.one_hot(group, num_groups, dtype=local.dtype)         # [G]
    table = slot[:, None, None] * local[None]                       # [G, 2, C]
    table = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, table)
    group_mean, group_mean_sq = tf.unstack(
        tf.gather(table, group) / tf.cast(size, local.dtype))       # [C], [C]
    group_var = tf.maximum(group_mean_sq - tf.square(group_mean), 0.0)
    return group_mean, group_var


@keras.saving.register_keras_serializable(package="nst")
class GroupBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with statistics shared by replica groups.

    Training inside `strategy.run` with n > 1 replicas: the batch mean and
    variance are those of the group of g consecutive replicas this replica
    belongs to (§5.8), and the moving statistics are updated with them (so
    the moving variance gets the group's biased variance). Replicas of one
    group therefore keep identical moving statistics.

    Everywhere else (inference, g == 1, the default strategy, a
    single-replica strategy, cross-replica context) it is exactly
    `keras.layers.BatchNormalization`: the same variables (gamma, beta,
    moving_mean, moving_variance) under the same names, so checkpoints and
    the converters treat both alike.

    Input and output: `[..., C]` (channels on `axis`, default last).

    Args:
      group_size: g >= 1; must divide the replica count when used under a
        strategy with more than one replica (see `group_size()`).
      **kwargs: `keras.layers.BatchNormalization` arguments (not
        `synchronized`, which is the g = n special case).
    """

    def __init__(self, group_size=1, **kwargs):
        if kwargs.get("synchronized"):
            raise ValueError("GroupBatchNormalization does its own cross-replica statistics; "
                             "use group_size=num_replicas instead of synchronized=True")
        super().__init__(**kwargs)
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
        self.group_size = group_size

    def build(self, input_shape):
        # The training statistics come from the `_moments` hook below, which
        # Keras 3 BatchNormalization.call uses; fail loudly if a Keras
        # upgrade removes it rather than silently fall back to per-replica BN.
        if not callable(getattr(keras.layers.BatchNormalization, "_moments", None)):
            raise RuntimeError("keras.layers.BatchNormalization has no `_moments` hook in this "
                               f"Keras version ({keras.__version__}); update "
                               "GroupBatchNormalization")
        super().build(input_shape)

    def _moments(self, inputs, mask):
        # Called by BatchNormalization.call only when training; `inputs` are
        # already float32 there, even under a bfloat16 policy.
        mean, variance = super()._moments(inputs, mask)
        if self.group_size == 1:
            return mean, variance
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            # Cross-replica context (e.g. symbolic model construction inside
            # `strategy.scope()`) or a single replica: the local batch is the group.
            return mean, variance
        return group_moments(mean, variance, self.group_size, context)

    def get_config(self):
        config = super().get_config()
        config.update(group_size=self.group_size)
        return config
