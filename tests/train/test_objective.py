"""The Noisy Student objective against hand values and NumPy formulas (spec §5.2-§5.3)."""

import math

import numpy as np
import pytest

import tensorflow as tf

from nst.models.efficientnet import build_model
from nst.train import objective


# --- NumPy reference, written from the spec's formulas ------------------------

def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_ce(q, z):
    """-sum_k q_k log softmax(z)_k per row."""
    return -(np.asarray(q, np.float64) * np.log(np_softmax(z))).sum(-1)


def np_one_hot(y, k):
    return np.eye(k)[np.asarray(y)]


def np_smooth(one_hot, eps):
    return (1 - eps) * one_hot + eps / one_hot.shape[-1]


def np_temper(p, tau):
    q = np.asarray(p, np.float64) ** (1.0 / tau)
    return q / q.sum(-1, keepdims=True)


def loss(logits, labels, **kwargs):
    kwargs.setdefault("label_smoothing", 0.0)
    data_loss, metrics = objective.noisy_student_loss(
        tf.constant(logits, tf.float32), tf.constant(labels, tf.int32), **kwargs)
    return float(data_loss), {k: float(v) for k, v in metrics.items()}


# Small batches: B = 2 labeled rows first, then U = 3 unlabeled rows, K = 3.
LOGITS = np.array([[2.0, 0.5, -1.0],
                   [0.1, 0.3, 0.2],
                   [1.0, -1.0, 0.0],
                   [-0.5, 2.0, 0.5],
                   [0.3, 0.2, 1.5]], np.float32)
LABELS = np.array([0, 2, 2, 1, 0], np.int32)  # rows 2.. are stored pseudo labels
TEACHER = np.array([[0.2, 1.2, -0.3],
                    [1.5, 0.0, 0.4],
                    [-1.0, 0.5, 0.7]], np.float32)
PROBS = np.array([[0.1, 0.6, 0.3],
                  [0.7, 0.2, 0.1],
                  [0.0, 0.45, 0.55]], np.float32)  # a zero entry on purpose
B, U, K = 2, 3, 3


# --- targets ----------------------------------------------------------------

def test_targets_hand_values():
    # softmax(log [1, 2, 1]) = [1/4, 1/2, 1/4]; tempering squares or roots it.
    logits = np.log(np.array([[1.0, 2.0, 1.0]], np.float32))
    probs = np.array([[0.25, 0.5, 0.25]], np.float32)
    expected = {0.5: [1 / 6, 4 / 6, 1 / 6],
                1.0: [0.25, 0.5, 0.25],
                2.0: [1 / (2 + math.sqrt(2)), math.sqrt(2) / (2 + math.sqrt(2)),
                      1 / (2 + math.sqrt(2))]}
    for tau, want in expected.items():
        np.testing.assert_allclose(objective.soft_targets_from_logits(logits, tau)[0], want,
                                   rtol=1e-6)
        np.testing.assert_allclose(objective.soft_targets_from_probs(probs, tau)[0], want,
                                   rtol=1e-6)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_soft_targets_match_formulas(tau):
    np.testing.assert_allclose(objective.soft_targets_from_logits(TEACHER, tau),
                               np_softmax(TEACHER / tau), rtol=1e-6, atol=1e-7)
    got = objective.soft_targets_from_probs(PROBS, tau).numpy()
    np.testing.assert_allclose(got, np_temper(PROBS, tau), rtol=1e-6, atol=1e-7)
    assert got[2, 0] == 0.0  # 0^(1/tau) stays exactly 0


def test_soft_targets_from_probs_renormalises_and_is_safe():
    unnormalised = np.array([[2.0, 6.0, 2.0]], np.float32)
    np.testing.assert_allclose(objective.soft_targets_from_probs(unnormalised, 1.0),
                               [[0.2, 0.6, 0.2]], rtol=1e-6)
    # p^(1/0.05) = p^20 underflows float32 for all classes: pow would give 0/0.
    tiny = np.array([[1e-5, 2e-5, 0.0]], np.float32)
    got = objective.soft_targets_from_probs(tiny, 0.05).numpy()
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, [[1 / (1 + 2 ** 20), 2 ** 20 / (1 + 2 ** 20), 0.0]],
                               rtol=1e-4, atol=1e-9)


def test_hard_targets_one_hot_argmax():
    np.testing.assert_array_equal(objective.hard_targets(TEACHER),
                                  np_one_hot([1, 0, 2], K))
    with pytest.raises(ValueError):
        objective.soft_targets_from_logits(TEACHER, 0.0)


# --- loss -------------------------------------------------------------------

def test_hand_computed_labeled_cross_entropy():
    # softmax(log [1, 2, 1]) = [1/4, 1/2, 1/4]. Label 1 with eps = 0.3 has
    # target [0.1, 0.8, 0.1]: CE = 0.2 log 4 + 0.8 log 2 = 1.2 log 2.
    logits = np.log(np.array([[1.0, 2.0, 1.0]] * 2, np.float32))
    data_loss, metrics = loss(logits, [1, 1], labeled_batch_size=2, unlabel_ratio=0.0,
                              label_smoothing=0.3)
    assert data_loss == pytest.approx(1.2 * math.log(2), rel=1e-6)
    assert metrics["lab/loss"] == pytest.approx(1.2 * math.log(2), rel=1e-6)
    assert metrics["lab/acc"] == 1.0
    assert metrics["lab/pred_prob"] == pytest.approx(0.5, rel=1e-6)


def np_lab_loss(eps):
    return np_ce(np_smooth(np_one_hot(LABELS[:B], K), eps), LOGITS[:B]).mean()


@pytest.mark.parametrize("ratio", [1.5, 1.4])
def test_offline_hard_uses_stored_labels_smoothing_and_exact_ratio(ratio):
    # B = 2 and r = 1.5 or 1.4 both give U = ceil(B * r) = 3 rows; only the
    # weight of L_unl differs.
    eps = 0.1
    data_loss, metrics = loss(LOGITS, LABELS, labeled_batch_size=B, unlabel_ratio=ratio,
                              label_smoothing=eps, teacher_softmax_temp=-1)
    l_unl = np_ce(np_smooth(np_one_hot(LABELS[B:], K), eps), LOGITS[B:]).mean()
    assert metrics["lab/loss"] == pytest.approx(np_lab_loss(eps), rel=1e-6)
    assert metrics["ext/loss"] == pytest.approx(l_unl, rel=1e-6)
    assert data_loss == pytest.approx(np_lab_loss(eps) + ratio * l_unl, rel=1e-6)
    if ratio != U / B:  # 1.4: the rounded U / B = 1.5 would be wrong
        assert data_loss != pytest.approx(np_lab_loss(eps) + U / B * l_unl, rel=1e-4)
    assert metrics["train/data_loss"] == pytest.approx(data_loss, rel=1e-7)


def test_online_hard_uses_teacher_argmax_with_smoothing():
    eps = 0.2
    data_loss, metrics = loss(LOGITS, LABELS, labeled_batch_size=B, unlabel_ratio=1.5,
                              label_smoothing=eps, teacher_softmax_temp=-1,
                              teacher_logits=TEACHER)
    l_unl = np_ce(np_smooth(np_one_hot(TEACHER.argmax(-1), K), eps), LOGITS[B:]).mean()
    assert metrics["ext/loss"] == pytest.approx(l_unl, rel=1e-6)
    assert data_loss == pytest.approx(np_lab_loss(eps) + 1.5 * l_unl, rel=1e-6)
    assert "unl/target_prob" not in metrics  # soft only


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("source", ["online", "offline"])
def test_soft_targets_get_no_smoothing(tau, source):
    kwargs = ({"teacher_logits": TEACHER} if source == "online" else {"unl_probs": PROBS})
    targets = np_softmax(TEACHER / tau) if source == "online" else np_temper(PROBS, tau)
    l_unl = np_ce(targets, LOGITS[B:]).mean()
    results = {}
    for eps in (0.0, 0.3):
        data_loss, metrics = loss(LOGITS, LABELS, labeled_batch_size=B, unlabel_ratio=1.5,
                                  label_smoothing=eps, teacher_softmax_temp=tau, **kwargs)
        assert metrics["ext/loss"] == pytest.approx(l_unl, rel=1e-6)
        assert metrics["lab/loss"] == pytest.approx(np_lab_loss(eps), rel=1e-6)
        assert data_loss == pytest.approx(np_lab_loss(eps) + 1.5 * l_unl, rel=1e-6)
        assert metrics["unl/target_prob"] == pytest.approx(targets.max(-1).mean(), rel=1e-6)
        results[eps] = metrics
    # Smoothing moved the labeled loss only.
    assert results[0.0]["ext/loss"] == results[0.3]["ext/loss"]
    assert results[0.0]["lab/loss"] != results[0.3]["lab/loss"]


def test_hard_unlabeled_loss_changes_with_smoothing():
    l_unl = {eps: loss(LOGITS, LABELS, labeled_batch_size=B, unlabel_ratio=1.0,
                       label_smoothing=eps)[1]["ext/loss"] for eps in (0.0, 0.3)}
    assert l_unl[0.0] == pytest.approx(np_ce(np_one_hot(LABELS[B:], K), LOGITS[B:]).mean())
    assert l_unl[0.3] == pytest.approx(
        np_ce(np_smooth(np_one_hot(LABELS[B:], K), 0.3), LOGITS[B:]).mean(), rel=1e-6)


def test_metrics_values():
    tau = 2.0
    _, metrics = loss(LOGITS, LABELS, labeled_batch_size=B, unlabel_ratio=1.5,
                      label_smoothing=0.1, teacher_softmax_temp=tau, teacher_logits=TEACHER)
    assert set(metrics) == {"lab/acc", "lab/pred_prob", "lab/loss", "unl/pred_prob",
                            "unl/acc_to_target", "unl/target_prob", "ext/loss",
                            "train/data_loss"}
    # Labeled argmax [0, 1] vs labels [0, 2]: one of two right.
    assert metrics["lab/acc"] == 0.5
    assert metrics["lab/pred_prob"] == pytest.approx(np_softmax(LOGITS[:B]).max(-1).mean(),
                                                     rel=1e-6)
    assert metrics["unl/pred_prob"] == pytest.approx(np_softmax(LOGITS[B:]).max(-1).mean(),
                                                     rel=1e-6)
    # Student argmax [0, 1, 2] vs teacher argmax [1, 0, 2]: one of three agree.
    assert metrics["unl/acc_to_target"] == pytest.approx(1 / 3, rel=1e-6)
    assert metrics["unl/target_prob"] == pytest.approx(
        np_softmax(TEACHER / tau).max(-1).mean(), rel=1e-6)
    for value in objective.noisy_student_loss(
            tf.constant(LOGITS), tf.constant(LABELS), labeled_batch_size=B, unlabel_ratio=1.0,
            label_smoothing=0.1)[1].values():
        assert value.dtype == tf.float32 and value.shape == ()


@pytest.mark.parametrize("normalization", ["original", "mean"])
def test_label_mask(normalization):
    p, eps = 0.5, 0.1
    # m = floor(p + u) = [floor(1.2), floor(0.7)] = [1, 0].
    uniform = np.array([0.7, 0.2], np.float32)
    ce = np_ce(np_smooth(np_one_hot(LABELS[:B], K), eps), LOGITS[:B])
    data_loss, metrics = loss(LOGITS, LABELS, labeled_batch_size=B, unlabel_ratio=1.5,
                              label_smoothing=eps, label_data_sample_prob=p,
                              sample_uniform=uniform, mask_normalization=normalization)
    # The original divides by the full B (§11); "mean" by the kept rows.
    want_lab = ce[0] / 2 if normalization == "original" else ce[0] / 1
    assert metrics["lab/loss"] == pytest.approx(want_lab, rel=1e-6)
    l_unl = np_ce(np_smooth(np_one_hot(LABELS[B:], K), eps), LOGITS[B:]).mean()
    assert data_loss == pytest.approx(want_lab + 1.5 * l_unl, rel=1e-6)
    # Metrics other than the loss ignore the mask.
    assert metrics["lab/acc"] == 0.5


def test_label_mask_edges():
    common = dict(labeled_batch_size=B, unlabel_ratio=0.0, label_smoothing=0.0,
                  label_data_sample_prob=0.3)
    none_kept = np.array([0.1, 0.5], np.float32)  # floor(0.4), floor(0.8)
    for normalization in ("original", "mean"):
        _, metrics = loss(LOGITS[:B], LABELS[:B], sample_uniform=none_kept,
                          mask_normalization=normalization, **common)
        assert metrics["lab/loss"] == 0.0
    all_kept = np.array([0.9, 0.75], np.float32)
    ce = np_ce(np_one_hot(LABELS[:B], K), LOGITS[:B])
    for normalization in ("original", "mean"):
        _, metrics = loss(LOGITS[:B], LABELS[:B], sample_uniform=all_kept,
                          mask_normalization=normalization, **common)
        assert metrics["lab/loss"] == pytest.approx(ce.mean(), rel=1e-6)
    # p = 1 ignores the draws: every row counts.
    _, metrics = loss(LOGITS[:B], LABELS[:B], labeled_batch_size=B, unlabel_ratio=0.0,
                      label_smoothing=0.0, sample_uniform=none_kept)
    assert metrics["lab/loss"] == pytest.approx(ce.mean(), rel=1e-6)
    with pytest.raises(ValueError, match="sample_uniform"):
        loss(LOGITS[:B], LABELS[:B], **common)
    with pytest.raises(ValueError, match="mask_normalization"):
        loss(LOGITS[:B], LABELS[:B], sample_uniform=all_kept, mask_normalization="sum",
             **common)


def test_supervised():
    eps = 0.1
    expected = np_lab_loss(eps)
    # r = 0: the unlabeled rows, if any, are not used.
    for logits, labels in ((LOGITS[:B], LABELS[:B]), (LOGITS, LABELS)):
        data_loss, metrics = loss(logits, labels, labeled_batch_size=B, unlabel_ratio=0.0,
                                  label_smoothing=eps)
        assert data_loss == pytest.approx(expected, rel=1e-6)
        assert set(metrics) == {"lab/acc", "lab/pred_prob", "lab/loss", "train/data_loss"}
    # r > 0 but a batch without unlabeled rows.
    data_loss, metrics = loss(LOGITS[:B], LABELS[:B], labeled_batch_size=B, unlabel_ratio=2.0,
                              label_smoothing=eps)
    assert data_loss == pytest.approx(expected, rel=1e-6)
    assert "ext/loss" not in metrics


def test_argument_errors():
    common = dict(labeled_batch_size=B, unlabel_ratio=1.5, label_smoothing=0.1)
    with pytest.raises(ValueError, match="not both"):
        loss(LOGITS, LABELS, teacher_softmax_temp=1.0, teacher_logits=TEACHER,
             unl_probs=PROBS, **common)
    with pytest.raises(ValueError, match="unl_probs"):
        loss(LOGITS, LABELS, teacher_softmax_temp=1.0, **common)
    with pytest.raises(ValueError, match="> 0"):
        loss(LOGITS, LABELS, teacher_softmax_temp=0.0, unl_probs=PROBS, **common)
    with pytest.raises(ValueError, match="rows"):
        loss(LOGITS[:1], LABELS[:1], **common)


def test_inside_tf_function_and_gradient():
    logits = tf.Variable(LOGITS)

    @tf.function(jit_compile=True)
    def step(uniform):
        with tf.GradientTape() as tape:
            data_loss, metrics = objective.noisy_student_loss(
                logits, tf.constant(LABELS), labeled_batch_size=B, unlabel_ratio=1.5,
                label_smoothing=0.1, teacher_softmax_temp=1.0,
                teacher_logits=tf.constant(TEACHER), label_data_sample_prob=0.5,
                sample_uniform=uniform)
        return data_loss, tape.gradient(data_loss, logits)

    data_loss, grad = step(tf.constant([0.7, 0.2]))
    eager, _ = loss(LOGITS, LABELS, labeled_batch_size=B, unlabel_ratio=1.5,
                    label_smoothing=0.1, teacher_softmax_temp=1.0, teacher_logits=TEACHER,
                    label_data_sample_prob=0.5, sample_uniform=np.array([0.7, 0.2]))
    assert float(data_loss) == pytest.approx(eager, rel=1e-6)
    # The masked labeled row gets no gradient; CE gradients sum to 0 per row.
    np.testing.assert_allclose(grad[1], 0.0, atol=1e-7)
    np.testing.assert_allclose(np.sum(grad, axis=-1), 0.0, atol=1e-6)


# --- L2 ---------------------------------------------------------------------

@pytest.mark.parametrize("path, is_bn", [
    ("stem/bn/gamma", True), ("stem/bn/beta", True), ("head/bn/moving_mean", True),
    ("blocks_0/depthwise_bn/beta", True), ("blocks_3/expand_bn/gamma", True),
    ("blocks_3/project_bn/moving_variance", True), ("batch_normalization/gamma", True),
    ("stem/conv/kernel", False), ("blocks_0/se_reduce/bias", False),
    ("blocks_3/expand_conv/kernel", False), ("logits/kernel", False), ("logits/bias", False),
    ("kernel", False)])
def test_is_batch_norm_variable(path, is_bn):
    assert objective.is_batch_norm_variable(path) is is_bn


def test_l2_excludes_batch_norm_and_includes_biases():
    model, _ = build_model("efficientnet-b0", 10, small_image=True, width=0.25, depth=0.25)
    rng = np.random.default_rng(0)
    for variable in model.weights:  # make gamma/beta and biases non-trivial
        variable.assign(rng.normal(0, 0.5, tuple(variable.shape)).astype(np.float32))
    wd = 1e-5
    # Hand sum, choosing variables by their leaf name, independent of the library.
    kept = [v for v in model.trainable_weights if v.path.rsplit("/", 1)[-1] in ("kernel", "bias")]
    assert {v.path for v in kept} >= {"blocks_0/se_reduce/bias", "logits/bias", "logits/kernel"}
    want = wd * sum(0.5 * np.sum(np.square(v.numpy().astype(np.float64))) for v in kept)
    got = float(objective.l2_regularization(model.trainable_weights, wd))
    assert got == pytest.approx(want, rel=1e-5)
    # BN statistics are excluded even if passed.
    assert float(objective.l2_regularization(model.weights, wd)) == pytest.approx(want, rel=1e-5)
    # A BN gamma does not count; a bias does, with weight wd / 2 * ||b||^2.
    gamma = model.get_layer("stem").bn.gamma
    bias = model.get_layer("logits").bias
    assert float(objective.l2_regularization([gamma], wd)) == 0.0
    assert float(objective.l2_regularization([bias], wd)) == pytest.approx(
        wd * 0.5 * np.sum(bias.numpy().astype(np.float64) ** 2), rel=1e-5)
    assert float(objective.l2_regularization(model.trainable_weights, 0.0)) == 0.0
