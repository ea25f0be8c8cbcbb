"""Every trainer under MirroredStrategy on 2 logical CPUs takes the same step as
one device on the same global batch; the GACD bank stays identical on every
replica and equals the single-device bank."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gacd_tf.attacks import PGD
from gacd_tf.methods.gacd import OptimalTransport
from gacd_tf.training.distribute import make_strategy
from gacd_tf.methods import AdversarialTrainer, ARDDistiller, GACDDistiller, KDDistiller
from tiny_models import tiny

B, M = 8, 16


def batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (B, 8, 8, 3)).astype("float32")
    y = (np.arange(B) % 3).astype("int32")
    return x, y, np.arange(4, 4 + B, dtype="int32")


def build(method):
    student, teacher = tiny(1, "student"), tiny(2, "teacher", width=6)
    if method == "adversarial":
        return AdversarialTrainer(student, attack=PGD(steps=2, seed=3))
    if method == "trades":
        return AdversarialTrainer(student, attack=PGD(steps=2, seed=3), trades_beta=6.0)
    if method == "kd":
        return KDDistiller(student, teacher)
    if method == "ard":
        return ARDDistiller(student, teacher, attack=PGD(steps=2, seed=3), ard_alpha=0.5,
                            reweight=True)
    labels = (np.arange(M) % 3).astype("int32")
    attack = PGD(eps=8 / 255, step_size=8 / 255, steps=1, seed=3,
                 objective=OptimalTransport("features"))
    form = "one_sided" if method == "gacd_one_sided" else "two_sided"
    return GACDDistiller(student, teacher, labels, embed_dim=8, nce_k=5, attack=attack,
                         seed=0, nce_form=form)


def one_step(strategy, method):
    with strategy.scope():
        trainer = build(method)
        trainer.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9))
    data = tf.data.Dataset.from_tensors(batch())
    trainer.fit(data, epochs=2, verbose=0)  # two steps: momentum and bank reuse count
    return trainer


def replica_values(variable):
    value = variable.value
    return [v.numpy() for v in getattr(value, "values", [value])]


@pytest.mark.parametrize("method", ["adversarial", "trades", "kd", "ard", "gacd",
                                    "gacd_one_sided"])
def test_mirrored_step_equals_single_device_step(method):
    single = one_step(tf.distribute.get_strategy(), method)
    mirrored = one_step(make_strategy("mirrored"), method)
    assert mirrored.distribute_strategy.num_replicas_in_sync == 2
    worst = 0.0
    for a, b in zip(single.trainable_weights + single.non_trainable_weights,
                    mirrored.trainable_weights + mirrored.non_trainable_weights):
        copies = replica_values(b)
        for copy in copies[1:]:
            np.testing.assert_array_equal(copy, copies[0], err_msg=b.path)
        worst = max(worst, float(np.abs(a.numpy() - copies[0]).max()))
        np.testing.assert_allclose(copies[0], a.numpy(), rtol=1e-4, atol=1e-5, err_msg=b.path)
    print(f"{method}: max |single - mirrored| over all variables = {worst:.2e}")
    if method.startswith("gacd"):
        banks = replica_values(mirrored.student_bank.bank)
        np.testing.assert_array_equal(banks[0], banks[1])
        np.testing.assert_allclose(banks[0], single.student_bank.bank.numpy(), atol=1e-5)
        assert float(mirrored.student_bank.log_z.numpy()) == pytest.approx(
            float(single.student_bank.log_z.numpy()), abs=1e-5)
