"""FAB / FAB-T and Square against independent references: a linear program
for the l_inf projection, the analytic minimal perturbation of a linear
classifier, a gradient-masked model that PGD cannot break, and the
attack-interface invariants."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gacd_tf.attacks import FAB, PGD, FABTargeted, Square, build_attack, projection_linf
from gacd_tf.attacks.square import square_sizes
from gacd_tf.errors import ConfigError

EPS = 8 / 255


def linear_model(kernel, bias=None, shape=(4, 4, 3)):
    """Flatten + Dense with the given weights."""
    dense = keras.layers.Dense(kernel.shape[1], use_bias=bias is not None)
    model = keras.Sequential([keras.Input(shape), keras.layers.Flatten(), dense])
    dense.set_weights([kernel] if bias is None else [kernel, bias])
    return model


def tiny_cnn(seed=0, num_classes=4):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(6, 3, activation="tanh"),
        keras.layers.Flatten(),
        keras.layers.Dense(num_classes),
    ])


def predict(model, x):
    return np.argmax(model(tf.constant(x), training=False).numpy(), axis=1)


def linf(d):
    return np.abs(d.reshape(len(d), -1)).max(1)


# -- the l_inf projection ------------------------------------------------------


def lp_projection_norm(t, w, b):
    """min ||d||_inf s.t. <w, t + d> = b, 0 <= t + d <= 1, by linear programming (None if infeasible)."""
    linprog = pytest.importorskip("scipy.optimize").linprog
    n = len(t)
    eye, ones = np.eye(n), np.ones((n, 1))
    result = linprog(
        np.r_[np.zeros(n), 1.0],
        A_ub=np.block([[eye, -ones], [-eye, -ones]]),
        b_ub=np.zeros(2 * n),
        A_eq=np.r_[w, 0.0][None],
        b_eq=[b - w @ t],
        bounds=[(-ti, 1 - ti) for ti in t] + [(0, None)],
    )
    return result.fun if result.status == 0 else None


def test_projection_linf_matches_linear_program():
    rng = np.random.default_rng(0)
    n, rows = 6, 60
    t = rng.uniform(0, 1, (rows, n))
    t[::7, 0] = 0.0  # on the box
    t[::5, 1] = 1.0
    w = rng.normal(size=(rows, n))
    w[::4, 2] = 0.0  # a coordinate that must not move
    # Hyperplanes at all distances: near (box inactive), far (box active), unreachable.
    b = np.einsum("ij,ij->i", w, t) + rng.normal(size=rows) * rng.choice([0.05, 0.5, 3.0], rows)
    d = projection_linf(t.astype("float32"), w.astype("float32"), b.astype("float32")).numpy()
    z = t + d
    assert np.all(z >= -1e-6) and np.all(z <= 1 + 1e-6)
    assert np.all(d[w == 0] == 0)
    n_feasible = 0
    for i in range(rows):
        optimum = lp_projection_norm(t[i], w[i], b[i])
        if optimum is None:
            # Unreachable: every coordinate at the box bound closest to the hyperplane.
            side = np.sign(w[i] @ t[i] - b[i])
            corner = np.where(side * w[i] > 0, 0.0, 1.0)
            np.testing.assert_allclose(z[i][w[i] != 0], corner[w[i] != 0], atol=1e-6)
        else:
            n_feasible += 1
            np.testing.assert_allclose(w[i] @ z[i], b[i], atol=1e-4)
            np.testing.assert_allclose(np.abs(d[i]).max(), optimum, rtol=1e-4, atol=1e-6)
    assert 20 < n_feasible < rows  # both kinds were exercised


def numpy_projection_by_breakpoints(t, w, b):
    """The exact l_inf projection in float64: the step -lambda sign(r) sign(w) clipped to the box,
    lambda found on the sorted breakpoints of the piecewise-linear reached change."""
    residual = w @ t - b
    w = w * np.sign(residual)
    room = np.where(w > 0, t, np.where(w < 0, 1 - t, 0.0))
    order = np.argsort(room)
    p, a = room[order], np.abs(w)[order]
    reach = np.cumsum(a * p) + p * (a.sum() - np.cumsum(a))  # change reached at lambda = p_k
    k = np.searchsorted(reach, abs(residual))  # breakpoints passed: those coordinates saturate
    lam = np.inf if k == len(p) else (abs(residual) - np.sum(a[:k] * p[:k])) / a[k:].sum()
    return np.where(w > 0, -np.minimum(lam, t), np.where(w < 0, np.minimum(lam, 1 - t), 0.0))


def test_projection_linf_high_dimension_against_breakpoints():
    rng = np.random.default_rng(1)
    rows, n = 16, 3072
    t = rng.uniform(0, 1, (rows, n))
    t[:, ::10] = rng.choice([0.0, 1.0], (rows, len(range(0, n, 10))))  # many on the box
    w = rng.normal(size=(rows, n))
    w[:, ::7] = 0.0
    shift = rng.uniform(0.5, 1500.0, rows) * rng.choice([-1, 1], rows)  # box inactive ... unreachable
    b = np.einsum("ij,ij->i", w, t) + shift
    d = projection_linf(t.astype("float32"), w.astype("float32"), b.astype("float32")).numpy()
    for i in range(rows):
        expected = numpy_projection_by_breakpoints(t[i], w[i], b[i])
        np.testing.assert_allclose(d[i], expected, atol=1e-5)


# -- FAB on linear classifiers: the analytic minimum ----------------------------


def linear_case(classes, use_bias, seed=0, n=6):
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(48, classes)).astype("float32")
    bias = rng.normal(size=classes).astype("float32") if use_bias else None
    x = rng.uniform(0.35, 0.65, (n, 4, 4, 3)).astype("float32")
    model = linear_model(kernel, bias)
    y = predict(model, x)
    logits = x.reshape(n, -1) @ kernel + (0 if bias is None else bias)
    # Distance of each example to each hyperplane z_k = z_y: |margin| / ||w_k - w_y||_1.
    dist = np.full((n, classes), np.inf)
    for i in range(n):
        for k in range(classes):
            if k != y[i]:
                dist[i, k] = (logits[i, y[i]] - logits[i, k]) / np.abs(kernel[:, k] - kernel[:, y[i]]).sum()
    return model, x, y, dist


def fab_on_a_line(n_iter, alpha_max=0.1, eta=1.05, beta=0.9):
    """FAB's best perturbation on a linear classifier, as a fraction of the minimal one.

    On a linear model both projections point along the same optimal direction,
    so FAB reduces to a scalar recurrence on u = (distance travelled) / minimum:
    the iterate's projection is 1 - u, the clean image's is 1.
    """
    u, best = 0.0, np.inf
    for _ in range(n_iter):
        a_iter = max(abs(1 - u), 1e-8)
        alpha = min(a_iter / (a_iter + 1), alpha_max)
        u = (u + eta * (1 - u)) * (1 - alpha) + eta * alpha
        if u > 1:  # misclassified: record, step back towards the clean image
            best = min(best, u)
            u *= beta
    return best


@pytest.mark.parametrize("use_bias", [False, True])
def test_fab_targeted_finds_the_analytic_minimum_of_a_linear_classifier(use_bias):
    model, x, y, dist = linear_case(classes=2, use_bias=use_bias)
    minimum = dist.min(1)
    assert minimum.max() < 0.3  # the box [0, 1] is not in the way from x in [0.35, 0.65]
    attack = FABTargeted(eps=0.5, n_iter=10, seed=0)  # 9 targets asked, 1 exists
    x_adv, robust = attack.perturb(model, x, y)
    x_adv = x_adv.numpy()
    assert not robust.numpy().any()
    found = linf(x_adv - x)
    assert np.all(found >= minimum * (1 - 1e-4))  # nothing beats the minimum
    np.testing.assert_allclose(found, minimum, rtol=0.01)
    # The exact FAB trajectory (eta 1.05 overshoot leaves it 0.52 % above the minimum).
    np.testing.assert_allclose(found, minimum * fab_on_a_line(10), rtol=1e-4)
    np.testing.assert_array_equal(predict(model, x_adv), 1 - y)  # the target class


def test_fab_untargeted_finds_the_closest_class_boundary():
    model, x, y, dist = linear_case(classes=4, use_bias=True, seed=3)
    attack = FAB(eps=0.5, n_restarts=1, n_iter=10)
    x_adv, robust = attack.perturb(model, x, y)
    assert not robust.numpy().any()
    np.testing.assert_allclose(linf(x_adv.numpy() - x), dist.min(1) * fab_on_a_line(10), rtol=1e-4)


def test_fab_counts_a_point_only_within_eps():
    model, x, y, dist = linear_case(classes=2, use_bias=True)
    minimum = dist.min(1)
    eps = float(np.median(minimum))
    x_adv, robust = FABTargeted(eps=eps, n_iter=10).perturb(model, x, y)
    x_adv, robust = x_adv.numpy(), robust.numpy()
    # Robust exactly where the analytic minimum exceeds eps (with FAB's 1 % slack).
    clear = np.abs(minimum - eps) > 0.01 * minimum
    np.testing.assert_array_equal(robust[clear], (minimum > eps)[clear])
    assert robust.any() and not robust.all()
    np.testing.assert_array_equal(x_adv[robust], x[robust])  # robust rows: the clean image
    assert np.all(linf(x_adv - x) <= eps + 1e-6)


# -- Square breaks gradient masking ---------------------------------------------


class Quantise(keras.layers.Layer):
    """Rounds to the 1/255 grid; the gradient is exactly zero (masked)."""

    def call(self, x):
        return tf.stop_gradient(tf.round(x * 255.0) / 255.0) + 0.0 * x


def masked_linear_model(seed=0, n=8):
    """Two classes, z1 - z0 = <v, x - 1/2> with v in {-1, 1}^192; clean margins in [1.5, 2.5].

    The worst case in the eps-ball moves the margin by 192 eps = 6.0, a random
    point of the ball by about 0.25 (one standard deviation).
    """
    rng = np.random.default_rng(seed)
    v = rng.choice([-1.0, 1.0], 192)
    kernel = np.stack([np.zeros(192), v], 1).astype("float32")
    bias = np.array([0.0, -0.5 * v.sum()], "float32")
    model = keras.Sequential([
        keras.Input((8, 8, 3)), Quantise(), keras.layers.Flatten(), keras.layers.Dense(2),
    ])
    model.layers[-1].set_weights([kernel, bias])
    offsets = rng.uniform(-30, 30, (n, 192)) / 255
    margins = rng.uniform(1.5, 2.5, n)
    offsets += np.outer(-margins - offsets @ v, v) / 192  # <v, offset> = -margin
    x = (np.round((0.5 + offsets) * 255) / 255).reshape(n, 8, 8, 3).astype("float32")
    return model, x, np.zeros(n, "int32")


def test_square_breaks_a_gradient_masked_model_that_pgd_cannot():
    model, x, y = masked_linear_model()
    assert np.all(predict(model, x) == y)
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        loss = tf.reduce_sum(model(xt, training=False)[:, 1])
    assert np.all(tape.gradient(loss, xt).numpy() == 0)  # the premise: masked gradients

    x_pgd = PGD(eps=EPS, step_size=2 / 255, steps=20, seed=0)(model, x, y).numpy()
    assert np.all(predict(model, x_pgd) == y)

    x_adv, robust = Square(eps=EPS, n_queries=300, seed=0).perturb(model, x, y)
    x_adv = x_adv.numpy()
    assert not robust.numpy().any()
    assert np.all(predict(model, x_adv) != y)
    assert np.all(linf(x_adv - x) <= EPS + 1e-6)
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_square_size_schedule():
    # 10,000 queries, 32x32x3 images (the reference's unscaled schedule).
    sizes = square_sizes(10000, 0.8, 32, 32, 3)
    expected = {0: 29, 10: 29, 11: 20, 50: 20, 51: 14, 200: 14, 201: 10, 501: 7, 1001: 5,
                2001: 4, 4001: 3, 6001: 2, 8001: 1, 9999: 1}
    for query, side in expected.items():
        assert sizes[query] == side, (query, sizes[query], side)
    # 5,000 queries, rescaled (the reference's standalone default): the same
    # schedule at half the query counts.
    np.testing.assert_array_equal(square_sizes(5000, 0.8, 32, 32, 3), sizes[::2])
    # 5,000 queries as AutoAttack runs Square (resc_schedule=False): the raw
    # counts, i.e. the first half of the 10,000-query schedule.
    raw = square_sizes(5000, 0.8, 32, 32, 3, rescale_schedule=False)
    np.testing.assert_array_equal(raw, sizes[:5000])
    assert raw[10] == 29 and raw[11] == 20 and raw[1000] == 7 and raw[4500] == 3
    # Never larger than the image, never below 1.
    small = square_sizes(100, 1.0, 3, 5, 1)
    assert small.max() == 3 and small.min() >= 1


# -- the attack interface ---------------------------------------------------------


def interface_data(n=12, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 8, 8, 3)).astype("float32")
    x[:2] = 0.0
    x[2:4] = 1.0
    return x


@pytest.mark.parametrize("index", [0, 1, 2], ids=["fab-t", "fab", "square"])
def test_interface_invariants_determinism_and_tf_function(index):
    model = tiny_cnn()
    x = interface_data()
    clean = predict(model, x)
    y = clean.copy()
    y[:3] = (y[:3] + 1) % 4  # three clean-misclassified rows
    eps = 0.03  # some rows break, not all

    def make():
        if index == 0:
            return FABTargeted(eps=eps, n_target_classes=2, n_restarts=2, n_iter=5, seed=3)
        if index == 1:
            return FAB(eps=eps, n_restarts=2, n_iter=5, seed=3)
        return Square(eps=eps, n_queries=25, n_restarts=2, seed=3)

    x_adv, robust = make().perturb(model, x, y)
    x_adv, robust = x_adv.numpy(), robust.numpy()
    correct = clean == y
    assert x_adv.dtype == np.float32 and x_adv.shape == x.shape
    assert np.all(linf(x_adv - x) <= eps + 1e-6)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not np.any(robust & ~correct)
    broken = correct & ~robust
    assert broken.any() and robust.any()
    adv_pred = predict(model, x_adv)
    assert np.all(adv_pred[broken] != y[broken])
    assert np.all(adv_pred[robust] == y[robust])
    np.testing.assert_array_equal(x_adv[~correct], x[~correct])

    again_adv, again_robust = make().perturb(model, x, y)
    np.testing.assert_array_equal(again_adv.numpy(), x_adv)
    np.testing.assert_array_equal(again_robust.numpy(), robust)

    attack = make()
    graph_adv, graph_robust = tf.function(lambda a, b: attack.perturb(model, a, b))(tf.constant(x), tf.constant(y))
    np.testing.assert_array_equal(graph_robust.numpy(), robust)
    np.testing.assert_allclose(graph_adv.numpy(), x_adv, atol=1e-5)

    # Keyed draws: the same rows in other batches, given their indices, give the same result.
    parts = [make().perturb(model, x[rows], y[rows], indices=np.arange(12)[rows])
             for rows in (slice(0, 5), slice(5, 12))]
    np.testing.assert_array_equal(np.concatenate([r.numpy() for _, r in parts]), robust)
    np.testing.assert_allclose(np.concatenate([a.numpy() for a, _ in parts]), x_adv, atol=1e-6)
    if index == 2:  # another seed draws other squares
        other = Square(eps=eps, n_queries=25, n_restarts=2, seed=4).perturb(model, x, y)
        assert not np.array_equal(other[0].numpy(), x_adv)


def test_registry_config_and_generators():
    for name, cls in (("fab-t", FABTargeted), ("fab", FAB), ("square", Square)):
        attack = build_attack(name, eps=EPS, seed=5)
        assert isinstance(attack, cls)
        config = attack.get_config()
        assert config["attack"] == name and config["seed"] == 5 and config["eps"] == EPS
        assert attack.seed_generators() == {}  # keyed draws: nothing to checkpoint
    fab_t = FABTargeted()
    assert (fab_t.n_target_classes, fab_t.n_restarts, fab_t.n_iter) == (9, 1, 100)
    assert (fab_t.alpha_max, fab_t.eta, fab_t.beta) == (0.1, 1.05, 0.9)
    square = Square()
    assert (square.n_queries, square.p_init) == (5000, 0.8)


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: FABTargeted(n_target_classes=0), "n_target_classes"),
        (lambda: FABTargeted(eps=-1), "eps"),
        (lambda: FAB(n_iter=2.5), "n_iter"),
        (lambda: FAB(eta=0.5), "eta"),
        (lambda: FAB(beta=0), "beta"),
        (lambda: FAB(alpha_max=2), "alpha_max"),
        (lambda: FAB(norm="l2"), "norm"),
        (lambda: Square(n_queries=0), "n_queries"),
        (lambda: Square(p_init=0), "p_init"),
        (lambda: Square(norm="l2"), "norm"),
    ],
)
def test_bad_settings_raise_config_error(make, argument):
    with pytest.raises(ConfigError, match=argument):
        make()
