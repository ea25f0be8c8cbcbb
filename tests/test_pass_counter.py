"""PassCounter counts the images an attack forwards and back-propagates, and
AutoAttack.run reports them per attack (``passes_by_attack``), across a resume.

The expected counts are derived from the attacks' code (apgd.py, square.py)
for points no attack can break (a tiny eps), so every loop runs to its end."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from gacd_tf.attacks import APGD, AutoAttack, Square
from gacd_tf.attacks import autoattack_progress
from gacd_tf.attacks.autoattack import json_result
from gacd_tf.attacks.pass_counter import PassCounter
from gacd_tf.training.distribute import make_strategy

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

@pytest.mark.parametrize("n_restarts", [1, 2])
def test_apgd_ce_passes_are_the_algorithms(n_restarts):
    """APGD.perturb on B points: one clean forward pass; then per run one
    forward-backward pass at the random start (``_loss_and_gradient`` before
    the loop) and one per iteration (``body``), n_iter of them when no point
    breaks: forward ``B (1 + R (N + 1))``, backward ``B R (N + 1)``."""
    model = tiny_cnn(seed=2)
    x = images(6, seed=3)
    y = own_labels(model, x)
    batch, n_iter = len(y), 5
    counter = PassCounter(model)
    attack = APGD(eps=TINY_EPS, n_iter=n_iter, n_restarts=n_restarts, seed=0)
    _, robust = attack.perturb(counter, x, y)
    assert robust.numpy().all()  # no point broke: no loop stopped early
    runs = n_restarts * (n_iter + 1)
    assert counter.counts() == {"forward": batch * (1 + runs), "backward": batch * runs}
    counter.reset()  # in tf.function (a tf.while_loop per run): the same
    tf.function(attack.perturb)(counter, tf.constant(x), tf.constant(y))
    assert counter.counts() == {"forward": batch * (1 + runs), "backward": batch * runs}


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


class Interrupted(Exception):
    pass


def interrupt_at(aa, attack_name, call):
    """Makes ``aa`` raise before the ``call``-th batch of ``attack_name`` (a kill stand-in)."""
    build, calls = aa._attack_fn, []

    def attack_fn(name, *args):
        fn = build(name, *args)

        def counted(*args):
            if name == attack_name:
                calls.append(1)
                if len(calls) == call:
                    raise Interrupted()
            return fn(*args)
        return counted
    aa._attack_fn = attack_fn


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
