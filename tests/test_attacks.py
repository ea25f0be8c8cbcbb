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
    # The same as eagerly, and the KL ascended from the (same) start: above it on
    # every example, and far above it on average.
    eager = PGD(steps=3, objective=KLDivergence(), seed=2)(model, x, target).numpy()
    np.testing.assert_allclose(x_adv, eager, atol=1e-6)
    start = PGD(steps=0, objective=KLDivergence(), seed=2)(model, x, target).numpy()

    def kl(images):
        q = tf.nn.softmax(model(images)).numpy()
        return np.sum(target * np.log(target / q), 1)

    assert (kl(x_adv) > kl(start)).all()
    assert kl(x_adv).mean() > 10 * kl(start).mean()


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


# ---------------------------------------------------------------------------
# Keyed draws: the same numbers for an example whatever batch it is in.

def test_keyed_draws_are_splitmix64_streams_per_example():
    import zlib

    from gacd_tf.attacks import keyed_random

    mask = (1 << 64) - 1
    golden = 0x9E3779B97F4A7C15

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    def fold(key, part, position):
        return mix(key ^ mix((part + golden * (2 * position + 1)) & mask))

    def numpy_uniform(seed, stream, index, run, n):
        key = fold(fold(fold(seed & mask, zlib.crc32(stream.encode()), 0), index, 1), run, 2)
        bits = [mix((key + (j + 1) * golden) & mask) for j in range(n)]
        return np.array([(b >> 40) * 2.0 ** -24 for b in bits], np.float32)

    indices = tf.constant([7, 0, 123456789012, 7], tf.int64)
    got = keyed_random.uniform(keyed_random.example_keys(-3, "pgd/start", indices, 2), [2, 3])
    assert got.shape == (4, 2, 3)
    for row, index in enumerate([7, 0, 123456789012, 7]):
        np.testing.assert_array_equal(got.numpy()[row].ravel(),
                                      numpy_uniform(-3, "pgd/start", index, 2, 6))
    # A row's numbers depend on its own key only; other seeds, runs and streams differ.
    alone = keyed_random.uniform(keyed_random.example_keys(-3, "pgd/start", [0], 2), [2, 3])
    np.testing.assert_array_equal(alone.numpy()[0], got.numpy()[1])
    for other in (keyed_random.example_keys(-2, "pgd/start", [0], 2),
                  keyed_random.example_keys(-3, "pgd/start", [0], 3),
                  keyed_random.example_keys(-3, "square/query", [0], 2)):
        assert not np.array_equal(keyed_random.uniform(other, [2, 3]).numpy()[0], alone[0])
    many = keyed_random.uniform(keyed_random.example_keys(0, "s", tf.range(200), 0), [500])
    assert abs(float(tf.reduce_mean(many)) - 0.5) < 0.005
    assert abs(float(tf.math.reduce_variance(many)) - 1 / 12) < 0.002


def test_pgd_flags_do_not_depend_on_the_batch_size():
    from gacd_tf.evaluation import evaluate_robustness

    model = tiny_cnn(seed=4)
    x, _ = data(n=24, seed=5)
    y = np.argmax(model(x).numpy(), -1).astype("int32")

    def evaluate(batch_size, seed=3):
        attack = PGD(eps=EPS["linf"], step_size=1 / 255, steps=2, seed=seed, restarts=2)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
        return evaluate_robustness(model, ds, attack, verbose=0, return_examples=True)

    small, large = evaluate(5), evaluate(24)
    assert 0 < small["robust"].sum() < len(y), "the test needs some rows broken, some not"
    np.testing.assert_array_equal(small["robust"], large["robust"])
    np.testing.assert_allclose(small["x_adv"], large["x_adv"], atol=1e-6)
    # The draws matter: another seed moves the points elsewhere.
    assert np.abs(evaluate(5, seed=4)["x_adv"] - small["x_adv"]).max() > 1e-3


# ---------------------------------------------------------------------------
# clip_start: the first gradient at the clipped (Madry) or unclipped (ARD) start.

class SquareSumModel:
    """Logits of a constant class; its "features" are the image, whose objective
    ``-sum(x^2)`` has the gradient ``-2 x``: sign 0 at a clipped start on 0,
    sign +1 at an unclipped start below 0."""

    def __call__(self, x, training=False):
        return {"logits": tf.stack([tf.ones_like(x[:, 0, 0, 0]),
                                    tf.zeros_like(x[:, 0, 0, 0])], -1), "features": x}


def minus_square_sum(outputs, target):
    return -tf.reduce_sum(tf.square(outputs["features"]), axis=[1, 2, 3])


def test_clip_start_false_takes_the_first_gradient_at_the_unclipped_start():
    eps, alpha = 8 / 255, 6 / 255
    x = np.zeros((3, 4, 4, 3), np.float32)  # on the box's lower face
    x[2] = 0.5
    y = np.zeros(3, np.int32)
    model = SquareSumModel()
    expected = {}
    for clip in (True, False):
        kwargs = dict(eps=eps, step_size=alpha, steps=1, seed=9, objective=minus_square_sum,
                      clip_start=clip)
        start = PGD(**kwargs).start(tf.constant(x)).numpy().astype(np.float64)
        delta = start - x  # the noise (the same draw either way), clipped or not
        assert (start.min() < 0) != clip
        # NumPy: x1 = clip01(x + clip(x0 + alpha * sign(-2 x0) - x, -eps, eps)).
        step = start + alpha * np.sign(-2 * start)
        expected[clip] = np.clip(x + np.clip(step - x, -eps, eps), 0, 1)
        got = PGD(**kwargs)(model, x, y).numpy()
        np.testing.assert_allclose(got, expected[clip], atol=1e-6)
        assert delta.shape == x.shape
    # The two differ where the noise went below 0 by less than alpha: the unclipped
    # start steps up (sign +1), the clipped one stays at 0 (sign 0).
    assert np.abs(expected[True] - expected[False]).max() > 1e-3
    np.testing.assert_allclose(expected[True][2], expected[False][2])  # inside: the same
    # Zero steps: the returned point is in the box either way; perturb never counts an
    # unclipped start, and its points are in the ball and the box.
    for clip in (True, False):
        x0 = PGD(eps=eps, steps=0, seed=9, clip_start=clip)(model, x, y).numpy()
        assert x0.min() >= 0
        x_adv, robust = PGD(eps=eps, step_size=alpha, steps=2, seed=9, clip_start=clip,
                            objective=minus_square_sum).perturb(model, x, y)
        assert x_adv.numpy().min() >= 0 and np.abs(x_adv.numpy() - x).max() <= eps + 1e-6
        assert robust.numpy().all()
    assert PGD(clip_start=False).get_config()["clip_start"] is False
