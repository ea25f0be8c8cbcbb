"""Attacks against independent references: invariants, a NumPy re-derivation
of one step on a linear model, and a finite-difference gradient check."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gacd_tf.attacks import FGSM, PGD, KLDivergence, build_attack
from gacd_tf.errors import ConfigError

EPS = {"linf": 8 / 255, "l2": 0.5}
STEP = {"linf": 2 / 255, "l2": 0.125}


def tiny_cnn(seed=0, num_classes=4, activation="tanh", batch_norm=False):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8, 8, 3)), keras.layers.Conv2D(6, 3, activation=activation)]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization())
    layers += [keras.layers.Flatten(), keras.layers.Dense(num_classes)]
    return keras.Sequential(layers)


def data(n=16, seed=1, num_classes=4):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, 8, 8, 3)).astype("float32")
    x[:2] = 0.0  # on the box boundary: projection must keep them in [0, 1]
    x[2:4] = 1.0
    y = rng.integers(0, num_classes, size=n).astype("int32")
    return x, y


def per_example_norm(d, norm):
    d = d.reshape(len(d), -1)
    return np.abs(d).max(1) if norm == "linf" else np.sqrt((d**2).sum(1))


def ce(model, x, y):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x, training=False)).numpy()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", ["pgd", "fgsm"])
def test_stays_in_ball_and_box_and_beats_random_noise(norm, kind):
    model = tiny_cnn()
    x, y = data()
    eps = EPS[norm]
    if kind == "pgd":
        attack = PGD(eps=eps, step_size=STEP[norm], steps=7, norm=norm, seed=3)
    else:
        attack = FGSM(eps=eps, norm=norm)
    x_adv = attack(model, x, y).numpy()
    assert x_adv.dtype == np.float32 and x_adv.shape == x.shape
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.all(per_example_norm(x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-7)

    # A random perturbation of the same size, kept in the box.
    rng = np.random.default_rng(0)
    noise = rng.normal(size=x.shape).astype("float32")
    if norm == "linf":
        noise = np.sign(noise) * eps
    else:
        noise *= eps / per_example_norm(noise, "l2").reshape(-1, 1, 1, 1)
    x_rand = np.clip(x + noise, 0, 1)
    assert ce(model, x_adv, y).mean() > ce(model, x_rand, y).mean() + 1e-3
    assert np.mean(ce(model, x_adv, y) >= ce(model, x, y) - 1e-6) > 0.9


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_one_step_matches_numpy_on_a_linear_model(norm):
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(5)])
    w, b = (v.astype("float64") for v in model.layers[-1].get_weights())
    x, y = data(n=8, num_classes=5)
    eps, alpha = EPS[norm], STEP[norm] * 3

    # NumPy: d CE / d x = W (softmax - onehot).
    logits = x.reshape(8, -1).astype("float64") @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = ((p - np.eye(5)[y]) @ w.T).reshape(x.shape)
    if norm == "linf":
        step = np.sign(g)
        delta = np.clip(alpha * step, -eps, eps)
    else:
        step = g / per_example_norm(g, "l2").reshape(-1, 1, 1, 1)
        delta = alpha * step
        delta *= np.minimum(1, eps / per_example_norm(delta, "l2")).reshape(-1, 1, 1, 1)
    expected = np.clip(x + delta, 0, 1)

    attack = PGD(eps=eps, step_size=alpha, steps=1, norm=norm, random_start=False)
    np.testing.assert_allclose(attack(model, x, y).numpy(), expected, atol=1e-6)


def test_gradient_matches_finite_differences():
    model = tiny_cnn(seed=5)
    x, y = data(n=2, seed=6)
    x = np.clip(x, 0.05, 0.95)
    attack = PGD(steps=1)
    grad = attack.gradient(model, tf.constant(x), tf.constant(y)).numpy()

    def total_loss(xv):
        return ce(model, xv, y).astype("float64").sum()

    rng = np.random.default_rng(0)
    h = 1e-2
    for _ in range(12):
        idx = tuple(rng.integers(0, s) for s in x.shape)
        plus, minus = x.copy(), x.copy()
        plus[idx] += h
        minus[idx] -= h
        fd = (total_loss(plus) - total_loss(minus)) / (2 * h)
        assert abs(fd - grad[idx]) <= 2e-3 + 2e-2 * abs(fd), (idx, fd, grad[idx])


def test_random_start_is_seeded_and_zero_steps_returns_start():
    model = tiny_cnn()
    x, y = data()
    a = PGD(steps=0, seed=11)(model, x, y).numpy()
    b = PGD(steps=0, seed=11)(model, x, y).numpy()
    c = PGD(steps=0, seed=12)(model, x, y).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.abs(a - x).max() <= 8 / 255 + 1e-7 and np.abs(a - x).max() > 4 / 255
    np.testing.assert_array_equal(PGD(steps=0, random_start=False)(model, x, y).numpy(), x)


def test_model_is_in_inference_mode_during_the_attack():
    model = tiny_cnn(batch_norm=True)
    x, y = data()
    bn = model.layers[1]
    before = [v.numpy().copy() for v in bn.non_trainable_variables]
    PGD(steps=3, seed=1)(model, x, y)
    for v, old in zip(bn.non_trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), old)


def test_works_inside_tf_function_and_with_kl_objective():
    model = tiny_cnn()
    x, y = data()
    target = tf.nn.softmax(model(x)).numpy()
    attack = PGD(steps=3, objective=KLDivergence(), seed=2)

    @tf.function
    def run(x):
        return attack(model, x, target)

    x_adv = run(tf.constant(x)).numpy()
    assert np.abs(x_adv - x).max() <= 8 / 255 + 1e-6
    q = tf.nn.softmax(model(x_adv)).numpy()
    assert np.sum(target * np.log(target / q), 1).mean() > 1e-6


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match="eps must be >= 0"):
        PGD(eps=-0.1)
    with pytest.raises(ConfigError, match="steps"):
        PGD(steps=1.5)
    with pytest.raises(ConfigError, match="unknown attack 'cw'"):
        build_attack("cw")
    with pytest.raises(ConfigError, match="unknown attack norm"):
        PGD(norm="l1")


def test_the_ot_objective_names_the_import_that_registers_it():
    """"ot" is GACD's (gacd_tf.methods.gacd): asked for before that import, the error says so."""
    import subprocess
    import sys

    code = ("from gacd_tf.attacks import get_objective\n"
            "try:\n    get_objective('ot')\nexcept Exception as err:\n    print(err)\n"
            "import gacd_tf.methods.gacd\nprint(type(get_objective('ot')).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300).stdout.splitlines()
    assert out[0].startswith("unknown attack objective 'ot'; choose one of: ce, ")
    assert out[0].endswith("('ot' is registered by gacd_tf.methods.gacd: import it first)")
    assert out[1] == "OptimalTransport"
