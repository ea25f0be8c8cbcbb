"""Cosine cost, log-domain Sinkhorn and the OT attack objective.

References: POT (``ot.sinkhorn`` / ``ot.sinkhorn2`` with ``method="sinkhorn_log"``),
a float64 NumPy re-implementation of Feature Scattering's loop (exact
logsumexp), NumPy finite differences, and the attack's effect on a tiny Keras
model.
"""

import warnings

import keras
import numpy as np
import ot
import pytest
import tensorflow as tf

from gacd_tf.attacks.objectives import get_objective
from gacd_tf.methods.gacd.ot_objective import OptimalTransport
from gacd_tf.attacks.pgd import PGD
from gacd_tf.errors import ConfigError
from gacd_tf.methods.gacd import cosine_cost, sinkhorn_distance, sinkhorn_plan


def np_cosine_cost(x, y):
    x = x.reshape(len(x), -1)
    y = y.reshape(len(y), -1)
    cos = (x @ y.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1))
    return np.maximum(0.0, 1.0 - cos)


def pot(solver, cost, num_iters=5000, strict=True):
    n, m = cost.shape
    with warnings.catch_warnings():
        # POT warns when it does not converge: an error where we need a converged plan.
        warnings.simplefilter("error" if strict else "ignore")
        return solver(
            np.full(n, 1.0 / n), np.full(m, 1.0 / m), cost, reg=0.01,
            method="sinkhorn_log", numItermax=num_iters, stopThr=1e-10,
        )


def pot_plan(cost):
    return pot(ot.sinkhorn, cost)


def pot_distance(cost, strict=True):
    return float(pot(ot.sinkhorn2, cost, num_iters=5000 if strict else 1000, strict=strict))


def spread_case(seed, n=12, m=8, dim=3):
    """Independent low-dimensional batches: a spread-out plan.

    With uniform marginals and n == m, Sinkhorn at epsilon = 0.01 converges
    very slowly on such problems (row marginals still ~1e-4 off, relatively,
    after 3000 iterations; POT does not reach 1e-10 in 5000 either, even on
    most near-diagonal square problems), so the tight comparisons use n != m.
    """
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)), rng.normal(size=(m, dim))


def perturbed_case(seed, n=32, dim=16, noise=0.3):
    """Adversarial-like batches: y near x, so the plan is close to diagonal."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    return x, x + noise * rng.normal(size=(n, dim))


tight_plan = tf.function(
    lambda cost: sinkhorn_plan(cost, epsilon=0.01, max_iters=5000, threshold=1e-13)
)


def test_cosine_cost_matches_numpy_and_flattens_rows():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 2, 3, 2)), rng.normal(size=(5, 2, 3, 2))
    np.testing.assert_allclose(cosine_cost(x, y).numpy(), np_cosine_cost(x, y), atol=1e-12)
    same = cosine_cost(x, x).numpy()
    np.testing.assert_allclose(np.diag(same), 0.0, atol=1e-12)
    assert (same >= 0).all()
    zero_row = cosine_cost(np.zeros((1, 3), np.float32), np.ones((2, 3), np.float32))
    np.testing.assert_allclose(zero_row.numpy(), 1.0)  # finite, cos := 0


@pytest.mark.parametrize("seed,n,m,dim", [(1, 6, 10, 3), (4, 12, 8, 3), (6, 12, 8, 3)])
def test_tight_plan_and_distance_match_pot(seed, n, m, dim):
    x, y = spread_case(seed, n, m, dim)
    cost = np_cosine_cost(x, y)
    expected = pot_plan(cost)
    plan = tight_plan(tf.constant(cost)).numpy()
    np.testing.assert_allclose(plan, expected, atol=1e-5)
    np.testing.assert_allclose(plan.sum(axis=1), 1.0 / n, atol=1e-8)
    np.testing.assert_allclose(plan.sum(axis=0), 1.0 / m, atol=1e-8)
    assert (expected > 1e-3).sum() > max(n, m)  # a genuinely spread-out plan
    distance = sinkhorn_distance(x, y, max_iters=5000, threshold=1e-13)
    np.testing.assert_allclose(distance.numpy(), pot_distance(cost), rtol=1e-6)


def test_default_settings_on_adversarial_like_batches_match_pot():
    x, y = perturbed_case(4)
    cost = np_cosine_cost(x, y)
    plan = sinkhorn_plan(tf.constant(cost, tf.float32)).numpy()
    np.testing.assert_allclose(plan.sum(axis=1), 1 / 32, atol=1e-2 / 32)
    np.testing.assert_allclose(plan.sum(axis=0), 1 / 32, atol=1e-2 / 32)
    distance = sinkhorn_distance(x.astype(np.float32), y.astype(np.float32))
    np.testing.assert_allclose(distance.numpy(), pot_distance(cost), rtol=1e-3)


def logsumexp(a, axis):
    top = a.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.exp(a - top).sum(axis=axis))


def np_feature_scattering_plan(cost, epsilon=0.01, max_iters=100, threshold=0.1):
    """Feature Scattering's loop (ot.py ``sinkhorn``) with an exact logsumexp."""
    n, m = cost.shape
    u, v = np.zeros(n), np.zeros(m)
    for _ in range(max_iters):
        u_prev = u
        u = epsilon * (np.log(1 / n) - logsumexp((-cost + u[:, None] + v) / epsilon, axis=1)) + u
        v = epsilon * (np.log(1 / m) - logsumexp((-cost + u[:, None] + v) / epsilon, axis=0)) + v
        if np.abs(u - u_prev).sum() < threshold:
            break
    return np.exp((-cost + u[:, None] + v) / epsilon)


@pytest.mark.parametrize("threshold,max_iters", [(0.1, 100), (1e-3, 100), (0.0, 7)])
def test_plan_follows_feature_scattering_loop_and_stopping_rule(threshold, max_iters):
    # On a spread-out problem the defaults stop after a few iterations with row
    # marginals far from 1/n; the column marginals are exact after each v update.
    cost = np_cosine_cost(*spread_case(5, 16, 16, 3))
    plan = sinkhorn_plan(cost, threshold=threshold, max_iters=max_iters).numpy()
    expected = np_feature_scattering_plan(cost, threshold=threshold, max_iters=max_iters)
    np.testing.assert_allclose(plan, expected, atol=1e-10)
    np.testing.assert_allclose(plan.sum(axis=0), 1 / 16, atol=1e-12)


def test_distance_gradient_matches_finite_differences_with_plan_fixed():
    x, y = spread_case(6, 6, 6, 4)
    plan = sinkhorn_plan(np_cosine_cost(x, y)).numpy()
    y_var, x_var = tf.Variable(y), tf.Variable(x)
    with tf.GradientTape() as tape:
        distance = sinkhorn_distance(x_var, y_var)
    grad_y, grad_x = tape.gradient(distance, [y_var, x_var])
    np.testing.assert_allclose(distance.numpy(), np.sum(plan * np_cosine_cost(x, y)), rtol=1e-12)

    numeric = np.zeros_like(y)
    step = 1e-6
    for index in np.ndindex(y.shape):
        plus, minus = y.copy(), y.copy()
        plus[index] += step
        minus[index] -= step
        numeric[index] = (
            np.sum(plan * np_cosine_cost(x, plus)) - np.sum(plan * np_cosine_cost(x, minus))
        ) / (2 * step)
    np.testing.assert_allclose(grad_y.numpy(), numeric, rtol=1e-6, atol=1e-9)
    assert grad_x is not None and np.abs(grad_x.numpy()).max() > 0


def test_plan_is_constant_and_per_row_contributions_sum_to_distance():
    x, y = perturbed_case(7, n=8, dim=5, noise=1.0)
    cost = tf.Variable(np_cosine_cost(x, y))
    with tf.GradientTape() as tape:
        plan = sinkhorn_plan(cost)
    assert tape.gradient(plan, cost) is None
    per_row = sinkhorn_distance(x, y, reduction="none")
    assert per_row.shape == (8,)
    np.testing.assert_allclose(
        per_row.numpy(), np.sum(plan.numpy() * cost.numpy(), axis=1), rtol=1e-12
    )
    np.testing.assert_allclose(per_row.numpy().sum(), sinkhorn_distance(x, y).numpy(), rtol=1e-12)


def test_sinkhorn_works_inside_tf_function_with_unknown_batch():
    x, y = spread_case(8, 12, 12, 4)
    x, y = x.astype(np.float32), y.astype(np.float32)
    spec = tf.TensorSpec([None, None], tf.float32)

    @tf.function(input_signature=[spec, spec])
    def distance_and_grad(x, y):
        with tf.GradientTape() as tape:
            tape.watch(y)
            distance = sinkhorn_distance(x, y)
        return distance, tape.gradient(distance, y)

    distance, grad = distance_and_grad(x, y)
    y_var = tf.Variable(y)
    with tf.GradientTape() as tape:
        eager = sinkhorn_distance(x, y_var)
    np.testing.assert_allclose(distance.numpy(), eager.numpy(), rtol=1e-5)
    np.testing.assert_allclose(grad.numpy(), tape.gradient(eager, y_var).numpy(), atol=1e-5)


def test_sinkhorn_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="epsilon"):
        sinkhorn_plan(np.zeros((2, 2)), epsilon=0)
    with pytest.raises(ConfigError, match="max_iters"):
        sinkhorn_plan(np.zeros((2, 2)), max_iters=0)
    with pytest.raises(ConfigError, match="reduction"):
        sinkhorn_distance(np.ones((2, 2)), np.ones((2, 2)), reduction="mean")


# ----------------------------------------------------------------------------- OT attack objective


def tiny_features_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inputs)
    features = keras.layers.Dense(16, activation="tanh", name="features")(
        keras.layers.Flatten()(hidden)
    )
    logits = keras.layers.Dense(10)(features)
    return keras.Model(inputs, [features, logits])


def ot_distance_of(model, x_clean, x_other, representation="features"):
    index = 0 if representation == "features" else 1
    clean = model(x_clean, training=False)[index].numpy().astype(np.float64)
    other = model(x_other, training=False)[index].numpy().astype(np.float64)
    return pot_distance(np_cosine_cost(clean, other), strict=False)


@pytest.mark.parametrize("representation", ["features", "logits"])
def test_pgd_with_ot_objective_increases_ot_distance_within_eps_ball(representation):
    model = tiny_features_model()
    x = tf.constant(np.random.default_rng(9).uniform(size=(16, 8, 8, 3)), tf.float32)
    objective = OptimalTransport(representation=representation)
    target = objective.target_from(model(x, training=False))
    eps = 8 / 255
    start = PGD(eps=eps, steps=0, seed=3, objective=objective)(model, x, target)
    attack = PGD(eps=eps, step_size=2 / 255, steps=5, seed=3, objective=objective)
    x_adv = tf.function(lambda x, t: attack(model, x, t))(x, target)
    assert np.abs(x_adv.numpy() - x.numpy()).max() <= eps + 1e-6
    assert 0.0 <= x_adv.numpy().min() and x_adv.numpy().max() <= 1.0
    at_start = ot_distance_of(model, x, start, representation)
    after = ot_distance_of(model, x, x_adv, representation)
    # ~30x here; descending the same objective gives < 2x (sign steps overshoot).
    assert after > 10 * at_start, (at_start, after)


def test_ot_objective_by_name_feature_scattering_single_step():
    import gacd_tf.methods.gacd.ot_objective  # noqa: F401  (registers "ot")

    objective = get_objective("ot")
    assert isinstance(objective, OptimalTransport)
    assert objective.get_config() == {
        "representation": "features", "epsilon": 0.01, "max_iters": 100, "threshold": 0.1,
    }
    model = tiny_features_model(seed=1)
    x = tf.constant(np.random.default_rng(10).uniform(size=(8, 8, 8, 3)), tf.float32)
    target = model(x, training=False)[0]
    eps = 8 / 255
    start = PGD(eps=eps, steps=0, seed=4, objective="ot")(model, x, target)
    x_adv = PGD(eps=eps, step_size=eps, steps=1, seed=4, objective="ot")(model, x, target)
    assert np.abs(x_adv.numpy() - x.numpy()).max() <= eps + 1e-6

    class Descend(OptimalTransport):
        def __call__(self, outputs, target):
            return -super().__call__(outputs, target)

    # Any eps-sized step from the random start tends to increase the distance,
    # so compare with the same step taken downhill.
    x_down = PGD(eps=eps, step_size=eps, steps=1, seed=4, objective=Descend())(model, x, target)
    up, down = ot_distance_of(model, x, x_adv), ot_distance_of(model, x, x_down)
    assert up > 1.3 * down and up > 3 * ot_distance_of(model, x, start), (up, down)


def test_ot_objective_needs_features_and_round_trips_config():
    logits_only = {"logits": tf.zeros([2, 3])}
    with pytest.raises(ConfigError, match="features"):
        OptimalTransport()(logits_only, tf.zeros([2, 4]))
    objective = OptimalTransport(
        representation="logits", epsilon=0.05, max_iters=20, threshold=0.01
    )
    assert OptimalTransport(**objective.get_config()).get_config() == objective.get_config()
    per_example = objective(tf.eye(3), tf.ones([3, 3]) + tf.eye(3))
    assert per_example.shape == (3,)
    with pytest.raises(ConfigError, match="representation"):
        OptimalTransport(representation="pixels")
