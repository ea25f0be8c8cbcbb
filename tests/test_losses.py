"""Distillation KL / KD / ARD and GACD's reweighted NCE against NumPy references.

Every reference below is written directly from SPEC.md's formulas in float64
NumPy (plain exp / log, no softplus or logsumexp tricks), independently of the
TensorFlow implementation.
"""

import numpy as np
import pytest
import tensorflow as tf

from gacd_tf.errors import ConfigError
from gacd_tf.losses import distillation_kl
from gacd_tf.methods.ard import ard_loss
from gacd_tf.methods.gacd import initial_log_z, nce_logits, reweighted_nce_loss
from gacd_tf.methods.kd import kd_loss

# ----------------------------------------------------------------------------- NumPy references


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_kl_per_example(zs, zt, temperature):
    p_t = np_softmax(zt / temperature)
    p_s = np_softmax(zs / temperature)
    return temperature**2 * np.sum(p_t * np.log(p_t / p_s), axis=1)


def np_ce(z, y):
    return -np.log(np_softmax(z)[np.arange(len(y)), y]).mean()


def np_scores(anchors, positives, bank, idx, temperature):
    pos = np.sum(anchors * positives, axis=1) / temperature
    neg = np.einsum("bd,bkd->bk", anchors, bank[idx]) / temperature
    return pos, neg


def np_z(anchors, positives, bank, idx, temperature, num_data):
    pos, neg = np_scores(anchors, positives, bank, idx, temperature)
    return np.mean(np.exp(np.concatenate([pos[:, None], neg], axis=1))) * num_data


def np_nce_loss(anchors, positives, bank, idx, temperature, num_data, weights, z):
    """L = -(1/B) sum_i w_i [log h(pos_i) + sum_j log(1 - h(neg_ij))], h = P / (P + k/M)."""
    pos, neg = np_scores(anchors, positives, bank, idx, temperature)
    k = idx.shape[1]
    p_pos = np.exp(pos) / z
    p_neg = np.exp(neg) / z
    h_pos = p_pos / (p_pos + k / num_data)
    h_neg = p_neg / (p_neg + k / num_data)
    return -np.mean(weights * (np.log(h_pos) + np.sum(np.log(1.0 - h_neg), axis=1)))


def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ----------------------------------------------------------------------------- distillation KL


@pytest.mark.parametrize("temperature", [1.0, 4.0, 30.0])
def test_distillation_kl_matches_numpy_both_reductions(temperature):
    rng = np.random.default_rng(0)
    zs, zt = rng.normal(size=(6, 10)) * 3, rng.normal(size=(6, 10)) * 3
    w = rng.uniform(0.1, 1.0, size=6)
    kl = np_kl_per_example(zs, zt, temperature)
    batchmean = distillation_kl(zs, zt, temperature)
    official = distillation_kl(zs, zt, temperature, reduction="official")
    np.testing.assert_allclose(batchmean.numpy(), kl.mean(), rtol=1e-10)
    np.testing.assert_allclose(official.numpy(), kl.mean() / 10, rtol=1e-10)
    weighted = distillation_kl(zs, zt, temperature, reduction="batchmean", sample_weight=w)
    np.testing.assert_allclose(weighted.numpy(), (w * kl).mean(), rtol=1e-10)
    weighted_off = distillation_kl(zs, zt, temperature, reduction="official", sample_weight=w)
    np.testing.assert_allclose(weighted_off.numpy(), (w * kl).mean() / 10, rtol=1e-10)
    per_example = distillation_kl(zs, zt, temperature, reduction="none", sample_weight=w)
    np.testing.assert_allclose(per_example.numpy(), w * kl, rtol=1e-10)


def test_distillation_kl_float32_gradient_is_analytic_and_teacher_is_constant():
    rng = np.random.default_rng(1)
    temperature, batch = 4.0, 5
    zs = tf.Variable(rng.normal(size=(batch, 7)).astype(np.float32))
    zt = tf.Variable(rng.normal(size=(batch, 7)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        loss = distillation_kl(zs, zt, temperature)
    # d/dz_S [T^2 KL(p_T || p_S)] = T (p_S - p_T) for each example; batchmean divides by B.
    expected = temperature * (
        np_softmax(zs.numpy().astype(np.float64) / temperature)
        - np_softmax(zt.numpy().astype(np.float64) / temperature)
    ) / batch
    np.testing.assert_allclose(tape.gradient(loss, zs).numpy(), expected, atol=1e-6)
    assert tape.gradient(loss, zt) is None
    assert loss.dtype == tf.float32


def test_distillation_kl_is_zero_for_identical_logits_and_rejects_bad_args():
    z = tf.random.normal([3, 5])
    assert abs(float(distillation_kl(z, z, 2.0))) < 1e-6
    with pytest.raises(ConfigError, match="reduction"):
        distillation_kl(z, z, 2.0, reduction="mean")
    with pytest.raises(ConfigError, match="temperature"):
        distillation_kl(z, z, 0.0)


def test_kd_loss_matches_numpy():
    rng = np.random.default_rng(2)
    zs, zt = rng.normal(size=(8, 10)) * 2, rng.normal(size=(8, 10)) * 2
    y = rng.integers(0, 10, size=8)
    alpha, temperature = 0.9, 4.0
    expected = (1 - alpha) * np_ce(zs, y) + alpha * np_kl_per_example(zs, zt, temperature).mean()
    np.testing.assert_allclose(kd_loss(zs, zt, y).numpy(), expected, rtol=1e-10)
    expected = 0.7 * np_ce(zs, y) + 0.3 * np_kl_per_example(zs, zt, 2.0).mean()
    got = kd_loss(zs, zt, y, alpha=0.3, temperature=2.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("kl_reduction", ["official", "batchmean"])
def test_ard_loss_matches_numpy(kl_reduction):
    rng = np.random.default_rng(3)
    num_classes = 10
    z_adv, z_nat, zt = (rng.normal(size=(8, num_classes)) * 5 for _ in range(3))
    y = rng.integers(0, num_classes, size=8)
    w = rng.uniform(0.05, 1.0, size=8)
    alpha, temperature = 0.8, 30.0
    kl = np_kl_per_example(z_adv, zt, temperature) * w
    kl_term = kl.mean() / (num_classes if kl_reduction == "official" else 1)
    expected = alpha * kl_term + (1 - alpha) * np_ce(z_nat, y)
    got = ard_loss(
        z_adv, z_nat, zt, y, alpha=alpha, temperature=temperature,
        kl_reduction=kl_reduction, sample_weight=w,
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_ard_loss_official_defaults():
    rng = np.random.default_rng(4)
    z_adv, z_nat, zt = (rng.normal(size=(4, 10)) * 5 for _ in range(3))
    y = rng.integers(0, 10, size=4)
    expected = np_kl_per_example(z_adv, zt, 30.0).mean() / 10  # alpha = 1, T = 30, / C
    np.testing.assert_allclose(ard_loss(z_adv, z_nat, zt, y).numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(ard_loss(z_adv, None, zt, y).numpy(), expected, rtol=1e-10)
    with pytest.raises(ConfigError, match="natural logits"):
        ard_loss(z_adv, None, zt, y, alpha=0.5)
    with pytest.raises(ConfigError, match="kl_reduction"):
        ard_loss(z_adv, z_nat, zt, y, kl_reduction="none")


# ----------------------------------------------------------------------------- NCE


def nce_case(seed, k, batch=5, dim=6, num_data=50):
    rng = np.random.default_rng(seed)
    anchors = unit_rows(rng, batch, dim)
    positives = unit_rows(rng, batch, dim)
    bank = unit_rows(rng, num_data, dim)
    idx = rng.integers(0, num_data, size=(batch, k))  # with replacement (k may exceed M)
    weights = rng.uniform(0.05, 1.0, size=batch)
    return anchors, positives, bank, idx, weights


@pytest.mark.parametrize("k", [1, 7, 64])
def test_nce_logits_equal_naive_gather(k):
    anchors, positives, bank, idx, _ = nce_case(10 + k, k)
    pos, neg = nce_logits(anchors, positives, bank, idx, temperature=0.07)
    ref_pos, ref_neg = np_scores(anchors, positives, bank, idx, 0.07)
    assert neg.shape == (5, k)
    np.testing.assert_allclose(pos.numpy(), ref_pos, rtol=1e-12)
    np.testing.assert_allclose(neg.numpy(), ref_neg, rtol=1e-12, atol=1e-12)


def test_initial_log_z_matches_numpy():
    anchors, positives, bank, idx, _ = nce_case(20, 64)
    pos, neg = nce_logits(anchors, positives, bank, idx, temperature=0.1)
    log_z = initial_log_z(pos, neg, num_data=50)
    expected = np.log(np_z(anchors, positives, bank, idx, 0.1, 50))
    np.testing.assert_allclose(log_z.numpy(), expected, rtol=1e-12)


def test_initial_log_z_does_not_overflow_in_float32():
    # scores up to 1/T = 100: exp overflows float32, the log-domain form does not.
    rng = np.random.default_rng(21)
    pos = rng.uniform(-100, 100, size=4)
    neg = rng.uniform(-100, 100, size=(4, 32))
    log_z = initial_log_z(pos.astype(np.float32), neg.astype(np.float32), num_data=1000)
    scores = np.concatenate([pos[:, None], neg], axis=1)
    np.testing.assert_allclose(log_z.numpy(), np.log(np.mean(np.exp(scores)) * 1000), rtol=1e-6)


def test_initial_log_z_is_bitwise_the_same_with_static_or_unknown_batch_size():
    # MirroredStrategy gathers the global batch with a static size,
    # MultiWorkerMirroredStrategy with an unknown one; eagerly nothing is
    # folded. One Z for all three, to the bit (the former
    # lse - log(count) + log(M) was folded differently, 1 ulp off, for a few
    # of these cases, e.g. B = 8, k = 8, M = 24).
    rng = np.random.default_rng(23)
    for batch, k, num_data in [(8, 8, 24), (8, 8, 32), (4, 16, 100), (16, 8, 9500)] * 5:
        pos = rng.normal(0, 3, size=batch).astype(np.float32)
        neg = rng.normal(0, 3, size=(batch, k)).astype(np.float32)
        eager = initial_log_z(pos, neg, num_data).numpy()
        for shape in ([batch], [None]):
            spec = [tf.TensorSpec(shape, tf.float32), tf.TensorSpec(shape + [k], tf.float32)]
            graph = tf.function(lambda p, n: initial_log_z(p, n, num_data),  # noqa: B023
                                input_signature=spec)(pos, neg).numpy()
            assert graph.tobytes() == eager.tobytes(), (batch, k, num_data, shape, graph, eager)


@pytest.mark.parametrize("k", [1, 7, 64])
def test_reweighted_nce_loss_matches_numpy(k):
    anchors, positives, bank, idx, weights = nce_case(30 + k, k)
    temperature, num_data = 0.1, 50
    pos, neg = nce_logits(anchors, positives, bank, idx, temperature)
    log_z = initial_log_z(pos, neg, num_data)
    loss = reweighted_nce_loss(pos, neg, log_z, num_data, sample_weight=weights)
    z = np_z(anchors, positives, bank, idx, temperature, num_data)
    expected = np_nce_loss(anchors, positives, bank, idx, temperature, num_data, weights, z)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-10)
    # Unweighted: None means all ones, and differs from the weighted value.
    unweighted = reweighted_nce_loss(pos, neg, log_z, num_data)
    ones = np.ones(len(weights))
    expected_unweighted = np_nce_loss(anchors, positives, bank, idx, temperature, num_data, ones, z)
    np.testing.assert_allclose(unweighted.numpy(), expected_unweighted, rtol=1e-10)
    assert abs(expected - expected_unweighted) > 1e-3


@pytest.mark.parametrize("k", [1, 7, 64])
def test_reweighted_nce_gradient_matches_finite_differences(k):
    anchors, positives, bank, idx, weights = nce_case(40 + k, k, batch=4, dim=5)
    temperature, num_data = 0.1, 50
    z = np_z(anchors, positives, bank, idx, temperature, num_data)  # Z is fixed once
    a_var, p_var = tf.Variable(anchors), tf.Variable(positives)
    bank_var = tf.Variable(bank)
    w_var = tf.Variable(weights)
    with tf.GradientTape(persistent=True) as tape:
        pos, neg = nce_logits(a_var, p_var, bank_var, idx, temperature)
        loss = reweighted_nce_loss(pos, neg, np.log(z), num_data, sample_weight=w_var)
    grad_a, grad_p = tape.gradient(loss, [a_var, p_var])
    assert tape.gradient(loss, bank_var) is None  # the bank is a constant
    assert tape.gradient(loss, w_var) is None  # so are the weights

    def numeric_gradient(which):
        base = {"anchors": anchors, "positives": positives}
        grad = np.zeros_like(base[which])
        step = 1e-6
        for index in np.ndindex(grad.shape):
            values = []
            for sign in (1, -1):
                moved = dict(base)
                moved[which] = base[which].copy()
                moved[which][index] += sign * step
                values.append(np_nce_loss(
                    moved["anchors"], moved["positives"], bank, idx, temperature, num_data,
                    weights, z,
                ))
            grad[index] = (values[0] - values[1]) / (2 * step)
        return grad

    np.testing.assert_allclose(grad_a.numpy(), numeric_gradient("anchors"), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad_p.numpy(), numeric_gradient("positives"), rtol=1e-5, atol=1e-7)


def test_reweighted_nce_is_stable_at_low_temperature_in_float32():
    # T = 0.01: scores in [-100, 100], exp(score) overflows float32.
    anchors, positives, bank, idx, weights = nce_case(50, 16)
    temperature, num_data = 0.01, 50
    z = np_z(anchors, positives, bank, idx, temperature, num_data)
    expected = np_nce_loss(anchors, positives, bank, idx, temperature, num_data, weights, z)
    f32 = lambda a: tf.constant(a, tf.float32)  # noqa: E731
    pos, neg = nce_logits(f32(anchors), f32(positives), f32(bank), idx, temperature)
    log_z = initial_log_z(pos, neg, num_data)
    loss = reweighted_nce_loss(pos, neg, log_z, num_data, sample_weight=weights)
    assert np.isfinite(loss.numpy())
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-4)


def test_reweighted_nce_in_tf_function_with_unknown_k():
    anchors, positives, bank, idx, weights = nce_case(60, 7)
    spec = tf.TensorSpec([None, None], tf.float64)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float64), spec])
    def loss_fn(pos, neg):
        return reweighted_nce_loss(pos, neg, initial_log_z(pos, neg, 50), 50)

    pos, neg = nce_logits(anchors, positives, bank, idx, 0.1)
    eager = reweighted_nce_loss(pos, neg, initial_log_z(pos, neg, 50), 50)
    np.testing.assert_allclose(loss_fn(pos, neg).numpy(), eager.numpy(), rtol=1e-12)


def test_nce_rejects_bad_arguments():
    anchors, positives, bank, idx, _ = nce_case(70, 3)
    with pytest.raises(ConfigError, match="temperature"):
        nce_logits(anchors, positives, bank, idx, temperature=0)
    with pytest.raises(ConfigError, match="integers"):
        nce_logits(anchors, positives, bank, idx.astype(np.float64), temperature=0.1)
    with pytest.raises(ConfigError, match="num_data"):
        initial_log_z(np.zeros(2), np.zeros((2, 3)), num_data=0)
