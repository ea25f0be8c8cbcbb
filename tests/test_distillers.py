"""KD, ARD and GACD distillers on tiny models: fit runs, the teacher is frozen,
the memory bank and Z follow SPEC, the live positive carries gradient."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gacd_tf.attacks import PGD
from gacd_tf.errors import ConfigError, ModelError
from gacd_tf.methods import ARDDistiller, GACDDistiller, KDDistiller
from tiny_models import tiny as tiny_model

M = 24


def tiny(seed, classes=3, width=4, name=None):
    return tiny_model(seed, name, classes=classes, width=width, batch_norm=False)


def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (M, 8, 8, 3)).astype("float32")
    y = (np.arange(M) % 3).astype("int32")
    return x, y, np.arange(M, dtype="int32")


def dataset(batch=8):
    return tf.data.Dataset.from_tensor_slices(data()).batch(batch)


def one_step(trainer, x, y, idx):
    """One fit step on exactly this (image, label, index) batch."""
    trainer.fit(tf.data.Dataset.from_tensors((x, y, idx)), epochs=1, verbose=0)


def make(method, student, teacher, **kwargs):
    if method == "kd":
        return KDDistiller(student, teacher, **kwargs)
    if method == "ard":
        return ARDDistiller(student, teacher, attack=PGD(steps=2, seed=0), **kwargs)
    return GACDDistiller(student, teacher, data()[1], embed_dim=8, nce_k=10, seed=0, **kwargs)


@pytest.mark.parametrize("method, kwargs", [
    ("kd", {}),
    ("ard", {}),
    ("ard", {"ard_alpha": 0.5, "kl_reduction": "batchmean", "reweight": True}),
    ("gacd", {}),
    ("gacd", {"nce_form": "one_sided", "teacher_input": "natural", "reweight": False}),
])
def test_fit_runs_finite_and_keeps_the_teacher_frozen(method, kwargs):
    teacher, student = tiny(1, width=6, name="teacher"), tiny(2, name="student")
    teacher_before = [w.numpy().copy() for w in teacher.weights]
    student_before = [w.numpy().copy() for w in student.weights]
    trainer = make(method, student, teacher, **kwargs)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    history = trainer.fit(dataset(), validation_data=dataset(), epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"])) and "val_adv_accuracy" in history
    for w, before in zip(teacher.weights, teacher_before):
        np.testing.assert_array_equal(w.numpy(), before)
    assert any(not np.array_equal(w.numpy(), b) for w, b in zip(student.weights, student_before))
    teacher_ids = {id(w) for w in teacher.weights}
    assert not any(id(v) in teacher_ids for v in trainer.trainable_weights)


def test_gacd_bank_rows_follow_the_momentum_formula_and_z_is_set_once():
    teacher, student = tiny(1, width=6, name="teacher"), tiny(2, name="student")
    # No perturbation and no weight decay: x+ = x, so e_S can be recomputed here.
    trainer = make("gacd", student, teacher, attack=PGD(steps=0, random_start=False,
                                                        objective="ot"), weight_decay=0.0)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y, idx = data()
    batch = slice(4, 12)
    bank_before = trainer.student_bank.bank.numpy().copy()
    features = keras.Model(student.input, student.get_layer("features").output)(x[batch])
    e_s = tf.math.l2_normalize(trainer.student_embed(features), axis=-1).numpy()
    one_step(trainer, x[batch], y[batch], idx[batch])
    bank = trainer.student_bank.bank.numpy()
    expected = 0.5 * bank_before[batch] + 0.5 * e_s
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(bank[batch], expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(bank[batch], axis=1), 1.0, atol=1e-5)
    others = np.r_[0:4, 12:M]
    np.testing.assert_array_equal(bank[others], bank_before[others])

    log_z = float(trainer.student_bank.log_z.numpy())
    assert float(trainer.student_bank.z_is_set.numpy()) == 1.0 and np.isfinite(log_z)
    one_step(trainer, x[12:20], y[12:20], idx[12:20])
    assert float(trainer.student_bank.log_z.numpy()) == log_z


def test_gacd_live_positive_gives_the_student_gradient():
    teacher, student = tiny(1, width=6, name="teacher"), tiny(2, name="student")
    # One-sided: the student's only path is the positive (two-sided, its anchor
    # against the teacher bank would move it whatever the positive).
    trainer = make("gacd", student, teacher, w_ce=0.0, weight_decay=0.0, nce_form="one_sided")
    trainer.compile(optimizer=keras.optimizers.SGD(0.5))
    conv_before = student.layers[1].kernel.numpy().copy()
    x, y, idx = data()
    one_step(trainer, x[:8], y[:8], idx[:8])
    # Only the NCE term trains the student here; its gradient reaches the backbone
    # through the live e_S(x+) of the positive pair, not a (constant) bank row.
    assert np.abs(student.layers[1].kernel.numpy() - conv_before).max() > 1e-6


def test_gacd_needs_sample_indices():
    teacher, student = tiny(1, name="teacher"), tiny(2, name="student")
    trainer = make("gacd", student, teacher)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y, _ = data()
    with pytest.raises(ConfigError, match=r"GACD needs batches of \(image, label, index\)"):
        trainer.train_on_batch(x[:8], y[:8])


@pytest.mark.parametrize("method", ["kd", "ard", "gacd"])
def test_a_teacher_with_other_classes_is_refused(method):
    with pytest.raises(ModelError, match="teacher .* has 5 classes but student .* has 3"):
        make(method, tiny(2, name="student"), tiny(1, classes=5, name="teacher"))


def test_gacd_state_checkpoint_holds_the_bank_and_z(tmp_path):
    from gacd_tf.training import TrainingCheckpoint

    def build():
        trainer = make("gacd", tiny(2, name="student"), tiny(1, width=6, name="teacher"))
        trainer.compile(optimizer=keras.optimizers.SGD(0.1))
        return trainer

    trainer = build()
    ckpt = TrainingCheckpoint(str(tmp_path / "ckpt"), steps_per_epoch=3,
                              last_path=str(tmp_path / "model.keras"))
    trainer.fit(dataset(), epochs=1, verbose=0, callbacks=[ckpt])
    (state_file,) = (tmp_path / "ckpt").glob("ckpt-*.weights.h5")
    restored = build()
    assert not np.array_equal(restored.student_bank.bank.numpy(),
                              trainer.student_bank.bank.numpy())
    restored.load_weights(state_file)
    np.testing.assert_array_equal(restored.student_bank.bank.numpy(),
                                  trainer.student_bank.bank.numpy())
    assert float(restored.student_bank.log_z.numpy()) == float(trainer.student_bank.log_z.numpy())
    assert float(restored.student_bank.z_is_set.numpy()) == 1.0
    np.testing.assert_array_equal(restored.student_embed.kernel.numpy(),
                                  trainer.student_embed.kernel.numpy())
