"""APGD (AutoAttack's apgd-ce, apgd-dlr, apgd-t) against independent references:
NumPy re-derivations of the DLR losses and of whole APGD runs (written after
the reference's PyTorch loop, with its loss history array), hand-computed
checkpoints and halving decisions, an analytic linear case, and invariants."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gacd_tf.attacks import (
    APGD,
    ATTACKS,
    PGD,
    APGDTargeted,
    apgd_checkpoints,
    build_attack,
    dlr_loss,
    halving_decision,
    targeted_dlr_loss,
)
from gacd_tf.attacks.objectives import get_objective
from gacd_tf.errors import ConfigError, ModelError


def tiny_cnn(seed=0, num_classes=5):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(6, 3, activation="tanh"),
                             keras.layers.Flatten(), keras.layers.Dense(num_classes)])


def images(n=16, seed=1, shape=(8, 8, 3)):
    x = np.random.default_rng(seed).uniform(0, 1, size=(n, *shape)).astype("float32")
    x[:2] = 0.0  # on the box boundary
    x[2:4] = 1.0
    return x


def predicted(model, x):
    return np.argmax(model(x, training=False).numpy(), 1).astype("int64")


def linf(d):
    return np.abs(d.reshape(len(d), -1)).max(1)


def ce(model, x, y):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x, training=False)).numpy()


# --------------------------------------------------------------------------
# DLR losses against NumPy.

def np_dlr(z, y):
    s = np.sort(z, 1)[:, ::-1]
    other = np.array([np.max(np.delete(z[i], y[i])) for i in range(len(z))])
    return -(z[np.arange(len(z)), y] - other) / (s[:, 0] - s[:, 2] + 1e-12)


def np_dlr_targeted(z, y, t):
    s = np.sort(z, 1)[:, ::-1]
    r = np.arange(len(z))
    return -(z[r, y] - z[r, t]) / (s[:, 0] - 0.5 * (s[:, 2] + s[:, 3]) + 1e-12)


def test_dlr_losses_match_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(64, 10)).astype("float32") * 3
    y = rng.integers(0, 10, 64)
    y[:8] = np.argmax(z[:8], 1)  # label is the top class for some rows
    t = (y + rng.integers(1, 10, 64)) % 10
    np.testing.assert_allclose(dlr_loss(z, y).numpy(), np_dlr(z.astype("float64"), y),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(targeted_dlr_loss(z, y, t).numpy(),
                               np_dlr_targeted(z.astype("float64"), y, t), rtol=1e-5, atol=1e-6)
    # The registered objectives are the same functions on model outputs.
    np.testing.assert_allclose(get_objective("dlr")({"logits": z}, y).numpy(),
                               dlr_loss(z, y).numpy())
    np.testing.assert_allclose(get_objective("dlr-targeted")((None, z), (y, t)).numpy(),
                               targeted_dlr_loss(z, y, t).numpy())
    # Hand case: z = [3, 1, 0], y = 0: -(3 - 1) / (3 - 0).
    assert dlr_loss(np.array([[3.0, 1.0, 0.0]], "float32"), [0]).numpy()[0] == pytest.approx(-2 / 3)
    with pytest.raises(ModelError, match="at least 4 classes"):
        targeted_dlr_loss(np.zeros((2, 3), "float32"), [0, 1], [1, 2])


# --------------------------------------------------------------------------
# Checkpoints and halving: hand-computed cases.

def test_checkpoints_by_hand():
    # n=100: intervals 22, 19, 16, 13, 10, 7, 6, 6 (shortest int(6.0)=6, decrease 3).
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    # n=20: first int(4.4)=4, decrease max(int(0.6), 1)=1, shortest max(int(1.2), 1)=1.
    assert apgd_checkpoints(20) == [4, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
    # n=10: first int(2.2)=2, then every iteration.
    assert apgd_checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    # n=50: first 11, decrease int(1.5)=1, shortest int(3.0...)=3.
    assert apgd_checkpoints(50) == [11, 21, 30, 38, 45]
    assert apgd_checkpoints(1) == [1]


def test_halving_decisions_by_hand():
    # window 22, rho 0.75: halve when at most 16.5 of the 22 steps raised the loss.
    got = halving_decision([16, 17, 0, 22], 22, 0.75, [True] * 4, [0.0] * 4, [1.0] * 4)
    assert got.numpy().tolist() == [True, False, True, False]
    # window 3: at most 2.25 -> 2 halves, 3 does not.
    assert halving_decision([2, 3], 3, 0.75, [True, True], [0, 0], [1, 1]).numpy().tolist() == \
        [True, False]
    # Not halved last time and no improvement (>=, ties included) -> halve despite 3/3 rises.
    got = halving_decision([3, 3, 3, 3], 3, 0.75, [False, False, True, False],
                           [1.0, 1.0, 1.0, 1.0], [1.0, 0.5, 1.0, 1.5])
    assert got.numpy().tolist() == [True, True, False, False]
    # rho = 1: always halve on the rise count alone; rho = 0: only with no rise at all.
    assert halving_decision([5], 5, 1.0, [True], [0.0], [1.0]).numpy().tolist() == [True]
    assert halving_decision([1, 0], 5, 0.0, [True] * 2, [0.0] * 2, [1.0] * 2).numpy().tolist() \
        == [False, True]


# --------------------------------------------------------------------------
# Whole runs against a NumPy APGD written after the reference's loop.

class NumpyMLP:
    """The Keras MLP below in float64, with hand-written input gradients."""

    def __init__(self, model):
        self.w1, self.b1, self.w2, self.b2 = (v.astype("float64") for v in model.get_weights())

    def logits(self, x):
        h = np.tanh(x.reshape(len(x), -1) @ self.w1 + self.b1)
        return h @ self.w2 + self.b2, h

    def loss_and_grad(self, x, y, loss, target=None):
        z, h = self.logits(x)
        r = np.arange(len(z))
        dz = np.zeros_like(z)
        if loss == "ce":
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            value = -np.log(p[r, y])
            dz = p.copy()
            dz[r, y] -= 1
        else:
            order = np.argsort(-z, 1, kind="stable")
            if loss == "dlr":
                masked = z.copy()
                masked[r, y] = -np.inf
                other = masked.argmax(1)
                num = z[r, y] - z[r, other]
                den = z[r, order[:, 0]] - z[r, order[:, 2]] + 1e-12
                np.add.at(dz, (r, order[:, 0]), num / den**2)
                np.add.at(dz, (r, order[:, 2]), -num / den**2)
            else:
                other = target
                num = z[r, y] - z[r, other]
                den = z[r, order[:, 0]] - 0.5 * (z[r, order[:, 2]] + z[r, order[:, 3]]) + 1e-12
                np.add.at(dz, (r, order[:, 0]), num / den**2)
                np.add.at(dz, (r, order[:, 2]), -0.5 * num / den**2)
                np.add.at(dz, (r, order[:, 3]), -0.5 * num / den**2)
            value = -num / den
            np.add.at(dz, (r, y), -1 / den)
            np.add.at(dz, (r, other), 1 / den)
        dh = dz @ self.w2.T * (1 - h**2)
        return value, (dh @ self.w1.T).reshape(x.shape), z


def numpy_apgd_run(net, x, y, x_adv, eps, n_iter, loss, target=None, rho=0.75):
    """One run of autopgd_base.attack_single_run (l_inf), every array in float64.

    Returns x_best, loss_best, the per-example first misclassified iterate
    (NaN where none) and how many step halvings happened.
    """
    b = len(x)
    shape = (b,) + (1,) * (x.ndim - 1)
    loss_now, grad, z = net.loss_and_grad(x_adv, y, loss, target)
    first = np.full_like(x, np.nan)
    wrong = z.argmax(1) != y
    first[wrong] = x_adv[wrong]
    x_best, grad_best, loss_best = x_adv.copy(), grad.copy(), loss_now.copy()
    loss_steps = np.zeros([n_iter, b])
    step = 2 * eps * np.ones(shape)
    x_old = x_adv.copy()
    k, counter3 = max(int(0.22 * n_iter), 1), 0
    n_min, decr = max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
    loss_best_last, reduced_last = loss_best.copy(), np.ones(b)
    halvings = 0
    for i in range(n_iter):
        grad2 = x_adv - x_old
        x_old = x_adv.copy()
        a = 0.75 if i > 0 else 1.0
        x1 = np.clip(np.minimum(np.maximum(x_adv + step * np.sign(grad), x - eps), x + eps), 0, 1)
        x1 = np.clip(np.minimum(np.maximum(x_adv + (x1 - x_adv) * a + grad2 * (1 - a), x - eps),
                                x + eps), 0, 1)
        x_adv = x1
        loss_now, grad, z = net.loss_and_grad(x_adv, y, loss, target)
        new = (z.argmax(1) != y) & np.isnan(first.reshape(b, -1)[:, 0])
        first[new] = x_adv[new]
        loss_steps[i] = loss_now
        better = loss_now > loss_best
        x_best[better], grad_best[better], loss_best[better] = \
            x_adv[better], grad[better], loss_now[better]
        counter3 += 1
        if counter3 == k:
            # check_oscillation: index -1 wraps to the (zero) last row, as in torch.
            t = sum((loss_steps[i - c] > loss_steps[i - c - 1]).astype(float) for c in range(k))
            osc = (t <= np.float32(k * rho)).astype(float)
            no_impr = (1 - reduced_last) * (loss_best_last >= loss_best)
            osc = np.maximum(osc, no_impr)
            reduced_last, loss_best_last = osc.copy(), loss_best.copy()
            h = osc > 0
            halvings += int(h.sum())
            step[h] /= 2
            x_adv[h], grad[h] = x_best[h], grad_best[h]
            k, counter3 = max(k - decr, n_min), 0
    return x_best, loss_best, first, halvings


def mlp(seed=0, num_classes=5, shape=(3, 3, 2)):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(shape), keras.layers.Flatten(),
                             keras.layers.Dense(8, activation="tanh"),
                             keras.layers.Dense(num_classes)])


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-dlr", "apgd-t"])
def test_whole_runs_match_numpy_reference(name):
    model = mlp()
    net = NumpyMLP(model)
    x = images(n=24, shape=(3, 3, 2))
    y = predicted(model, x)
    y[-2:] = (y[-2:] + 1) % 5  # two clean-misclassified rows
    eps, n_iter = 0.1, 20
    kwargs = {"n_target_classes": 2} if name == "apgd-t" else {"n_restarts": 2}
    attack = build_attack(name, eps=eps, n_iter=n_iter, seed=5, **kwargs)
    twin = build_attack(name, eps=eps, n_iter=n_iter, seed=5, **kwargs)
    x_adv, robust = attack.perturb(model, x, y)
    x_adv, robust = x_adv.numpy(), robust.numpy()

    # NumPy: the same random starts (the twin's keyed draws for run `run`).
    x64 = x.astype("float64")
    z_clean, _ = net.logits(x64)
    found = z_clean.argmax(1) != y
    first = np.where(found.reshape(-1, 1, 1, 1), x64, np.nan)
    best, best_loss = x64.copy(), np.full(len(x), -np.inf)
    ranked = np.argsort(-z_clean, 1, kind="stable")
    total_halvings = 0
    for run in range(2):
        if found.all():
            break
        start = twin.start(tf.constant(x), None, run).numpy().astype("float64")
        loss = {"apgd-ce": "ce", "apgd-dlr": "dlr", "apgd-t": "dlr-targeted"}[name]
        target = ranked[:, 1 + run] if name == "apgd-t" else None
        x_best, loss_best, first_run, halvings = numpy_apgd_run(
            net, x64, y, start, eps, n_iter, loss, target)
        total_halvings += halvings
        new = ~found & ~np.isnan(first_run.reshape(len(x), -1)[:, 0])
        first[new] = first_run[new]
        found |= new
        better = loss_best > best_loss
        best[better], best_loss[better] = x_best[better], loss_best[better]
    expected = np.where(found.reshape(-1, 1, 1, 1), first, best)

    assert total_halvings > 0  # the comparison exercises the step-size logic
    assert 0 < robust.sum() < len(x) - 2  # some broken, some not
    np.testing.assert_array_equal(robust, ~found)
    # float32 against float64 over 20 steps (DLR divides by a logit gap): a few
    # coordinates drift by up to ~1e-4 (eps is 0.1); another start would be ~eps away.
    np.testing.assert_allclose(x_adv, expected, atol=1e-4)
    np.testing.assert_array_equal(x_adv[-2:], x[-2:])  # clean-broken rows keep x


def test_linear_binary_model_reaches_the_analytic_vertex():
    # Two classes, linear logits: the cross-entropy rises along the fixed
    # direction s = sign(w_other - w_y), so its maximum over the ball and box
    # is the vertex x* = clip(x + eps s, 0, 1). APGD's first step (2 eps, no
    # momentum) lands there and every later step stays there.
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    w, b = model.layers[-1].get_weights()
    x = images(n=32, seed=2, shape=(4, 4, 3))
    y = predicted(model, x)
    eps = 0.03
    s = np.sign(w[:, 1 - y] - w[:, y]).T.reshape(x.shape)
    vertex = np.clip(x + eps * s, 0, 1)
    z = vertex.reshape(32, -1) @ w + b
    margin = (z[:, 1] - z[:, 0]) * np.where(y == 1, 1, -1)  # z_y - z_other at the vertex
    x_adv, robust = APGD(eps=eps, n_iter=10, seed=0).perturb(model, x, y)
    x_adv, robust = x_adv.numpy(), robust.numpy()
    assert 0 < robust.sum() < 32
    np.testing.assert_array_equal(robust, margin > 0)
    np.testing.assert_allclose(x_adv[robust], vertex[robust], atol=1e-6)


# --------------------------------------------------------------------------
# Invariants, counting, determinism, tf.function.

@pytest.mark.parametrize("name", ["apgd-ce", "apgd-dlr", "apgd-t"])
def test_counting_ball_box_and_misclassification(name):
    model = tiny_cnn()
    x = images()
    y = predicted(model, x)
    y[:3] = (y[:3] + 1) % 5  # clean-misclassified rows
    kwargs = {"n_target_classes": 3} if name == "apgd-t" else {}
    x_adv, robust = build_attack(name, eps=2 / 255, n_iter=10, seed=0, **kwargs).perturb(
        model, x, y)
    x_adv, robust = x_adv.numpy(), robust.numpy()
    assert x_adv.dtype == np.float32 and x_adv.shape == x.shape
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.all(linf(x_adv - x) <= 2 / 255 * (1 + 1e-5) + 1e-7)
    clean_correct = predicted(model, x) == y
    assert not robust[:3].any() and np.array_equal(x_adv[:3], x[:3])
    assert np.all(robust <= clean_correct)
    broken = ~robust & clean_correct
    assert broken.any() and robust.any()
    assert np.all(predicted(model, x_adv[broken]) != y[broken])
    assert np.all(predicted(model, x_adv[robust]) == y[robust])


def test_beats_random_noise_and_pgd():
    model = tiny_cnn()
    x = images(n=32)
    y = predicted(model, x)
    eps = 2 / 255
    x_adv, robust = APGD(eps=eps, n_iter=20, seed=0).perturb(model, x, y)
    _, robust_pgd = PGD(eps=eps, step_size=eps / 4, steps=10, seed=0).perturb(model, x, y)
    rng = np.random.default_rng(0)
    x_rand = np.clip(x + eps * np.sign(rng.normal(size=x.shape)), 0, 1).astype("float32")
    rand_broken = predicted(model, x_rand) != y
    robust = robust.numpy()
    assert (~robust).sum() >= rand_broken.sum()
    assert (~robust).sum() >= (~robust_pgd.numpy()).sum() - 1
    # Robust rows: their best point has a higher loss than the random point.
    assert robust.any()
    assert ce(model, x_adv.numpy(), y)[robust].mean() > ce(model, x_rand, y)[robust].mean()


def test_same_seed_same_result_and_tf_function_matches_eager():
    model = tiny_cnn()
    x = images()
    y = predicted(model, x)
    first = APGDTargeted(eps=2 / 255, n_iter=8, n_target_classes=2, seed=7).perturb(model, x, y)
    again = APGDTargeted(eps=2 / 255, n_iter=8, n_target_classes=2, seed=7).perturb(model, x, y)
    np.testing.assert_array_equal(first[0].numpy(), again[0].numpy())
    np.testing.assert_array_equal(first[1].numpy(), again[1].numpy())

    attack = APGDTargeted(eps=2 / 255, n_iter=8, n_target_classes=2, seed=7)
    graph = tf.function(lambda x, y: attack.perturb(model, x, y),
                        input_signature=[tf.TensorSpec([None, 8, 8, 3]),
                                         tf.TensorSpec([None], tf.int64)])
    x_graph, robust_graph = graph(x, y)
    np.testing.assert_allclose(x_graph.numpy(), first[0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(robust_graph.numpy(), first[1].numpy())
    # A different batch size runs through the same trace.
    assert graph(x[:5], y[:5])[0].shape == (5, 8, 8, 3)


def test_eot_on_a_deterministic_model_equals_one_pass_and_l2_stays_in_ball():
    model = tiny_cnn()
    x = images(n=8)
    y = predicted(model, x)
    one = APGD(eps=2 / 255, loss="dlr", n_iter=6, seed=1).perturb(model, x, y)
    eot = APGD(eps=2 / 255, loss="dlr", n_iter=6, seed=1, eot_iter=3).perturb(model, x, y)
    np.testing.assert_array_equal(one[1].numpy(), eot[1].numpy())
    np.testing.assert_allclose(one[0].numpy(), eot[0].numpy(), atol=1e-6)

    x_adv, _ = APGD(eps=0.3, norm="l2", n_iter=6, seed=1).perturb(model, x, y)
    x_adv = x_adv.numpy()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert np.all(np.sqrt(((x_adv - x).reshape(8, -1) ** 2).sum(1)) <= 0.3 * (1 + 1e-5))


def test_registry_config_and_bad_arguments():
    assert {"apgd-ce", "apgd-dlr", "apgd-t"} <= set(ATTACKS.names())
    assert build_attack("apgd-dlr", n_iter=5).get_config()["attack"] == "apgd-dlr"
    config = build_attack("apgd-t", n_iter=5, seed=2).get_config()
    assert config["attack"] == "apgd-t" and config["n_target_classes"] == 9
    assert config["seed"] == 2 and config["eot_iter"] == 1
    assert APGD().seed_generators() == {}  # keyed draws: nothing to checkpoint
    for bad in [{"n_iter": 0}, {"n_restarts": 1.5}, {"rho": 2}, {"eps": -1},
                {"loss": "kl"}, {"norm": "l1"}, {"eot_iter": 0}]:
        with pytest.raises(ConfigError, match=next(iter(bad))):
            APGD(**bad)
    with pytest.raises(ConfigError, match="n_target_classes"):
        APGDTargeted(n_target_classes=0)
