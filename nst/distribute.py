"""Choosing the `tf.distribute` strategy, the per-replica batch and the precision.

The original ran under `TPUEstimator` (§2.2 flags `use_tpu`, `tpu`,
`gcp_project`, `tpu_zone`, `master`; §5.8 `use_bfloat16`). The port picks a
strategy once per process and hands it to the custom training loop:

    strategy = resolve_strategy(use_tpu=FLAGS.use_tpu, tpu=FLAGS.tpu, ...)
    logging.info(describe(strategy))
    batch = per_replica_batch_size(FLAGS.train_batch_size, strategy)
    set_precision(FLAGS.use_bfloat16)          # before building any model
    with strategy.scope():
        model, _ = build_model(..., bn_group_size=group_size(
            FLAGS.num_shards_per_group, strategy.num_replicas_in_sync))

Selection order in `resolve_strategy` (first match wins):
  1. `use_tpu=True`           -> `TPUStrategy` (connects and initialises the TPU system).
  2. `devices=[...]`          -> `MirroredStrategy(devices)` (e.g. two logical CPUs in tests).
  3. `TF_CONFIG` with > 1 worker (chief + workers) -> `MultiWorkerMirroredStrategy`.
  4. more than one local GPU  -> `MirroredStrategy()` over all of them.
  5. otherwise                -> the default strategy (`tf.distribute.get_strategy()`):
     one CPU or one GPU, no replication.

Call `resolve_strategy` once per process: TPU system initialisation and
multi-worker collectives must not be set up twice.
"""

import json
import os
from typing import Optional, Sequence

import keras
import tensorflow as tf

# Keras mixed-precision policy names for `set_precision`.
BFLOAT16_POLICY = "mixed_bfloat16"
FLOAT32_POLICY = "float32"


def _is_set(value) -> bool:
    # absl string flags are often '' rather than None when not given.
    return value is not None and value != ""


def _tpu_strategy(tpu, gcp_project, tpu_zone, master):
    """Connects to a TPU and returns a `TPUStrategy`.

    `master` (a `grpc://host:port` address) wins over `tpu`, as in the
    original, where setting `master` skipped the name-based resolver; a grpc
    address needs neither project nor zone.
    """
    address = master if _is_set(master) else tpu
    where = (f"tpu={address!r}, gcp_project={gcp_project!r}, tpu_zone={tpu_zone!r}"
             if _is_set(address) else "no TPU name given (auto-detection on a TPU VM)")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=address if _is_set(address) else None,
            zone=tpu_zone if _is_set(tpu_zone) else None,
            project=gcp_project if _is_set(gcp_project) else None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        # The resolver's own messages ("Please provide a TPU Name to connect
        # to.") do not say what to change on our side.
        raise RuntimeError(
            f"use_tpu=True but no TPU is reachable ({where}): {type(e).__name__}: {e}. "
            "On a Cloud TPU VM leave `tpu` unset (or 'local'); elsewhere pass the TPU "
            "name with `tpu`, `gcp_project` and `tpu_zone`, or a grpc:// address with "
            "`master`. To train on CPU/GPU set use_tpu=False.") from e


def _tf_config_workers() -> int:
    """Number of workers (chief + workers) described by `TF_CONFIG`, 0 if unset."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return 0
    try:
        config = json.loads(raw)
        cluster = config.get("cluster", {}) or {}
    except (ValueError, AttributeError) as e:
        raise ValueError(f"TF_CONFIG is not a JSON object with a 'cluster' entry: {raw!r}") from e
    if not isinstance(cluster, dict):
        raise ValueError(f"TF_CONFIG 'cluster' must be a mapping of job name to addresses: {raw!r}")
    if cluster.get("ps"):
        # Parameter-server training needs a coordinator-driven loop, which the
        # nst training loop is not.
        raise ValueError("TF_CONFIG describes 'ps' (parameter server) jobs; nst supports only "
                         "synchronous training (chief/worker jobs, MultiWorkerMirroredStrategy)")
    return len(cluster.get("chief", []) or []) + len(cluster.get("worker", []) or [])


def resolve_strategy(tpu: Optional[str] = None,
                     use_tpu: bool = False,
                     gcp_project: Optional[str] = None,
                     tpu_zone: Optional[str] = None,
                     master: Optional[str] = None,
                     devices: Optional[Sequence[str]] = None) -> tf.distribute.Strategy:
    """Returns the `tf.distribute.Strategy` the flags and the machine call for.

    See the module docstring for the selection order.

    Args:
      tpu: Cloud TPU name or grpc address (§2.2 `tpu`); needs `use_tpu=True`.
      use_tpu: run on TPU (§2.2 `use_tpu`; the port defaults to False).
      gcp_project, tpu_zone: where to look the TPU name up; need `use_tpu=True`.
      master: grpc address of the TPU worker; overrides `tpu`; needs `use_tpu=True`.
      devices: explicit local devices for a `MirroredStrategy`, e.g.
        `["/gpu:0", "/gpu:1"]` or `["/cpu:0", "/cpu:1"]`.

    Raises:
      ValueError: inconsistent arguments (TPU settings without `use_tpu`,
        `devices` together with TPU or a multi-worker `TF_CONFIG`, an empty
        `devices` list, an unusable `TF_CONFIG`).
      RuntimeError: `use_tpu=True` but no TPU can be reached.
    """
    tpu_settings = {"tpu": tpu, "gcp_project": gcp_project, "tpu_zone": tpu_zone,
                    "master": master}
    if use_tpu:
        if devices is not None:
            raise ValueError("`devices` selects local devices for MirroredStrategy; "
                             "it cannot be combined with use_tpu=True")
        return _tpu_strategy(tpu, gcp_project, tpu_zone, master)
    given = sorted(k for k, v in tpu_settings.items() if _is_set(v))
    if given:
        # Silently training on CPU when a TPU was named would waste a run.
        raise ValueError(f"{', '.join(given)} given but use_tpu=False; set use_tpu=True to "
                         "run on that TPU, or drop the TPU settings")

    num_workers = _tf_config_workers()
    if devices is not None:
        devices = list(devices)
        if not devices:
            raise ValueError("`devices` is empty; pass None to choose devices automatically")
        if num_workers > 1:
            raise ValueError(f"`devices` is for one machine, but TF_CONFIG describes "
                             f"{num_workers} workers")
        return tf.distribute.MirroredStrategy(devices)
    if num_workers > 1:
        # Reads TF_CONFIG itself; every worker must run the same program.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _num_workers(strategy) -> int:
    extended = strategy.extended
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return int(extended.num_hosts)
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None:
        spec = resolver.cluster_spec().as_dict()
        count = len(spec.get("chief", [])) + len(spec.get("worker", []))
        if count:
            return count
    return 1


def describe(strategy: Optional[tf.distribute.Strategy] = None) -> str:
    """A one-line description for logs, e.g.

    'MirroredStrategy: 2 replicas, 1 worker (devices: /job:localhost/.../CPU:0, ...)'.

    Args:
      strategy: the strategy; default: the current one.
    """
    strategy = strategy or tf.distribute.get_strategy()
    kind = type(strategy).__name__
    if kind == "_DefaultDistributionStrategy":
        kind = "default strategy (no replication)"
    replicas = strategy.num_replicas_in_sync
    workers = _num_workers(strategy)
    text = (f"{kind}: {replicas} replica{'s' if replicas != 1 else ''}, "
            f"{workers} worker{'s' if workers != 1 else ''}")
    try:
        devices = strategy.extended.worker_devices
    except (RuntimeError, NotImplementedError, AttributeError):
        devices = ()  # the default strategy has no device list
    if devices and len(devices) <= 8:
        text += f" (devices: {', '.join(devices)})"
    return text


def per_replica_batch_size(global_batch: int,
                           strategy: Optional[tf.distribute.Strategy] = None) -> int:
    """Splits a global batch over the replicas.

    The original's `train_batch_size` is global and TPUEstimator gave each of
    the n cores `train_batch_size / n` images (§2.2, §5.1); the learning rate
    is scaled with the global batch (§5.6), so the split must be exact.

    Args:
      global_batch: images per step over all replicas.
      strategy: default: the current one.

    Returns:
      global_batch // num_replicas_in_sync.

    Raises:
      ValueError: global_batch is not a positive multiple of the replica count.
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise ValueError(f"global batch size must be a positive integer, got {global_batch!r}")
    if global_batch % replicas:
        lower = global_batch - global_batch % replicas
        raise ValueError(
            f"global batch size {global_batch} is not divisible by the {replicas} replicas "
            f"of {type(strategy).__name__}; use a multiple of {replicas} "
            f"(e.g. {lower or replicas} or {lower + replicas})")
    return global_batch // replicas


def set_precision(use_bfloat16: bool) -> str:
    """Sets the global Keras dtype policy (§2.2 `use_bfloat16`, §5.8).

    `True` selects `mixed_bfloat16`: layers compute in bfloat16 while their
    variables stay float32 (the original's bfloat16 scope with float32
    variables). The nst EfficientNet still normalises its input pixels in
    float32, batch norm computes its statistics in float32 (Keras upcasts),
    and the logits layer runs in float32, so logits are float32 `[B, K]` as
    in the original, which casts them before the softmax and the loss.
    `False` restores plain `float32`.

    The policy is read when layers are created: call this before building
    the model (and before the teacher).

    Returns:
      the policy name that is now active.
    """
    name = BFLOAT16_POLICY if use_bfloat16 else FLOAT32_POLICY
    keras.config.set_dtype_policy(name)
    return name
