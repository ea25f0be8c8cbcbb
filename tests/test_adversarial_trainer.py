"""AdversarialTrainer: the update equals an independent re-derivation, fit runs,
TRADES works (the official start and order of passes), Madry's training-mode
attack, checkpoints are written."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gacd_tf.attacks import PGD, GaussianStartPGD, KLDivergence
from gacd_tf.errors import ConfigError
from gacd_tf.methods import AdversarialTrainer
from gacd_tf.training import TrainingCheckpoint
from numpy_refs import batchmean_kl, log_softmax


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(name="features"),
        keras.layers.Dense(3, name="logits"),
    ])


def tiny_data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, n).astype("int32")
    return x, y, np.arange(n, dtype="int32")


def dataset(n=24, batch=8):
    return tf.data.Dataset.from_tensor_slices(tiny_data(n)).batch(batch)


def test_one_step_equals_sgd_on_ce_plus_coupled_l2():
    x, y, idx = tiny_data(8)
    lr, wd = 0.5, 0.1
    reference = tiny_model(seed=1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            y, reference(x, training=True)))
    grads = tape.gradient(loss, reference.trainable_weights)
    expected = [w.numpy() - lr * (g.numpy() + wd * w.numpy())
                for w, g in zip(reference.trainable_weights, grads)]

    model = tiny_model(seed=1)
    trainer = AdversarialTrainer(model, attack=PGD(steps=0, random_start=False), weight_decay=wd)
    trainer.compile(optimizer=keras.optimizers.SGD(lr))
    logs = trainer.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], loss.numpy(), rtol=1e-5)
    for w, e in zip(model.trainable_weights, expected):
        np.testing.assert_allclose(w.numpy(), e, rtol=1e-5, atol=1e-6)


def test_madry_trains_on_adversarial_examples():
    model = tiny_model()
    attack = PGD(eps=8 / 255, steps=2, seed=0)
    trainer = AdversarialTrainer(model, attack=attack)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    x, y, _ = tiny_data(8)
    logs = trainer.train_on_batch(x, y, return_dict=True)
    clean = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x))).numpy()
    # Training loss is the CE on x_adv, above the clean CE for the same weights.
    assert logs["loss"] > clean


@pytest.mark.parametrize("trades_beta", [None, 6.0])
def test_fit_reports_finite_metrics_and_writes_checkpoints(tmp_path, trades_beta):
    model = tiny_model()
    before = [w.numpy().copy() for w in model.trainable_weights]
    trainer = AdversarialTrainer(model, attack=PGD(steps=2, seed=0), trades_beta=trades_beta)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    ckpt = TrainingCheckpoint(str(tmp_path / "ckpt"), steps_per_epoch=3,
                              last_path=str(tmp_path / "model.keras"),
                              best_path=str(tmp_path / "best.keras"))
    history = trainer.fit(dataset(), validation_data=dataset(16), epochs=2, verbose=0,
                          callbacks=[ckpt])
    logs = history.history
    expected = {"loss", "adv_accuracy", "val_loss", "val_nat_accuracy", "val_adv_accuracy"}
    if trades_beta is not None:
        expected.add("nat_accuracy")
    assert expected <= set(logs)
    assert all(np.isfinite(v).all() for v in logs.values())
    assert any(not np.array_equal(w.numpy(), b) for w, b in zip(model.trainable_weights, before))
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    x = tiny_data(4)[0]
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)
    assert (tmp_path / "best.keras").is_file() and ckpt.best_epoch in (1, 2)
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob("ckpt/.tmp-*"))
    assert [p.name for p in (tmp_path / "ckpt").glob("ckpt-*")] == ["ckpt-000000006.weights.h5"]


def test_trades_loss_is_ce_plus_beta_kl():
    x, y, _ = tiny_data(8)
    model = tiny_model(seed=2)
    logits = model.get_layer("logits")
    logits.kernel.assign(50.0 * logits.kernel)  # logits of several units, not of 0.2
    trainer = AdversarialTrainer(model, attack=PGD(steps=2), trades_beta=6.0, weight_decay=0.0)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
    # A fixed perturbation in place of the attack, recording the target it is given.
    delta = np.random.default_rng(1).choice([-0.5, 0.5], x.shape).astype("float32")
    x_adv, targets = np.clip(x + delta, 0.0, 1.0), []
    trainer.attack = lambda network, images, target: targets.append(target) or tf.constant(x_adv)
    loss = trainer.train_on_batch(x, y, return_dict=True)["loss"]

    logits_nat, logits_adv = model(x).numpy(), model(x_adv).numpy()
    log_p_nat = log_softmax(logits_nat)
    ce = -log_p_nat[np.arange(len(y)), y].mean()
    # KL(p_nat || p_adv), summed over classes, averaged over the batch (trades.py:82-84).
    kl = batchmean_kl(logits_adv, logits_nat)
    assert kl > 0.01  # the perturbation moves the prediction, so beta matters
    np.testing.assert_allclose(loss, ce + 6.0 * kl, rtol=1e-5)
    # The attack ascends KL away from the clean prediction, given as probabilities.
    np.testing.assert_allclose(targets[0], np.exp(log_p_nat), atol=1e-6)


def bn_model(seed=0):
    """Batch norm (momentum 0.5) straight on the input, so its moving mean is the images'."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.BatchNormalization(momentum=0.5, name="bn"),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(name="features"),
        keras.layers.Dense(3, name="logits"),
    ])


def test_trades_attack_starts_from_the_official_gaussian_point():
    attack = PGD(eps=4 / 255, step_size=1 / 255, steps=3, seed=5)
    trainer = AdversarialTrainer(tiny_model(), attack=attack, trades_beta=6.0)
    inner = trainer.attack
    # trades.py:31: x + 0.001 N(0, 1), not clipped; the ball, step and steps are the attack's.
    assert isinstance(inner, GaussianStartPGD) and inner.start_std == 0.001
    assert (inner.eps, inner.step_size, inner.steps, inner.seed) == (4 / 255, 1 / 255, 3, 5)
    assert isinstance(inner.objective, KLDivergence)
    x = np.zeros((64, 8, 8, 3), np.float32)
    noise = inner.start(tf.constant(x)).numpy()
    assert noise.min() < 0 and 0.0008 < noise.std() < 0.0012  # unclipped, std 0.001
    kept = AdversarialTrainer(tiny_model(), attack=attack, trades_beta=6.0, trades_start="attack")
    assert type(kept.attack) is PGD and isinstance(kept.attack.objective, KLDivergence)
    with pytest.raises(ConfigError, match="trades_start"):
        AdversarialTrainer(tiny_model(), attack=attack, trades_beta=6.0, trades_start="uniform")


def test_trades_update_runs_natural_adversarial_natural_passes_in_training_mode():
    # trades.py:79-82: three training-mode passes, so batch norm's moving mean
    # moves three times: (1 - 0.5^3) mean(x) from 0 (two passes: 0.75 mean(x)).
    x, y, _ = tiny_data(8)
    model = bn_model()
    trainer = AdversarialTrainer(model, attack=PGD(steps=0, random_start=False), trades_beta=6.0)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    trainer.train_on_batch(x, y)
    moving_mean = model.get_layer("bn").moving_mean.numpy()
    np.testing.assert_allclose(moving_mean, 0.875 * x.mean((0, 1, 2)), rtol=1e-5)


@pytest.mark.parametrize("training_mode, passes", [(False, 1), (True, 3)])
def test_madry_attack_in_training_mode_moves_running_statistics_at_every_step(training_mode,
                                                                             passes):
    # Madry's TF attack runs the training graph (batch statistics, running
    # averages updated in place): 2 attack steps + the update = 3 passes. The
    # attack barely moves x (eps 1e-7), so each pass sees mean(x).
    x, y, _ = tiny_data(8)
    model = bn_model()
    attack = PGD(eps=1e-7, step_size=1e-7, steps=2, random_start=False)
    trainer = AdversarialTrainer(model, attack=attack, attack_training_mode=training_mode)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    trainer.train_on_batch(x, y)
    np.testing.assert_allclose(model.get_layer("bn").moving_mean.numpy(),
                               (1 - 0.5**passes) * x.mean((0, 1, 2)), rtol=1e-5)
