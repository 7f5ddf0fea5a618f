"""Strategy selection, batch splitting, precision and grouped batch norm (§2.2, §5.8).

Real multi-replica runs use `MirroredStrategy` over the two logical CPUs
that conftest.py creates. TPU and multi-worker strategies cannot run here:
their branches are checked by replacing the TF classes with recorders.
"""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from nst import distribute
from nst.models import layers as nst_layers
from nst.models.efficientnet import build_model
from nst.models.group_norm import GroupBatchNormalization, group_moments, group_size

TWO_CPUS = ["/cpu:0", "/cpu:1"]
TINY = dict(small_image=True, width=0.25, depth=0.25)


@pytest.fixture(scope="module")
def mirrored():
    return tf.distribute.MirroredStrategy(TWO_CPUS)


@pytest.fixture
def no_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)


class _Recorder:
    """Stands in for a TF class or function and records how it was called."""

    def __init__(self, log, name, result=None, error=None):
        self.log, self.name, self.result, self.error = log, name, result, error

    def __call__(self, *args, **kwargs):
        self.log.append((self.name, args, kwargs))
        if self.error is not None:
            raise self.error
        return self.result if self.result is not None else self


# --- resolve_strategy ------------------------------------------------------------------

def test_default_strategy_without_flags(no_tf_config):
    strategy = distribute.resolve_strategy()
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert distribute.describe(strategy) == \
        "default strategy (no replication): 1 replica, 1 worker"


def test_explicit_devices_give_mirrored_strategy(no_tf_config):
    strategy = distribute.resolve_strategy(devices=TWO_CPUS)
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 2
    text = distribute.describe(strategy)
    assert text.startswith("MirroredStrategy: 2 replicas, 1 worker (devices: ")
    assert "CPU:0" in text and "CPU:1" in text and "\n" not in text


def test_empty_device_list_is_rejected(no_tf_config):
    with pytest.raises(ValueError, match="empty"):
        distribute.resolve_strategy(devices=[])


def test_several_local_gpus_give_mirrored_strategy(no_tf_config, monkeypatch):
    log = []
    monkeypatch.setattr(tf.config, "list_logical_devices",
                        lambda kind=None: ["/gpu:0", "/gpu:1"] if kind == "GPU" else [])
    monkeypatch.setattr(tf.distribute, "MirroredStrategy", _Recorder(log, "mirrored"))
    distribute.resolve_strategy()
    assert log == [("mirrored", (), {})]


def test_one_local_gpu_keeps_the_default_strategy(no_tf_config, monkeypatch):
    monkeypatch.setattr(tf.config, "list_logical_devices",
                        lambda kind=None: ["/gpu:0"] if kind == "GPU" else [])
    assert distribute.resolve_strategy() is tf.distribute.get_strategy()


def _tf_config(monkeypatch, cluster):
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": 0}}))


@pytest.mark.parametrize("cluster", [
    {"worker": ["host0:2222", "host1:2222"]},
    {"chief": ["host0:2222"], "worker": ["host1:2222"]},
])
def test_multi_worker_tf_config_gives_multi_worker_strategy(monkeypatch, cluster):
    log = []
    _tf_config(monkeypatch, cluster)
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", _Recorder(log, "mwms"))
    monkeypatch.setattr(tf.distribute, "MirroredStrategy", _Recorder(log, "mirrored"))
    distribute.resolve_strategy()
    assert log == [("mwms", (), {})]


def test_single_worker_tf_config_is_local(monkeypatch):
    _tf_config(monkeypatch, {"worker": ["host0:2222"]})
    assert distribute.resolve_strategy() is tf.distribute.get_strategy()


def test_bad_tf_config_is_explained(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not a JSON object"):
        distribute.resolve_strategy()
    _tf_config(monkeypatch, {"worker": ["a:1", "b:1"], "ps": ["c:1"]})
    with pytest.raises(ValueError, match="parameter server"):
        distribute.resolve_strategy()


def test_devices_conflict_with_multi_worker_tf_config(monkeypatch):
    _tf_config(monkeypatch, {"worker": ["host0:2222", "host1:2222"]})
    with pytest.raises(ValueError, match="2 workers"):
        distribute.resolve_strategy(devices=TWO_CPUS)


@pytest.fixture
def fake_tpu(monkeypatch):
    """Replaces the TPU resolver, connection, initialisation and strategy."""
    log = []
    fakes = {
        "resolver": _Recorder(log, "resolver", result="RESOLVER"),
        "connect": _Recorder(log, "connect"),
        "initialize": _Recorder(log, "initialize"),
        "strategy": _Recorder(log, "strategy", result="TPU_STRATEGY"),
    }
    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", fakes["resolver"])
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", fakes["connect"])
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", fakes["initialize"])
    monkeypatch.setattr(tf.distribute, "TPUStrategy", fakes["strategy"])
    return log, fakes


def test_tpu_branch_resolves_connects_initialises_in_order(fake_tpu, no_tf_config):
    log, _ = fake_tpu
    strategy = distribute.resolve_strategy(tpu="my-tpu", use_tpu=True, gcp_project="proj",
                                           tpu_zone="europe-west4-a")
    assert strategy == "TPU_STRATEGY"
    assert log == [
        ("resolver", (), dict(tpu="my-tpu", zone="europe-west4-a", project="proj")),
        ("connect", ("RESOLVER",), {}),
        ("initialize", ("RESOLVER",), {}),
        ("strategy", ("RESOLVER",), {}),
    ]


def test_tpu_branch_on_a_tpu_vm_and_with_master(fake_tpu, no_tf_config):
    log, _ = fake_tpu
    distribute.resolve_strategy(use_tpu=True, tpu="", gcp_project="")
    assert log[0] == ("resolver", (), dict(tpu=None, zone=None, project=None))
    log.clear()
    # `master` wins over `tpu`, as in the original.
    distribute.resolve_strategy(use_tpu=True, tpu="name", master="grpc://10.0.0.2:8470")
    assert log[0] == ("resolver", (), dict(tpu="grpc://10.0.0.2:8470", zone=None, project=None))


@pytest.mark.parametrize("stage,error", [
    ("resolver", ValueError("Please provide a TPU Name to connect to.")),
    ("connect", tf.errors.UnavailableError(None, None, "failed to connect to all addresses")),
    ("initialize", tf.errors.NotFoundError(None, None, "TPU system not found")),
])
def test_unreachable_tpu_is_a_clear_error(fake_tpu, no_tf_config, stage, error):
    _, fakes = fake_tpu
    fakes[stage].error = error
    with pytest.raises(RuntimeError, match="no TPU is reachable") as info:
        distribute.resolve_strategy(tpu="my-tpu", use_tpu=True, tpu_zone="us-central1-b")
    message = str(info.value)
    assert "my-tpu" in message and "us-central1-b" in message and "use_tpu=False" in message
    assert info.value.__cause__ is error


def test_tpu_settings_without_use_tpu_are_rejected(fake_tpu, no_tf_config):
    log, _ = fake_tpu
    with pytest.raises(ValueError, match="tpu given but use_tpu=False"):
        distribute.resolve_strategy(tpu="my-tpu")
    with pytest.raises(ValueError, match="gcp_project, master"):
        distribute.resolve_strategy(master="grpc://x:1", gcp_project="p")
    with pytest.raises(ValueError, match="cannot be combined"):
        distribute.resolve_strategy(use_tpu=True, devices=TWO_CPUS)
    assert log == []


# --- per_replica_batch_size --------------------------------------------------------------

def test_per_replica_batch_size(mirrored):
    assert distribute.per_replica_batch_size(128, mirrored) == 64
    assert distribute.per_replica_batch_size(7) == 7  # default strategy: one replica
    with pytest.raises(ValueError, match=r"127 is not divisible by the 2 replicas.*126 or 128"):
        distribute.per_replica_batch_size(127, mirrored)
    for bad in (0, -4, 2.0, True):
        with pytest.raises(ValueError, match="positive integer"):
            distribute.per_replica_batch_size(bad, mirrored)


# --- group_size --------------------------------------------------------------------------

@pytest.mark.parametrize("flag,replicas,expected", [
    (-1, 1, 1), (-1, 2, 1), (-1, 8, 1),            # <= 8 replicas: per replica
    (-1, 16, 8), (-1, 64, 8), (-1, 128, 16), (-1, 2048, 256),  # max(8, n // 8)
    (-2, 1, 1), (-2, 2, 2), (-2, 32, 32),          # one global group
    (0, 4, 1), (1, 4, 1), (0, 1, 1),               # per replica
    (2, 2, 2), (2, 8, 2), (4, 32, 4), (32, 32, 32),  # explicit g
])
def test_group_size_table(flag, replicas, expected):
    assert group_size(flag, replicas) == expected


@pytest.mark.parametrize("flag,replicas,match", [
    (3, 4, "group size 3 .* does not divide the 4 replicas"),
    (8, 4, "does not divide"),
    (-1, 12, "group size 8 .*num_shards_per_group=-1.* does not divide the 12"),
    (-3, 8, "must be -2, -1, 0 or a positive"),
    (2, 0, "num_replicas must be >= 1"),
    (2.0, 4, "must be an integer"),
])
def test_group_size_errors(flag, replicas, match):
    with pytest.raises(ValueError, match=match):
        group_size(flag, replicas)


# --- GroupBatchNormalization -------------------------------------------------------------

def _inputs(batch, seed=0, channels=5):
    """`[batch, 3, 3, channels]` with per-channel offsets; halves differ in scale."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, 3, 3, channels)) * rng.uniform(0.5, 3, channels)
    x += rng.uniform(-2, 2, channels)
    x[batch // 2:] = 1.5 * x[batch // 2:] + 0.7  # replicas see different statistics
    return x.astype("float32")


def _random_weights(channels, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.5, 1.5, channels).astype("float32"),    # gamma
            rng.normal(size=channels).astype("float32"),           # beta
            rng.normal(size=channels).astype("float32"),           # moving_mean
            rng.uniform(0.5, 2.0, channels).astype("float32")]     # moving_variance


def _plain_bn(weights, shape):
    layer = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3)
    layer.build(shape)
    layer.set_weights(weights)
    return layer


def _reference(x, weights, training=True):
    """Plain Keras BN over `x` without a strategy: (outputs, moving_mean, moving_var)."""
    layer = _plain_bn(weights, x.shape)
    y = layer(x, training=training).numpy()
    return y, layer.moving_mean.numpy(), layer.moving_variance.numpy()


def _replicated(strategy, make_layer, weights, x, w=None):
    """Runs a training call of `make_layer()` on `x` split over the replicas.

    Each replica also takes gradients of its share of `sum(y * w)`.

    Returns:
      dict with 'y' (outputs concatenated in replica order), 'dx' (input
      gradients, concatenated), 'dgamma'/'dbeta' (summed over replicas),
      'moving_mean'/'moving_variance' (list: each replica's copy).
    """
    n = strategy.num_replicas_in_sync
    with strategy.scope():
        layer = make_layer()
        layer.build(x.shape)
        layer.set_weights(weights)
    w = np.ones_like(x) if w is None else w
    xs, ws = np.split(x, n), np.split(w, n)
    dist_x = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(xs[ctx.replica_id_in_sync_group]))
    dist_w = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(ws[ctx.replica_id_in_sync_group]))

    def replica_fn(x_local, w_local):
        with tf.GradientTape() as tape:
            tape.watch(x_local)
            y = layer(x_local, training=True)
            loss = tf.reduce_sum(y * w_local)
        dx, dgamma, dbeta = tape.gradient(loss, [x_local, layer.gamma.value, layer.beta.value])
        return y, dx, dgamma, dbeta

    @tf.function
    def step(dx_, dw_):
        y, dx, dgamma, dbeta = strategy.run(replica_fn, args=(dx_, dw_))
        return (y, dx, strategy.reduce("SUM", dgamma, axis=None),
                strategy.reduce("SUM", dbeta, axis=None))

    y, dx, dgamma, dbeta = step(dist_x, dist_w)
    local = strategy.experimental_local_results
    return dict(
        y=np.concatenate([t.numpy() for t in local(y)]),
        dx=np.concatenate([t.numpy() for t in local(dx)]),
        dgamma=dgamma.numpy(), dbeta=dbeta.numpy(),
        moving_mean=[v.numpy() for v in local(layer.moving_mean.value)],
        moving_variance=[v.numpy() for v in local(layer.moving_variance.value)],
        layer=layer)


def _reference_grads(x, weights, w):
    layer = _plain_bn(weights, x.shape)
    x_t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        loss = tf.reduce_sum(layer(x_t, training=True) * w)
    dx, dgamma, dbeta = tape.gradient(loss, [x_t, layer.gamma.value, layer.beta.value])
    return dx.numpy(), dgamma.numpy(), dbeta.numpy()


def test_group_of_all_replicas_equals_bn_over_the_global_batch(mirrored):
    x = _inputs(8)
    weights = _random_weights(5)
    w = np.random.default_rng(2).normal(size=x.shape).astype("float32")
    got = _replicated(mirrored, lambda: GroupBatchNormalization(group_size=2), weights, x, w)
    y_ref, mean_ref, var_ref = _reference(x, weights)
    np.testing.assert_allclose(got["y"], y_ref, rtol=1e-4, atol=1e-4)
    for replica in range(2):  # both replicas of the group update alike
        np.testing.assert_allclose(got["moving_mean"][replica], mean_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["moving_variance"][replica], var_ref, rtol=1e-5, atol=1e-6)
    # Gradients flow through the shared statistics (the all-reduce's gradient).
    dx_ref, dgamma_ref, dbeta_ref = _reference_grads(x, weights, w)
    np.testing.assert_allclose(got["dx"], dx_ref, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(got["dgamma"], dgamma_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["dbeta"], dbeta_ref, rtol=1e-5, atol=1e-5)
    # The test inputs make per-replica statistics clearly different.
    y_local = np.concatenate([_reference(half, weights)[0] for half in np.split(x, 2)])
    assert np.abs(y_local - y_ref).max() > 0.1


@pytest.mark.parametrize("make_layer", [
    lambda: GroupBatchNormalization(group_size=1),
    lambda: keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3),
], ids=["group_size_1", "keras_bn"])
def test_group_size_one_is_per_replica_bn(mirrored, make_layer):
    x = _inputs(8)
    weights = _random_weights(5)
    got = _replicated(mirrored, make_layer, weights, x)
    for replica, half in enumerate(np.split(x, 2)):
        y_ref, mean_ref, var_ref = _reference(half, weights)
        np.testing.assert_allclose(got["y"][4 * replica:4 * replica + 4], y_ref,
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["moving_mean"][replica], mean_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["moving_variance"][replica], var_ref,
                                   rtol=1e-5, atol=1e-6)


def test_group_size_must_divide_the_replicas(mirrored):
    with pytest.raises(ValueError, match="group size 4 does not divide the 2 replicas"):
        _replicated(mirrored, lambda: GroupBatchNormalization(group_size=4),
                    _random_weights(5), _inputs(8))


def test_grouped_inference_uses_moving_statistics(mirrored):
    x = _inputs(8)
    weights = _random_weights(5)
    with mirrored.scope():
        layer = GroupBatchNormalization(group_size=2)
        layer.build(x.shape)
        layer.set_weights(weights)
    y = mirrored.run(tf.function(lambda: layer(tf.constant(x[:4]), training=False)))
    y_ref = _reference(x[:4], weights, training=False)[0]
    for t in mirrored.experimental_local_results(y):
        np.testing.assert_array_equal(t.numpy(), y_ref)


class _FakeReplicaContext:
    """Simulates n replicas in two passes: record every contribution, then sum."""

    def __init__(self, n, replica_id, contributions, totals=None):
        self.num_replicas_in_sync = n
        self.replica_id_in_sync_group = tf.constant(replica_id)
        self.contributions, self.totals = contributions, totals

    def all_reduce(self, op, value):
        assert op == tf.distribute.ReduceOp.SUM
        if self.totals is None:
            self.contributions.append(value)
            return value
        return self.totals


@pytest.mark.parametrize("replicas,size", [(4, 2), (6, 2), (6, 3), (8, 4), (4, 4)])
def test_group_moments_for_several_groups(replicas, size):
    """Groups beyond two CPUs: each replica gets exactly its own group's moments."""
    rng = np.random.default_rng(replicas * 10 + size)
    shards = [rng.normal(loc=r, scale=1 + r, size=(6, 3)).astype("float32")
              for r in range(replicas)]
    moments = [(s.mean(0), s.var(0)) for s in shards]
    contributions = []
    for r, (m, v) in enumerate(moments):
        group_moments(tf.constant(m), tf.constant(v), size,
                      _FakeReplicaContext(replicas, r, contributions))
    assert all(tuple(c.shape) == (replicas // size, 2, 3) for c in contributions)
    totals = tf.add_n(contributions)
    for r, (m, v) in enumerate(moments):
        mean, var = group_moments(tf.constant(m), tf.constant(v), size,
                                  _FakeReplicaContext(replicas, r, [], totals))
        group = np.concatenate(shards[r // size * size:(r // size + 1) * size])
        np.testing.assert_allclose(mean.numpy(), group.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(var.numpy(), group.var(0), rtol=1e-4, atol=1e-5)


def _same_as_keras_bn(call):
    """Checks GroupBatchNormalization(g=2) against Keras BN through `call(layer, x, training)`."""
    x = _inputs(8)
    weights = _random_weights(5)
    ours = GroupBatchNormalization(group_size=2, momentum=0.99, epsilon=1e-3)
    ours.build(x.shape)
    ours.set_weights(weights)
    theirs = _plain_bn(weights, x.shape)
    for training in (True, False, True):
        np.testing.assert_array_equal(np.asarray(call(ours, x, training)),
                                      np.asarray(call(theirs, x, training)))
    for a, b in zip(ours.weights, theirs.weights):
        assert a.name == b.name
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_without_strategy_it_is_keras_batch_norm():
    _same_as_keras_bn(lambda layer, x, training: layer(x, training=training))
    layer = GroupBatchNormalization(group_size=2)
    layer.build((None, 4))
    assert [w.name for w in layer.weights] == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert isinstance(layer, keras.layers.BatchNormalization)


def test_compiles_with_xla_on_one_device():
    def call(layer, x, training):
        fn = tf.function(lambda t: layer(t, training=training), jit_compile=True)
        return fn(tf.constant(x))
    _same_as_keras_bn(call)


def test_layer_config_round_trip_and_argument_checks():
    layer = GroupBatchNormalization(group_size=4, momentum=0.99, epsilon=1e-3, name="bn")
    clone = GroupBatchNormalization.from_config(layer.get_config())
    assert (clone.group_size, clone.momentum, clone.epsilon, clone.name) == (4, 0.99, 1e-3, "bn")
    for bad in (0, -1, 1.5, None):
        with pytest.raises(ValueError, match="positive integer"):
            GroupBatchNormalization(group_size=bad)
    with pytest.raises(ValueError, match="synchronized"):
        GroupBatchNormalization(group_size=2, synchronized=True)


def test_batch_norm_factory():
    plain = nst_layers.batch_norm("bn")
    assert type(plain) is keras.layers.BatchNormalization
    grouped = nst_layers.batch_norm("bn", 2)
    assert isinstance(grouped, GroupBatchNormalization) and grouped.group_size == 2
    assert (grouped.momentum, grouped.epsilon, grouped.name) == (0.99, 1e-3, "bn")


# --- EfficientNet with grouped batch norm -------------------------------------------------

def _bn_layers(model):
    return [l for l in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(l, keras.layers.BatchNormalization)]


def test_grouped_model_has_the_same_variables():
    plain = build_model("efficientnet-b0", 10, **TINY)[0]
    grouped = build_model("efficientnet-b0", 10, bn_group_size=2, **TINY)[0]
    assert [v.path for v in grouped.weights] == [v.path for v in plain.weights]
    assert all(type(l) is keras.layers.BatchNormalization for l in _bn_layers(plain))
    bns = _bn_layers(grouped)
    assert bns and all(isinstance(l, GroupBatchNormalization) and l.group_size == 2
                       for l in bns)
    assert grouped.get_config()["bn_group_size"] == 2
    assert grouped.get_layer("stem").get_config()["bn_group_size"] == 2


def test_tiny_grouped_efficientnet_trains_one_step(mirrored):
    global_batch = 8
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (global_batch, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, global_batch).astype("int32")
    with mirrored.scope():
        model = build_model("efficientnet-b0", 10, bn_group_size=2, **TINY)[0]
        optimizer = keras.optimizers.SGD(0.1)
        optimizer.build(model.trainable_variables)
    before = [v.numpy().copy() for v in model.trainable_variables]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(global_batch)
    batch = next(iter(mirrored.experimental_distribute_dataset(dataset)))

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(y, logits,
                                                                       from_logits=True)
            loss = tf.reduce_sum(per_example) / global_batch
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def step(x, y):
        return mirrored.reduce("SUM", mirrored.run(replica_step, args=(x, y)), axis=None)

    loss = float(step(*batch))
    assert np.isfinite(loss) and loss > 0
    after = [v.numpy() for v in model.trainable_variables]
    assert sum(not np.array_equal(a, b) for a, b in zip(before, after)) > len(before) // 2
    assert all(np.isfinite(a).all() for a in after)
    # One group of both replicas: both copies of the moving statistics agree
    # (per-replica BN would leave them different).
    for bn in _bn_layers(model):
        m0, m1 = mirrored.experimental_local_results(bn.moving_mean.value)
        np.testing.assert_allclose(m0.numpy(), m1.numpy(), rtol=1e-5, atol=1e-6)


# --- set_precision ------------------------------------------------------------------------

def test_set_precision_bfloat16_keeps_float32_variables_and_logits():
    try:
        assert distribute.set_precision(True) == "mixed_bfloat16"
        model = build_model("efficientnet-b0", 10, **TINY)[0]
        logits = model(np.zeros((2, 32, 32, 3), "float32"), training=False)
        assert logits.dtype == tf.float32
        assert model.get_layer("stem").compute_dtype == "bfloat16"
        assert model.get_layer("blocks_0").compute_dtype == "bfloat16"
        assert all(v.dtype == "float32" for v in model.weights)
    finally:
        assert distribute.set_precision(False) == "float32"
    assert keras.config.dtype_policy().name == "float32"


_FOUR_REPLICAS_SCRIPT = r"""
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import nst, keras, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 4)
from nst.models.group_norm import GroupBatchNormalization
strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(4)])
rng = np.random.default_rng(0)
shards = [rng.normal(r, 1 + r, (3, 2, 2, 5)).astype("float32") for r in range(4)]
with strategy.scope():
    layer = GroupBatchNormalization(group_size=2, momentum=0.99, epsilon=1e-3)
    layer.build((None, 2, 2, 5))
values = strategy.experimental_distribute_values_from_function(
    lambda ctx: tf.constant(shards[ctx.replica_id_in_sync_group]))
out = tf.function(lambda v: strategy.run(lambda x: layer(x, training=True), args=(v,)))(values)
out = [t.numpy() for t in strategy.experimental_local_results(out)]
means = [m.numpy() for m in strategy.experimental_local_results(layer.moving_mean.value)]
for group in (0, 1):
    x = np.concatenate(shards[2 * group:2 * group + 2])
    ref = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3)
    y = ref(x, training=True).numpy()
    np.testing.assert_allclose(np.concatenate(out[2 * group:2 * group + 2]), y, atol=1e-4)
    for r in (2 * group, 2 * group + 1):
        np.testing.assert_allclose(means[r], ref.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
print("FOUR_REPLICAS_OK")
"""


def test_two_groups_of_two_on_four_replicas():
    """A real collective with two groups needs four replicas: run it in a fresh process
    (this process already has its two logical CPUs)."""
    result = subprocess.run([sys.executable, "-c", _FOUR_REPLICAS_SCRIPT], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "FOUR_REPLICAS_OK" in result.stdout, \
        result.stdout[-2000:] + result.stderr[-4000:]
