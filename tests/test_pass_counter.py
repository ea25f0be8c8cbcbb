"""PassCounter counts the images an attack forwards and back-propagates, and
AutoAttack.run reports them per attack (``passes_by_attack``), across a resume.

The expected counts are derived from the attacks' code (apgd.py, fab.py,
square.py): for points no attack can break (a tiny eps), every loop runs to
its end; for points that break, each is charged only for the runs and
iterations (queries) it was still robust in (the attacks gather the rows
still robust, rows.py), so a batch costs the sum of its points."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from gacd_tf.attacks import APGD, AutoAttack, APGDTargeted, FABTargeted, Square
from gacd_tf.attacks import autoattack_progress
from gacd_tf.attacks.autoattack import json_result
from gacd_tf.attacks.pass_counter import PassCounter
from gacd_tf.training.distribute import make_strategy

from interrupt_helpers import Interrupted, interrupt_at

TINY_EPS = 1e-6  # no point moves across a boundary: the loops never stop early


def tiny_cnn(seed=0, num_classes=4):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3, activation="tanh"),
                             keras.layers.Flatten(), keras.layers.Dense(num_classes)])


def images(n, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 6, 6, 3)).astype("float32")


def own_labels(model, x):
    return np.argmax(model(x, training=False).numpy(), -1).astype("int64")


# ---------------------------------------------------------------------------
# The counter itself.

def test_eager_calls_count_rows_and_input_gradients_only():
    model = tiny_cnn()
    counter = PassCounter(model)
    x = tf.constant(images(5))
    np.testing.assert_array_equal(counter(x).numpy(), model(x, training=False).numpy())
    assert counter.counts() == {"forward": 5, "backward": 0}
    with tf.GradientTape() as tape:  # a forward pass with an input gradient: one of each
        tape.watch(x)
        loss = tf.reduce_sum(counter(x[:3]))
    assert tape.gradient(loss, x) is not None
    assert counter.counts() == {"forward": 8, "backward": 3}
    with tf.GradientTape() as tape:  # weights only, input unwatched: no backward pass counted
        loss = tf.reduce_sum(counter(x))
    tape.gradient(loss, model.trainable_variables)
    assert counter.counts() == {"forward": 13, "backward": 3}
    with tf.GradientTape(persistent=True) as tape:  # two input gradients of one forward pass
        tape.watch(x)
        logits = counter(x[:2])
        first, second = tf.reduce_sum(logits[:, 0]), tf.reduce_sum(logits[:, 1])
    tape.gradient(first, x), tape.gradient(second, x)
    assert counter.counts() == {"forward": 15, "backward": 7}
    counter.reset()
    assert counter.counts() == {"forward": 0, "backward": 0}


def test_tuple_and_dict_outputs_pass_through_unchanged():
    model = tiny_cnn()

    def pair(x, training=False):
        return tf.reduce_mean(x, [1, 2]), model(x, training=training)

    def named(x, training=False):
        return {"logits": model(x, training=training)}

    x = images(3)
    features, logits = PassCounter(pair)(x)
    np.testing.assert_allclose(features.numpy(), x.mean((1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(logits.numpy(), model(x).numpy())
    counter = PassCounter(named)
    assert sorted(counter(x)) == ["logits"] and counter.counts()["forward"] == 3


def test_counts_inside_tf_function_while_loops_and_conds():
    model = tiny_cnn()
    counter = PassCounter(model)

    @tf.function
    def loop(x, steps):
        def body(i, x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(counter(x))
            x = x + 0.0 * tape.gradient(loss, x)
            # Every other iteration one more forward pass, of the first row only.
            tf.cond(i % 2 == 0, lambda: counter(x[:1])[:, 0], lambda: tf.zeros([1]))
            return i + 1, x

        return tf.while_loop(lambda i, x: i < steps, body, (tf.constant(0), x))

    x = tf.constant(images(4))
    loop(x, tf.constant(5))  # iterations 0..4: 5 x 4 forward and backward, 3 x 1 forward
    assert counter.counts() == {"forward": 5 * 4 + 3, "backward": 5 * 4}
    loop(x[:2], tf.constant(2))  # the same trace, another batch size and trip count
    assert counter.counts() == {"forward": 23 + 2 * 2 + 1, "backward": 20 + 2 * 2}


def test_replicas_add_their_own_rows_under_a_mirrored_strategy():
    strategy = make_strategy("mirrored", cpu_devices=2)
    assert strategy.num_replicas_in_sync == 2
    model = tiny_cnn()
    counter = PassCounter(model, strategy)

    @tf.function
    def step(x):
        def replica(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(counter(x))
            return tape.gradient(loss, x)

        return strategy.run(replica, (x,))

    dataset = tf.data.Dataset.from_tensor_slices(images(10)).batch(10)  # 5 rows per replica
    for batch in strategy.experimental_distribute_dataset(dataset):
        step(batch)
    assert counter.counts() == {"forward": 10, "backward": 10}  # summed over the replicas
    per_replica = [int(v.numpy()) for v in strategy.experimental_local_results(counter.forward)]
    assert per_replica == [5, 5]


# ---------------------------------------------------------------------------
# The attacks' counts, derived from their code.

@pytest.mark.parametrize("n_restarts, eot_iter", [(1, 1), (2, 1), (1, 3)])
def test_apgd_ce_passes_are_the_algorithms(n_restarts, eot_iter):
    """APGD.perturb on B points: one clean forward pass; then per run one
    gradient at the random start (``_loss_and_gradient`` before the loop) and
    one per iteration (``body``), n_iter of them when no point breaks, each
    of E (eot_iter) forward-backward passes: forward ``B (1 + R (N + 1) E)``,
    backward ``B R (N + 1) E``."""
    model = tiny_cnn(seed=2)
    x = images(6, seed=3)
    y = own_labels(model, x)
    batch, n_iter = len(y), 5
    counter = PassCounter(model)
    attack = APGD(eps=TINY_EPS, n_iter=n_iter, n_restarts=n_restarts, seed=0, eot_iter=eot_iter)
    _, robust = attack.perturb(counter, x, y)
    assert robust.numpy().all()  # no point broke: no loop stopped early
    runs = n_restarts * (n_iter + 1) * eot_iter
    assert counter.counts() == {"forward": batch * (1 + runs), "backward": batch * runs}
    counter.reset()  # in tf.function (a tf.while_loop per run): the same
    tf.function(attack.perturb)(counter, tf.constant(x), tf.constant(y))
    assert counter.counts() == {"forward": batch * (1 + runs), "backward": batch * runs}


SPREAD_EPS = 0.05


def spread_model(x, training=False):
    """A 4-class model whose breaks are known: a dark image (mean < 0.3) is class 1
    whatever the perturbation within ``SPREAD_EPS`` (never broken); a flat bright
    image is class 0 and becomes class 2 as soon as its pixels spread by
    ``SPREAD_EPS / 4``: at APGD's random start and at Square's stripes (each
    moves every pixel, one by the whole eps), so it breaks at its first iterate."""
    flat = tf.reshape(x, [tf.shape(x)[0], -1])
    mean = tf.reduce_mean(flat, 1)
    spread = tf.reduce_max(flat, 1) - tf.reduce_min(flat, 1)
    zero = tf.zeros_like(mean)
    return tf.stack([1.0 - 4.0 * spread / SPREAD_EPS, 20.0 * (0.3 - mean), zero, zero - 5.0], 1)


def flat_images(bright, dark):
    """``bright`` flat images of 0.7 (class 0) then ``dark`` of 0.1 (class 1), 6x6x3."""
    x = np.concatenate([np.full((bright, 6, 6, 3), 0.7), np.full((dark, 6, 6, 3), 0.1)])
    return x.astype("float32"), np.array([0] * bright + [1] * dark, "int64")


@pytest.mark.parametrize("targeted", [False, True])
def test_apgd_charges_a_broken_point_only_until_it_breaks(targeted):
    """B points, Pb broken at the random start of the first run, Pd never: one
    clean forward pass for all; a broken point leaves at its start (one
    forward-backward pass), a robust one runs every run to its end: forward
    ``B + Pb + Pd R (N + 1)``, backward ``Pb + Pd R (N + 1)``, R runs (restarts,
    times targets for APGD-T). (Before the attacks gathered the robust rows, the
    broken points ran every iteration of the first run with the others.)"""
    bright, dark, n_iter, restarts, targets = 3, 2, 4, 2, 3
    x, y = flat_images(bright, dark)
    counter = PassCounter(spread_model)
    if targeted:
        attack = APGDTargeted(eps=SPREAD_EPS, n_iter=n_iter, n_restarts=restarts,
                              n_target_classes=targets, seed=0)
        runs = restarts * targets
    else:
        attack = APGD(eps=SPREAD_EPS, n_iter=n_iter, n_restarts=restarts, seed=0)
        runs = restarts
    _, robust = attack.perturb(counter, x, y)
    np.testing.assert_array_equal(robust.numpy(), [False] * bright + [True] * dark)
    iterates = bright + dark * runs * (n_iter + 1)
    assert counter.counts() == {"forward": bright + dark + iterates, "backward": iterates}


def test_square_charges_a_broken_point_only_until_it_breaks():
    """Pb points broken at the stripes, Pd never, R restarts of Q queries: forward
    ``B`` (clean) ``+ Pb`` (their stripes) ``+ Pd R (Q + 1)``."""
    bright, dark, queries, restarts = 3, 2, 5, 2
    x, y = flat_images(bright, dark)
    counter = PassCounter(spread_model)
    _, robust = Square(eps=SPREAD_EPS, n_queries=queries, n_restarts=restarts,
                       seed=0).perturb(counter, x, y)
    np.testing.assert_array_equal(robust.numpy(), [False] * bright + [True] * dark)
    assert counter.counts() == {
        "forward": bright + dark + bright + dark * restarts * (queries + 1), "backward": 0}


def test_each_square_query_goes_to_the_points_still_robust():
    """Without the schedule's rescaling the first q queries of a run of Q > q are
    a run of q queries, so query q (0-based) costs exactly the points still
    robust after q queries: ``forward(q + 1) - forward(q) = robust(q)``."""
    model = tiny_cnn(seed=2)
    x = images(12, seed=3)
    y = own_labels(model, x)
    forward, robust = {}, {}
    for queries in range(1, 10):
        counter = PassCounter(model)
        _, still = Square(eps=0.25, n_queries=queries, seed=0,
                          rescale_schedule=False).perturb(counter, x, y)
        forward[queries], robust[queries] = counter.counts()["forward"], int(np.sum(still))
    assert len(set(robust.values())) > 2, "the test needs points broken at different queries"
    assert robust[9] > 0, "the test needs points left robust"
    for q in range(1, 9):
        assert forward[q + 1] - forward[q] == robust[q], q


def test_fab_t_runs_each_target_on_the_points_still_robust():
    """FAB-T on B points: one clean forward pass; each target run gathers the points
    still robust, each making N forward-backward passes (the boundary), N forward
    passes (is the iterate misclassified?) and one more (the run's point):
    forward ``B + (2N + 1) sum_t robust_t``, backward ``N sum_t robust_t``, where
    ``robust_t`` counts the points robust before target t (the runs with fewer
    targets are the first runs of this one)."""
    model = tiny_cnn(seed=2)
    x = images(12, seed=3)
    y = own_labels(model, x)
    n_iter, targets, eps = 3, 3, 0.05
    before = [len(y)]  # robust before the first target: every point (clean-correct)
    for t in range(1, targets):
        _, still = FABTargeted(eps=eps, n_iter=n_iter, n_target_classes=t,
                               seed=0).perturb(model, x, y)
        before.append(int(np.sum(still)))
    assert len(set(before)) == targets, "the test needs points broken at each target"
    counter = PassCounter(model)
    FABTargeted(eps=eps, n_iter=n_iter, n_target_classes=targets, seed=0).perturb(counter, x, y)
    assert counter.counts() == {"forward": len(y) + (2 * n_iter + 1) * sum(before),
                                "backward": n_iter * sum(before)}


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square"])
def test_a_batch_costs_the_sum_of_its_points_attacked_alone(name):
    """Each point is charged for its own runs and iterations only, so the counts
    of a batch whose points break at different times are the sum of the counts
    of its points attacked one by one (with their indices, the same draws)."""
    model = tiny_cnn(seed=2)
    x = images(10, seed=3)
    y = own_labels(model, x)
    # The budgets make some points break in the middle of a run, not only at its
    # start (checked: scattering a break to the wrong row fails APGD-DLR, APGD-T,
    # FAB-T and Square here).
    settings = {"apgd-ce": (APGD, {"n_iter": 6, "n_restarts": 2, "eps": 0.03}),
                "apgd-dlr": (APGD, {"n_iter": 6, "n_restarts": 2, "eps": 0.02, "loss": "dlr"}),
                "apgd-t": (APGDTargeted, {"n_iter": 6, "n_target_classes": 3, "eps": 0.02}),
                "fab-t": (FABTargeted, {"n_iter": 3, "n_target_classes": 3, "eps": 0.05}),
                "square": (Square, {"n_queries": 12, "eps": 0.25})}
    cls, kwargs = settings[name]
    counter = PassCounter(model)
    x_adv, robust = cls(seed=0, **kwargs).perturb(counter, x, y)
    assert 0 < int(np.sum(robust)) < len(y), "the test needs points broken and points left"
    alone = PassCounter(model)
    for i in range(len(y)):
        # A point alone needs no bookkeeping of which rows remain: its flag and
        # point check the batch's gathering and scattering row by row.
        x_i, robust_i = cls(seed=0, **kwargs).perturb(alone, x[i:i + 1], y[i:i + 1],
                                                       indices=[i])
        assert bool(robust_i.numpy()[0]) == bool(robust.numpy()[i]), i
        np.testing.assert_allclose(x_i.numpy()[0], x_adv.numpy()[i], atol=1e-6, err_msg=str(i))
    assert counter.counts() == alone.counts()


def test_square_makes_forward_passes_only():
    """Square.perturb on B points: one clean forward pass, one at the stripes'
    start and one per query: ``B (n_queries + 2)`` forward, 0 backward."""
    model = tiny_cnn(seed=2)
    x = images(6, seed=3)
    y = own_labels(model, x)
    counter = PassCounter(model)
    _, robust = Square(eps=TINY_EPS, n_queries=7, seed=0).perturb(counter, x, y)
    assert robust.numpy().all()
    assert counter.counts() == {"forward": 6 * (7 + 2), "backward": 0}


# ---------------------------------------------------------------------------
# AutoAttack.run.

SETTINGS = {"apgd-ce": {"n_iter": 3}, "square": {"n_queries": 5}}


def ensemble(eps=TINY_EPS):
    return AutoAttack(attacks=["apgd-ce", "square"], attack_settings=SETTINGS, eps=eps,
                      verbose=0, seed=3)


def test_run_records_each_attacks_passes():
    """P clean-correct points, none broken: each attack's passes above plus
    AutoAttack's reclassification of the returned points (P forward). The
    clean pass and the sanity checks (checks=True) are no attack's."""
    model = tiny_cnn(seed=2)
    x = images(9, seed=3)
    y = own_labels(model, x)
    y[:2] = (y[:2] + 1) % 4  # two points misclassified: never attacked
    points = 7
    result = ensemble().run(model, x, y, batch_size=4)  # batches of 4 and 3
    assert result["robust_accuracy"] == pytest.approx(points / 9)
    n_iter, queries = SETTINGS["apgd-ce"]["n_iter"], SETTINGS["square"]["n_queries"]
    assert result["passes_by_attack"] == {
        "apgd-ce": {"forward": points * (n_iter + 3), "backward": points * (n_iter + 1)},
        "square": {"forward": points * (queries + 3), "backward": 0}}
    saved = json.loads(json.dumps(json_result(result)))
    assert saved["passes_by_attack"] == result["passes_by_attack"]
    again = ensemble().run(model, x, y, batch_size=9)  # any batch size: the same counts
    assert again["passes_by_attack"] == result["passes_by_attack"]


def test_run_counts_do_not_depend_on_the_batch_size_when_points_break():
    """Each point is charged for the runs and iterations it was still robust in,
    whatever the other points of its batch do: the same counts for any batch size."""
    model = tiny_cnn(seed=5)
    x = images(12, seed=6)
    y = own_labels(model, x)
    settings = {"apgd-ce": {"n_iter": 4}, "apgd-t": {"n_iter": 4, "n_target_classes": 3},
                "fab-t": {"n_iter": 3, "n_target_classes": 3}, "square": {"n_queries": 20}}

    def run(batch_size):
        return AutoAttack(attack_settings=settings, eps=8 / 255, verbose=0, seed=3,
                          checks=False).run(model, x, y, batch_size=batch_size)

    want = run(12)
    accuracy = list(want["robust_accuracy_by_attack"].values())
    assert accuracy[0] < want["natural_accuracy"] and accuracy[-1] > 0, \
        "the test needs points broken and points left"
    for batch_size in (1, 5):
        assert run(batch_size)["passes_by_attack"] == want["passes_by_attack"], batch_size


@pytest.mark.parametrize("where", [("apgd-ce", 2), ("square", 1)])
def test_a_resumed_run_reports_the_uninterrupted_runs_passes(where, tmp_path):
    model = tiny_cnn(seed=5)
    x = images(12, seed=6)
    y = own_labels(model, x)
    want = ensemble(eps=4 / 255).run(model, x, y, batch_size=3)
    broken = [want["robust_accuracy_by_attack"][a] < 1 for a in SETTINGS]
    assert broken[0], "the test needs APGD-CE to break points (its loops stop early)"
    progress = str(tmp_path / "aa.npz")
    killed = ensemble(eps=4 / 255)
    interrupt_at(killed, *where)
    with pytest.raises(Interrupted):
        killed.run(model, x, y, batch_size=3, progress_file=progress, progress_every=0)
    got = ensemble(eps=4 / 255).run(model, x, y, batch_size=3, progress_file=progress)
    assert got["robust_accuracy_by_attack"] == want["robust_accuracy_by_attack"]
    assert got["passes_by_attack"] == want["passes_by_attack"]
    assert all(p["forward"] > 0 for p in want["passes_by_attack"].values())


def test_a_progress_file_saved_before_the_counts_resumes_with_them_unknown(tmp_path):
    model = tiny_cnn(seed=5)
    x = images(6, seed=6)
    y = own_labels(model, x)
    want = ensemble().run(model, x, y, batch_size=3)
    progress = str(tmp_path / "aa.npz")
    killed = ensemble()
    interrupt_at(killed, "square", 2)  # after APGD-CE and Square's first batch
    with pytest.raises(Interrupted):
        killed.run(model, x, y, batch_size=3, progress_file=progress, progress_every=0)
    # The file as the code before the counts wrote it: no "passes_by_attack".
    with np.load(progress) as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        meta = json.loads(str(data["meta"]))
    assert meta.pop("passes_by_attack")["square"] == {"forward": 3 * 8, "backward": 0}
    autoattack_progress.save(progress, meta.pop("key"), {**meta, **arrays})
    got = ensemble().run(model, x, y, batch_size=3, progress_file=progress)
    assert got["robust_accuracy_by_attack"] == want["robust_accuracy_by_attack"]
    assert got["passes_by_attack"] == {"apgd-ce": None, "square": None}
