"""The counting rule (PGD.perturb) and the AutoAttack ensemble, against independent
references: an analytic model whose attack path crosses a misclassified band, the
per-example AND of the attacks run alone, and stub attacks that record what they see."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from gacd_tf.attacks import ATTACKS, FGSM, PGD, AutoAttack
from gacd_tf.errors import ConfigError
from gacd_tf.evaluation import evaluate_robustness

from interrupt_helpers import Interrupted, interrupt_at

EPS = 8 / 255


def tiny_cnn(seed=0, num_classes=4, softmax=False):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8, 8, 3)), keras.layers.Conv2D(6, 3, activation="tanh"),
              keras.layers.Flatten(), keras.layers.Dense(num_classes)]
    if softmax:
        layers.append(keras.layers.Softmax())
    return keras.Sequential(layers)


def data(n=32, seed=1, num_classes=4):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, 8, 8, 3)).astype("float32")
    y = rng.integers(0, num_classes, size=n).astype("int64")
    return x, y


def model_labels(model, x, flip=()):
    """The model's own classes (all clean-correct), with the rows ``flip`` made wrong."""
    y = np.argmax(model(x, training=False).numpy(), -1).astype("int64")
    for i in flip:
        y[i] = (y[i] + 1) % 4
    return y


def within(x_adv, x, eps=EPS):
    return (np.abs(x_adv - x).reshape(len(x), -1).max(1) <= eps + 1e-6).all() \
        and x_adv.min() >= 0 and x_adv.max() <= 1


# ---------------------------------------------------------------------------
# The counting rule on PGD.

class BandModel:
    """Two classes; class 1 wins only while the image mean is within 1/255 of
    ``centre``. Its ``features`` output is that mean, which the attack's
    objective ascends, so every sign step adds exactly ``alpha`` to the mean."""

    def __init__(self, centre):
        self.centre = centre

    def __call__(self, x, training=False):
        s = tf.reduce_mean(x, axis=[1, 2, 3])
        bump = 1.0 - tf.square((s - self.centre) * 255.0)
        return {"logits": tf.stack([tf.zeros_like(s), bump], -1), "features": s}


def mean_objective(outputs, target):
    return outputs["features"]


def test_an_example_broken_only_at_an_intermediate_iterate_is_not_robust():
    alpha = 2 / 255
    # Iterates of a row starting at 0.3: 0.3 + k * alpha, k = 0..4; only k = 2 is in the band.
    model = BandModel(centre=0.3 + 2 * alpha)
    x = np.stack([np.full((4, 4, 3), v, np.float32) for v in (0.3, 0.6, 0.3)])
    y = np.array([0, 0, 1])  # row 2 is misclassified when clean
    attack = PGD(eps=EPS, step_size=alpha, steps=4, random_start=False, objective=mean_objective)

    last = attack(model, x, y).numpy()
    np.testing.assert_allclose(last[:, 0, 0, 0], np.array([0.3, 0.6, 0.3]) + 4 * alpha, atol=1e-6)
    assert np.all(np.argmax(model(last)["logits"].numpy(), -1) == [0, 0, 0])  # last iterate: fine

    x_adv, robust = attack.perturb(model, x, y)
    x_adv, robust = x_adv.numpy(), robust.numpy()
    assert robust.tolist() == [False, True, False]
    np.testing.assert_allclose(x_adv[0], 0.3 + 2 * alpha, atol=1e-6)  # the first bad iterate
    np.testing.assert_allclose(x_adv[1], 0.6 + 4 * alpha, atol=1e-6)  # robust: highest objective
    np.testing.assert_array_equal(x_adv[2], x[2])  # misclassified clean: the clean image

    # The same counting inside tf.function with an unknown batch size.
    specs = [tf.TensorSpec([None, 4, 4, 3]), tf.TensorSpec([None], tf.int64)]
    fn = tf.function(lambda a, b: attack.perturb(model, a, b), input_signature=specs)
    assert fn(x, y)[1].numpy().tolist() == [False, True, False]

    # evaluate_robustness counts with perturb: 1 of 3 robust, not the last iterate's 2 of 3.
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    result = evaluate_robustness(model, ds, attack, verbose=0)
    assert result["natural_accuracy"] == pytest.approx(2 / 3)
    assert result["robust_accuracy"] == pytest.approx(1 / 3)


def test_restarts_are_the_and_of_single_starts_with_the_same_draws():
    model = tiny_cnn(seed=2)
    x, _ = data(n=48, seed=3)
    y = model_labels(model, x, flip=[0])
    eps = EPS

    class RestartK(PGD):
        """One start: the keyed draws of restart ``k`` of a restarted PGD."""

        def __init__(self, k, **kwargs):
            super().__init__(**kwargs)
            self.k = k

        def keyed_start(self, x, indices, restart):
            return super().keyed_start(x, indices, restart + self.k)

    runs = [RestartK(k, eps=eps, step_size=1 / 255, steps=1, seed=7).perturb(model, x, y)
            for k in range(3)]
    flags = [r.numpy() for _, r in runs]
    assert not np.array_equal(flags[0], flags[1]), "restarts draw other starts"
    restarted = PGD(eps=eps, step_size=1 / 255, steps=1, seed=7, restarts=3)
    x_adv, robust = restarted.perturb(model, x, y)
    expected = flags[0] & flags[1] & flags[2]
    np.testing.assert_array_equal(robust.numpy(), expected)
    assert flags[0].sum() > expected.sum(), "the test needs restarts that break more points"
    assert not robust.numpy()[0]
    # A broken row keeps the example of the first start that broke it.
    for i in np.flatnonzero(~expected):
        first = next(k for k in range(3) if not flags[k][i])
        np.testing.assert_allclose(x_adv.numpy()[i], runs[first][0].numpy()[i], atol=1e-6)
    assert within(x_adv.numpy(), x, eps)


def test_pgd_settings_and_generators():
    attack = PGD(restarts=2, seed=1)
    assert attack.get_config()["restarts"] == 2
    assert attack.seed_generators() == {"seed_generator": attack.seed_generator}
    for bad in (0, 1.5, -1, True):
        with pytest.raises(ConfigError, match="restarts"):
            PGD(restarts=bad)


# ---------------------------------------------------------------------------
# Stub attacks for the ensemble.

def row_ids(x):
    """Each test image carries its row number in pixel (0, 0, 0) as id / 64."""
    return tf.cast(tf.round(x[:, 0, 0, 0] * 64.0), tf.int64)


def with_ids(x):
    x = x.copy()
    x[:, 0, 0, 0] = np.arange(len(x)) / 64.0
    return x


class BreakStub:
    """Breaks the rows whose id is in ``breaks`` (x_adv = x shifted by eps/2 inside
    the box) and records the ids it is given."""

    def __init__(self, breaks, name="stub", shift=EPS / 2):
        self.breaks = np.asarray(sorted(breaks), np.int64)
        self.name = name
        self.shift = shift
        self.seen = []

    def perturb(self, model, x, y):
        ids = row_ids(x)

        def record(values):
            self.seen.append(values.copy())
            return values

        ids = tf.ensure_shape(tf.numpy_function(record, [ids], tf.int64, stateful=True), [None])
        broken = tf.reduce_any(tf.equal(ids[:, None], self.breaks[None, :]), axis=1) \
            if len(self.breaks) else tf.zeros_like(ids, tf.bool)
        shifted = tf.clip_by_value(x + self.shift, 0.0, 1.0)
        x_adv = tf.where(broken[:, None, None, None], shifted, x)
        return x_adv, tf.logical_not(broken)

    def seed_generators(self):
        return {}

    def get_config(self):
        return {"attack": self.name}


def test_the_ensemble_never_attacks_a_broken_point_again():
    model = tiny_cnn()
    x, _ = data(n=40)
    x = with_ids(x)
    y = model_labels(model, x, flip=[1, 2])  # clean-misclassified: never attacked
    first = BreakStub({0, 3, 4, 5, 17}, "first")
    second = BreakStub({6, 7, 3}, "second")
    third = BreakStub(set(), "third")
    # The stubs break rows whatever the model says: no reclassification here.
    aa = AutoAttack(attacks=[first, second, third], verbose=0, reclassify=False)
    result = aa.run(model, x, y, batch_size=16)

    seen = [np.concatenate(s.seen) if s.seen else np.array([], np.int64)
            for s in (first, second, third)]
    everyone = set(range(40))
    assert sorted(seen[0]) == sorted(everyone - {1, 2})
    assert sorted(seen[1]) == sorted(everyone - {1, 2, 0, 3, 4, 5, 17})
    assert sorted(seen[2]) == sorted(everyone - {1, 2, 0, 3, 4, 5, 17, 6, 7})
    expected_robust = np.ones(40, bool)
    expected_robust[[1, 2, 0, 3, 4, 5, 17, 6, 7]] = False
    np.testing.assert_array_equal(result["robust"], expected_robust)
    assert result["natural_accuracy"] == pytest.approx(38 / 40)
    assert list(result["robust_accuracy_by_attack"]) == ["first", "second", "third"]
    assert list(result["robust_accuracy_by_attack"].values()) == pytest.approx(
        [33 / 40, 31 / 40, 31 / 40])
    assert result["robust_accuracy"] == pytest.approx(31 / 40)
    # Each broken point keeps its first adversarial example; the rest keep the clean image.
    np.testing.assert_allclose(result["x_adv"][[0, 6]], np.clip(x[[0, 6]] + EPS / 2, 0, 1),
                               atol=1e-7)
    np.testing.assert_array_equal(result["x_adv"][expected_robust], x[expected_robust])
    np.testing.assert_array_equal(result["x_adv"][[1, 2]], x[[1, 2]])
    np.testing.assert_array_equal(result["labels"], y)
    assert json.dumps({k: v for k, v in result.items() if not isinstance(v, np.ndarray)})


def test_an_attack_that_leaves_the_ball_is_not_counted():
    model = tiny_cnn()
    x, _ = data(n=8)
    x = with_ids(x)
    y = model_labels(model, x)
    cheat = BreakStub({0, 1}, "cheat", shift=2 * EPS)
    result = AutoAttack(attacks=[cheat], verbose=0, checks=False,
                        reclassify=False).run(model, x, y)
    assert result["robust"].all()
    assert any("outside" in w for w in result["warnings"])


def test_final_flags_are_the_and_of_the_attacks_run_alone():
    model = tiny_cnn(seed=3)
    x, _ = data(n=64, seed=4)
    y = model_labels(model, x, flip=[5, 9])
    attacks = [FGSM(eps=2 / 255), PGD(eps=4 / 255, step_size=1 / 255, steps=3, random_start=False),
               PGD(eps=EPS, step_size=2 / 255, steps=4, random_start=False)]
    alone = [a.perturb(model, x, y) for a in attacks]
    flags = np.stack([r.numpy() for _, r in alone])
    ensemble = AutoAttack(attacks=attacks, verbose=0)
    result = ensemble.run(model, x, y, batch_size=24)
    assert list(result["robust_accuracy_by_attack"]) == ["fgsm", "pgd", "pgd_2"]
    # Subsets of several sizes, one trace per attack (None batch dimension).
    assert [f.experimental_get_tracing_count() for f in ensemble._compiled.values()] == [1] * 4
    np.testing.assert_array_equal(result["robust"], flags.all(0))
    cumulative = np.logical_and.accumulate(flags, axis=0).mean(1)
    assert list(result["robust_accuracy_by_attack"].values()) == pytest.approx(cumulative)
    assert 0 < result["robust_accuracy"] < flags[0].mean() < result["natural_accuracy"]
    for i in np.flatnonzero(~result["robust"] & result["clean_correct"]):
        k = int(np.argmin(flags[:, i]))  # the first attack that broke row i
        np.testing.assert_allclose(result["x_adv"][i], alone[k][0].numpy()[i], atol=1e-5)
    assert np.all(result["predictions"][~result["robust"]] != y[~result["robust"]])

    # The batch interface gives the same flags, eagerly and inside tf.function.
    aa = AutoAttack(attacks=attacks, verbose=0)
    np.testing.assert_array_equal(aa.perturb(model, x, y)[1].numpy(), flags.all(0))
    fn = tf.function(lambda a, b: aa.perturb(model, a, b), reduce_retracing=True)
    x_adv, robust = fn(tf.constant(x[:40]), tf.constant(y[:40]))
    np.testing.assert_array_equal(robust.numpy(), flags.all(0)[:40])
    assert within(x_adv.numpy(), x[:40])


@pytest.mark.parametrize("names, settings", [
    (["pgd", "square"], {"pgd": {"steps": 3}, "square": {"n_queries": 50}}),
    (["apgd-ce", "apgd-t", "fab-t", "square"],
     {"apgd-ce": {"n_iter": 5}, "apgd-t": {"n_iter": 5, "n_target_classes": 3},
      "fab-t": {"n_iter": 5, "n_target_classes": 3}, "square": {"n_queries": 50}}),
    (["apgd-dlr", "fab"], {"apgd-dlr": {"n_iter": 5, "n_restarts": 2},
                           "fab": {"n_iter": 5, "n_restarts": 2}}),
])
def test_real_attacks_stay_in_the_ball_and_accuracy_only_falls(names, settings):
    assert set(names) <= set(ATTACKS.names())
    model = tiny_cnn(seed=5)
    x, _ = data(n=32, seed=6)
    y = model_labels(model, x, flip=[0, 1, 2])
    aa = AutoAttack(attacks=names, attack_settings=settings, verbose=0, seed=3)
    result = aa.run(model, x, y, batch_size=12)
    values = [result["natural_accuracy"], *result["robust_accuracy_by_attack"].values()]
    assert values == sorted(values, reverse=True)
    assert result["robust_accuracy"] == values[-1] == result["robust"].mean()
    assert result["robust_accuracy"] < result["natural_accuracy"]
    assert not result["robust"][[0, 1, 2]].any()
    assert within(result["x_adv"], x)
    assert result["attack"]["seed"] == 3 and result["attack"]["attacks"] == names
    if "square" in names:
        assert result["attack"]["settings"]["square"]["n_queries"] == 50
    # The batch interface inside tf.function (no retracing per subset size).
    fn = tf.function(lambda a, b: aa.perturb(model, a, b), reduce_retracing=True)
    for rows in (slice(0, 8), slice(8, 13)):
        x_adv, robust = (t.numpy() for t in fn(tf.constant(x[rows]), tf.constant(y[rows])))
        assert within(x_adv, x[rows]) and not (robust & ~result["clean_correct"][rows]).any()
    # Same model, examples and seed: the same result (generators restart from the seed).
    again = aa.run(model, x, y, batch_size=12)
    np.testing.assert_array_equal(again["robust"], result["robust"])
    np.testing.assert_array_equal(again["x_adv"], result["x_adv"])


# Killed inside APGD-CE, inside Square, and between the two (before Square's first batch).
@pytest.mark.parametrize("where", [("apgd-ce", 3), ("square", 2), ("square", 1)])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(where, tmp_path, capsys):
    model = tiny_cnn(seed=5)
    x, _ = data(n=32, seed=6)
    y = model_labels(model, x, flip=[0, 1])
    settings = {"apgd-ce": {"n_iter": 4}, "square": {"n_queries": 40}}

    def ensemble(seed=3):
        return AutoAttack(attacks=["apgd-ce", "square"], attack_settings=settings, verbose=0,
                          seed=seed)
    want = ensemble().run(model, x, y, batch_size=6)
    progress = str(tmp_path / "aa.npz")
    killed = ensemble()
    interrupt_at(killed, *where)
    with pytest.raises(Interrupted):
        killed.run(model, x, y, batch_size=6, progress_file=progress, progress_every=0)
    assert (tmp_path / "aa.npz").is_file()
    # Another evaluation (here another seed) refuses the file instead of mixing it in.
    with pytest.raises(ConfigError, match="belongs to another evaluation"):
        ensemble(seed=4).run(model, x, y, batch_size=6, progress_file=progress)
    with pytest.raises(ConfigError, match="belongs to another evaluation"):  # another model
        ensemble().run(tiny_cnn(seed=7), x, y, batch_size=6, progress_file=progress)
    capsys.readouterr()
    got = ensemble().run(model, x, y, batch_size=6, progress_file=progress, verbose=1)
    assert got["robust_accuracy_by_attack"] == want["robust_accuracy_by_attack"]
    out = capsys.readouterr().out
    batches = -(-int(want["clean_correct"].sum()) // 6)
    if where[0] == "apgd-ce":  # saved after batch 2 of the clean-correct points
        assert f"resumed from {progress} in apgd-ce at batch 3 of {batches} (" in out
        # The resumed attack's bar counts only the batches left (its ETA is this run's).
        assert f"{batches - 2}/{batches - 2}" in out and f"{batches}/{batches}" not in out
    elif where[1] == 2:  # saved after Square's first batch
        assert f"resumed from {progress} in square at batch 2 of " in out
    else:
        assert f"resumed from {progress} after apgd-ce, which had finished (" in out
    assert 0 < want["robust_accuracy"] < want["natural_accuracy"]
    for key in ("robust", "clean_correct", "x_adv", "predictions"):
        np.testing.assert_array_equal(got[key], want[key])
    assert not (tmp_path / "aa.npz").exists()  # removed once the evaluation ended


SMALL_STANDARD = {"apgd-ce": {"n_iter": 4}, "apgd-t": {"n_iter": 4, "n_target_classes": 3},
                  "fab-t": {"n_iter": 4, "n_target_classes": 3}, "square": {"n_queries": 30}}


def test_standard_flags_do_not_depend_on_the_batch_size():
    model = tiny_cnn(seed=5)
    x, _ = data(n=30, seed=6)
    y = model_labels(model, x, flip=[0])

    def run(batch_size):
        aa = AutoAttack(version="standard", attack_settings=SMALL_STANDARD, eps=4 / 255,
                        verbose=0, seed=3, checks=False)
        return aa.run(model, x, y, batch_size=batch_size)

    small, large = run(7), run(30)
    by_attack = list(large["robust_accuracy_by_attack"].values())
    assert large["natural_accuracy"] > by_attack[0] and 0 < by_attack[-1], \
        "the test needs points broken and points left"
    np.testing.assert_array_equal(small["robust"], large["robust"])
    np.testing.assert_allclose(small["x_adv"], large["x_adv"], atol=1e-6)
    assert small["robust_accuracy_by_attack"] == large["robust_accuracy_by_attack"]
    # The batch interface with the examples' indices agrees with run, batch by batch.
    aa = AutoAttack(version="standard", attack_settings=SMALL_STANDARD, eps=4 / 255, verbose=0,
                    seed=3)
    flags = np.concatenate([aa.perturb(model, x[i:i + 11], y[i:i + 11],
                                       indices=np.arange(i, min(i + 11, 30)))[1].numpy()
                            for i in range(0, 30, 11)])
    np.testing.assert_array_equal(flags, large["robust"])


def test_a_run_killed_and_resumed_with_another_batch_size_ends_as_an_uninterrupted_one(tmp_path):
    model = tiny_cnn(seed=5)
    x, _ = data(n=30, seed=6)
    y = model_labels(model, x, flip=[0])
    settings = {"apgd-ce": {"n_iter": 2}, "square": {"n_queries": 20}}

    def ensemble():
        return AutoAttack(attacks=["apgd-ce", "square"], attack_settings=settings,
                          eps=4 / 255, verbose=0, seed=3, checks=False)

    want = ensemble().run(model, x, y, batch_size=10)
    progress = str(tmp_path / "aa.npz")
    killed = ensemble()
    interrupt_at(killed, "apgd-ce", 2)  # killed in APGD-CE's second batch of 4
    with pytest.raises(Interrupted):
        killed.run(model, x, y, batch_size=4, progress_file=progress, progress_every=0)
    got = ensemble().run(model, x, y, batch_size=3, progress_file=progress, verbose=2)
    # APGD-CE broke points among those attacked after the resume (the draws mattered there).
    resumed_rows = np.flatnonzero(want["clean_correct"])[4:]
    assert (~want["robust"][resumed_rows]).any() and want["robust"].any()
    for key in ("robust", "predictions"):
        np.testing.assert_array_equal(got[key], want[key])
    np.testing.assert_allclose(got["x_adv"], want["x_adv"], atol=1e-6)
    assert got["robust_accuracy_by_attack"] == want["robust_accuracy_by_attack"]


class CoinModel:
    """A randomised classifier: each pass classifies each row correctly (class 0) with
    probability 1/2, from a seeded generator; its logits depend on the image a little,
    so the attacks have a gradient."""

    def __init__(self, seed=0):
        self.generator = tf.random.Generator.from_seed(seed)

    def __call__(self, x, training=False):
        coin = self.generator.uniform(tf.shape(x)[:1])
        score = coin - 0.5 + 1e-3 * tf.reduce_mean(x, axis=[1, 2, 3])
        return tf.stack([score, tf.zeros_like(score)], -1)


@pytest.mark.parametrize("reclassify", [True, False])
def test_rand_counts_a_break_only_if_the_returned_point_is_misclassified_again(reclassify):
    x, _ = data(n=64, seed=8)
    y = np.zeros(64, np.int64)
    aa = AutoAttack(version="rand", attacks=["apgd-ce"], verbose=0, checks=False,
                    attack_settings={"apgd-ce": {"n_iter": 4, "eot_iter": 2}},
                    reclassify=reclassify)
    result = aa.run(CoinModel(), x, y, batch_size=32)
    attacked = result["clean_correct"]
    assert 16 < attacked.sum() < 48
    broken = attacked & ~result["robust"]
    if reclassify:
        # The reference's count: a point whose returned image passes the one more pass
        # survives, though a noisy pass inside the attack misclassified an iterate.
        assert 0.2 * attacked.sum() < broken.sum() < 0.8 * attacked.sum()
        assert np.all(result["predictions"][broken] != y[broken])
    else:
        # Any misclassified pass breaks a point: with 5 passes of 1/2 each, all of them
        # break but for about 1 in 32.
        assert broken.sum() > 0.85 * attacked.sum()
    assert aa.get_config()["reclassify"] is reclassify


def test_the_version_settings_follow_the_reference():
    assert {"apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab"} <= set(ATTACKS.names())
    aa = AutoAttack(version="standard")
    assert list(aa.attacks) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    config = aa.get_config()["settings"]
    assert config["apgd-t"]["n_target_classes"] == 9 and config["fab-t"]["n_target_classes"] == 9
    assert config["square"]["n_queries"] == 5000
    # AutoAttack builds Square with resc_schedule=False (autoattack.py): p halves
    # at the raw query counts 10, 50, ..., 4000 of its 5,000 queries.
    assert config["square"]["rescale_schedule"] is False
    plus = AutoAttack(version="plus")
    assert list(plus.attacks) == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert plus.get_config()["settings"]["apgd-ce"]["n_restarts"] == 5
    assert plus.get_config()["settings"]["square"]["rescale_schedule"] is False
    rand = AutoAttack(version="rand")
    assert list(rand.attacks) == ["apgd-ce", "apgd-dlr"]


def test_bad_settings_are_refused_naming_the_argument():
    with pytest.raises(ConfigError, match="version"):
        AutoAttack(version="nope")
    with pytest.raises(ConfigError, match="'nope' is unknown; choose from"):
        AutoAttack(attacks=["pgd", "nope"])
    with pytest.raises(ConfigError, match="autoattack"):
        AutoAttack(attacks=["autoattack"])
    with pytest.raises(ConfigError, match="does not take"):
        AutoAttack(attacks=["pgd"], attack_settings={"pgd": {"n_queries": 5}})
    with pytest.raises(ConfigError, match="not in the attacks run"):
        AutoAttack(attacks=["pgd"], attack_settings={"fgsm": {}})
    with pytest.raises(ConfigError, match="norm"):
        AutoAttack(norm="l1")
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        AutoAttack(attacks=["fgsm"], verbose=0).run(tiny_cnn(), np.full((2, 8, 8, 3), 2.0),
                                                     np.zeros(2))


# ---------------------------------------------------------------------------
# The reference's sanity checks.

class Quantised(keras.layers.Layer):
    """Rounds pixels to 4 levels: no gradient flows through (masked gradients)."""

    def call(self, x):
        return tf.stop_gradient(tf.round(x * 3.0) / 3.0)


class Noisy(keras.layers.Layer):
    """Adds fresh noise at every call, in inference too (a randomised defence)."""

    def call(self, x):
        return x + tf.random.normal(tf.shape(x), stddev=0.05)


def sanity_model(kind):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((8, 8, 3))]
    if kind == "zero_gradients":
        layers.append(Quantised())
    if kind == "randomised":
        layers.append(Noisy())
    layers += [keras.layers.Flatten(), keras.layers.Dense(4)]
    if kind == "probabilities":
        layers.append(keras.layers.Softmax())
    return keras.Sequential(layers)


@pytest.mark.parametrize("kind, words", [
    ("probabilities", "look like probabilities"),
    ("zero_gradients", "zero input gradient"),
    ("randomised", "not deterministic"),
    ("plain", None),
])
def test_sanity_warnings(kind, words, capsys):
    model = sanity_model(kind)
    x, y = data(n=12)
    result = AutoAttack(attacks=["fgsm"], verbose=2).run(model, x, y, batch_size=8)
    out = capsys.readouterr().out
    assert "robust accuracy after fgsm: " in out
    if words is None:
        assert result["warnings"] == []
    else:
        assert len(result["warnings"]) == 1 and words in result["warnings"][0], result["warnings"]
        assert f"warning: {result['warnings'][0]}" in out


def test_square_breaking_what_the_gradient_attacks_left_is_a_warning():
    model = tiny_cnn()
    x, _ = data(n=20)
    x = with_ids(x)
    y = model_labels(model, x)
    attacks = [BreakStub({0}, "apgd-ce"), BreakStub({1, 2}, "square")]
    result = AutoAttack(attacks=attacks, verbose=0, reclassify=False).run(model, x, y)
    assert [w for w in result["warnings"] if "Square" in w]
    quiet = AutoAttack(attacks=[BreakStub({0, 1, 2}, "apgd-ce"), BreakStub(set(), "square")],
                       verbose=0, reclassify=False).run(model, x, y)
    assert quiet["warnings"] == []


# ---------------------------------------------------------------------------
# gacd-evaluate --attack=autoattack, and SavedModels.

def tiny_cifar_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((32, 32, 3)),
                             keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from program_helpers import write_tiny_cifar10

    root = tmp_path_factory.mktemp("aa_program")
    write_tiny_cifar10(root / "data", train=10, test=20)
    model = tiny_cifar_model()
    model.save(root / "model.keras")
    return root, model


def test_evaluate_program_runs_autoattack_and_writes_json_and_npz(tiny_run):
    from program_helpers import run_program

    root, model = tiny_run
    out, npz = root / "out" / "aa.json", root / "out" / "aa.npz"
    entry_file = root / "out" / "robustbench.json"
    names = "apgd-ce"  # one short attack of the registry
    result = run_program("evaluate", f"--model={root / 'model.keras'}",
                         f"--data_dir={root / 'data'}", "--attack=autoattack",
                         f"--aa_attacks={names}", "--aa_seed=3", "--attack_steps=2",
                         "--test_examples=10", "--batch_size=4", f"--output={out}",
                         f"--save_adversarial={npz}", f"--robustbench_json={entry_file}",
                         "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert {"natural_accuracy", "robust_accuracy", "num_examples", "attack", "seconds",
            "robust_accuracy_by_attack", "warnings"} <= set(metrics)
    assert metrics["num_examples"] == 10 and metrics["attack"]["attack"] == "autoattack"
    assert metrics["attack"]["seed"] == 3
    by_attack = metrics["robust_accuracy_by_attack"]
    assert list(by_attack) == names.split(",")
    assert list(by_attack.values())[-1] == metrics["robust_accuracy"]
    assert metrics["robust_accuracy"] <= metrics["natural_accuracy"]
    # The RobustBench entry: the same figures in percent, the seed, the images.
    entry = json.loads(entry_file.read_text())
    assert entry["clean_acc"] == f"{100 * metrics['natural_accuracy']:.2f}"
    assert entry["autoattack_acc"] == f"{100 * metrics['robust_accuracy']:.2f}"
    assert (entry["eps"], entry["threat_model"], entry["dataset"]) == ("8/255", "Linf", "cifar10")
    assert entry["seed"] == 3 and entry["num_examples"] == 10
    assert "architecture" not in entry  # a Sequential model: not a zoo architecture
    for name, value in by_attack.items():
        assert f"robust accuracy after {name}: {100 * value:.2f} %" in result.stdout
    saved = np.load(npz)
    assert saved["x_adv"].shape == (10, 32, 32, 3) and saved["robust"].dtype == bool
    assert saved["robust"].mean() == pytest.approx(metrics["robust_accuracy"])
    assert saved["clean_correct"].mean() == pytest.approx(metrics["natural_accuracy"])
    # The labels are the test subset's: the model's clean classes reproduce clean_correct.
    clean = saved["x_adv"].copy()
    robust_rows = saved["robust"] | ~saved["clean_correct"]
    predictions = np.argmax(model(clean[robust_rows]).numpy(), -1)
    np.testing.assert_array_equal(predictions == saved["labels"][robust_rows],
                                  saved["clean_correct"][robust_rows])
    # Its progress file (--output + .progress.npz) is gone; one left by another
    # evaluation is refused with one line, not mixed in.
    progress = root / "out" / "aa.json.progress.npz"
    assert not progress.exists()
    np.savez(progress, meta=np.array(json.dumps({"key": "another run"})),
             **{k: np.zeros(1) for k in ("robust", "clean_correct", "x_adv", "predictions",
                                         "rows")})
    again = run_program("evaluate", f"--model={root / 'model.keras'}",
                        f"--data_dir={root / 'data'}", "--attack=autoattack",
                        f"--aa_attacks={names}", "--test_examples=10", "--batch_size=4",
                        f"--output={out}", "--verbose=0")
    assert again.returncode == 1
    last = again.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "belongs to another evaluation" in last, last
    assert str(progress) in last


@pytest.mark.slow
def test_evaluate_program_pgd_restarts(tiny_run):
    from program_helpers import run_program

    root, _ = tiny_run
    out = root / "pgd.json"
    result = run_program("evaluate", f"--model={root / 'model.keras'}",
                         f"--data_dir={root / 'data'}", "--restarts=2", "--attack_steps=1",
                         "--test_examples=10", f"--output={out}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert metrics["attack"]["restarts"] == 2
    assert metrics["robust_accuracy_by_attack"] == {"pgd": metrics["robust_accuracy"]}


def test_evaluate_program_refuses_unknown_aa_attacks(tiny_run):
    from program_helpers import run_program

    root, _ = tiny_run
    result = run_program("evaluate", f"--model={root / 'model.keras'}",
                         f"--data_dir={root / 'data'}", "--attack=autoattack",
                         "--aa_attacks=pgd,nope", "--verbose=0")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--aa_attacks" in errors[0] and "nope" in errors[0], result.stderr
    assert "fgsm" in errors[0]  # the valid names


def test_autoattack_through_a_saved_model_equals_the_keras_figures(tmp_path):
    from gacd_tf.serving import export_saved_model, load_saved_model

    model = tiny_cifar_model(seed=1)
    served = load_saved_model(export_saved_model(model, tmp_path / "exports" / "tiny"))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (12, 32, 32, 3)).astype("float32")
    y = np.argmax(model(x).numpy(), -1)
    y[:3] = (y[:3] + 1) % 10
    aa = AutoAttack(attacks=["fgsm", "pgd"], attack_settings={"pgd": {"steps": 2}}, verbose=0)
    from_keras = aa.run(model, x, y, batch_size=5)
    from_saved = aa.run(served, x, y, batch_size=5)
    np.testing.assert_array_equal(from_saved["robust"], from_keras["robust"])
    assert from_saved["robust_accuracy_by_attack"] == from_keras["robust_accuracy_by_attack"]
    assert from_keras["robust_accuracy"] < from_keras["natural_accuracy"] == 0.75


# ---------------------------------------------------------------------------
# Training programs and the report.

def test_report_shows_the_autoattack_column_only_when_a_run_has_it():
    from gacd_tf.analysis.report import Run, render_report

    teacher = Run(path="runs/t", name="t", flags={"arch": "resnet8"},
                  metrics={"natural_accuracy": 0.5, "robust_accuracy": 0.26, "num_examples": 100,
                           "autoattack": {"robust_accuracy": 0.215, "num_examples": 40}})
    plain = Run(path="runs/p", name="p", flags={"arch": "resnet8"},
                metrics={"natural_accuracy": 0.4, "robust_accuracy": 0.2, "num_examples": 100})
    header = next(line for line in render_report([teacher, plain]).splitlines()
                  if line.startswith("| run |"))
    cells = header.split(" | ")
    assert cells.index("autoattack_robust_accuracy") == cells.index("robust_accuracy") + 1
    table = render_report([teacher, plain])
    assert "| 0.2600 | 0.2150 | 40 |" in table
    assert "autoattack" not in render_report([plain])


@pytest.mark.slow
def test_train_teacher_adds_autoattack_to_metrics(tmp_path):
    from program_helpers import run_program, write_tiny_cifar10

    data = write_tiny_cifar10(tmp_path / "data", train=20, test=20)
    result = run_program("train_teacher", f"--data_dir={data}", "--arch=resnet8", "--epochs=1",
                         "--batch_size=10", "--train_attack_steps=1", "--attack_steps=1",
                         "--val_examples=0", "--final_autoattack_examples=10",
                         f"--model_dir={tmp_path / 'run'}", "--verbose=0", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    autoattack = metrics["autoattack"]
    assert autoattack["num_examples"] == 10 and metrics["num_examples"] == 20
    assert list(autoattack["robust_accuracy_by_attack"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert autoattack["robust_accuracy"] <= autoattack["natural_accuracy"]
    assert "robust accuracy after square: " in result.stdout
