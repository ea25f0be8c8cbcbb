"""IGDM (gacd_tf/methods/igdm.py): its loss and ramp against NumPy re-derivations of the
official igdm.py, one training step against the same step taken by hand, the inner
attack's settings (AdaAD's by default, the official call's through flags) and its
iterates against a NumPy re-derivation, the inputs it needs, and gacd-distill
--method=igdm end to end."""

import json

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from numpy_refs import batchmean_kl, log_softmax
from program_helpers import run_program, write_tiny_cifar10

from gacd_tf.errors import ConfigError
from gacd_tf.methods import METHODS, MethodContext, build
from gacd_tf.methods.adaad import AdaADAttack
from gacd_tf.methods.igdm import IGDMDistiller, igdm_loss, igdm_ramp
from tiny_models import tiny


def official_igdm(s_plus, s_minus, t_plus, t_minus, alpha, epoch, epochs):
    """igdm.py: kl_loss + igdm_alpha * (epoch / 200) * IGDM_loss, with 200 -> epochs."""
    return (batchmean_kl(s_plus, t_plus)
            + alpha * (epoch / epochs) * batchmean_kl(s_plus - s_minus, t_plus - t_minus))


def test_loss_equals_the_official_formula():
    rng = np.random.default_rng(0)
    logits = [rng.normal(0, 3, (6, 10)) for _ in range(4)]
    for alpha, epoch in ((1.0, 1), (1.0, 7), (0.3, 10)):
        got = igdm_loss(*[tf.constant(z, tf.float32) for z in logits],
                        alpha * igdm_ramp(tf.constant((epoch - 1) * 5 + 2), 5, 10))
        np.testing.assert_allclose(float(got), official_igdm(*logits, alpha, epoch, 10),
                                   rtol=1e-5)
    # The difference term is what separates it from AdaAD's loss at alpha 1.
    assert abs(official_igdm(*logits, 1.0, 10, 10) - batchmean_kl(logits[0], logits[2])) > 1e-2


def test_ramp_is_linear_in_the_epoch_and_stops_at_one():
    steps = tf.constant([0, 4, 5, 9, 10, 49, 50, 500])
    got = igdm_ramp(steps, steps_per_epoch=5, epochs=10).numpy()
    np.testing.assert_allclose(got, [0.1, 0.1, 0.2, 0.2, 0.3, 1.0, 1.0, 1.0], rtol=1e-6)


def networks():
    return tiny(1, "student", batch_norm=False), tiny(2, "teacher", width=6, batch_norm=False)


def test_one_step_equals_the_step_taken_by_hand():
    student, teacher = networks()
    # Near black, so the mirror point x - delta leaves [0, 1]: the official code does
    # not clip it, and a clipped one would give another loss below.
    x = np.random.default_rng(1).uniform(0, 0.02, (4, 8, 8, 3)).astype("float32")
    y = np.arange(4) % 3
    trainer = IGDMDistiller(student, teacher, epochs=4, steps_per_epoch=3, igdm_alpha=0.5,
                            attack=AdaADAttack(steps=2, seed=3), weight_decay=0.0)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    trainer.optimizer.iterations.assign(4)  # epoch 2 of 4: ramp 0.5
    before = [w.numpy() for w in student.trainable_weights]
    # The same attack (same seed) on the same pair gives the same x+.
    x_plus = AdaADAttack(steps=2, seed=3)(trainer.student_and_teacher, tf.constant(x), None)
    x_minus = tf.constant(x) - (x_plus - x)
    assert float(tf.reduce_min(x_minus)) < 0
    with tf.GradientTape() as tape:
        loss = igdm_loss(student(x_plus, training=True), student(x_minus, training=True),
                         teacher(x_plus), teacher(x_minus), 0.5 * 0.5)
    grads = tape.gradient(loss, student.trainable_weights)
    logs = trainer.train_on_batch(x, y, return_dict=True)
    assert logs["igdm_ramp"] == pytest.approx(0.5)
    np.testing.assert_allclose(logs["loss"], float(loss), rtol=1e-5)
    for w, w0, g in zip(student.trainable_weights, before, grads):
        np.testing.assert_allclose(w.numpy(), w0 - 0.1 * g.numpy(), rtol=1e-5, atol=1e-6)


def test_inner_attack_is_adaad_s_and_the_official_call_is_a_setting():
    student, teacher = networks()
    context = MethodContext(epochs=2, steps_per_epoch=1, seed=5, train_attack_steps=10)
    trainer, record = METHODS.get("igdm").from_settings(student, teacher, {}, context)
    assert isinstance(trainer.attack, AdaADAttack)
    assert record["attack"]["eps"] == 8 / 255 and record["attack"]["step_size"] == 2 / 255
    assert record["igdm_alpha"] == 1.0 and record["igdm_eps"] is None
    official = MethodContext(epochs=2, steps_per_epoch=1, train_step_size=8 / 255)
    trainer, record = METHODS.get("igdm").from_settings(
        student, teacher, {"igdm_eps": 2 / 255}, official)
    assert record["attack"]["eps"] == 2 / 255 and record["attack"]["step_size"] == 8 / 255


def test_build_names_the_schedule_igdm_needs():
    student, teacher = networks()
    with pytest.raises(ConfigError, match=r"method 'igdm' needs epochs and steps_per_epoch in "
                                          r"its context"):
        build("igdm", student, teacher)
    with pytest.raises(ConfigError, match="IGDM needs epochs >= 1"):
        IGDMDistiller(student, teacher, epochs=0, steps_per_epoch=1)
    trainer = build("igdm", student, teacher, igdm_alpha=2.0,
                    context=MethodContext(epochs=3, steps_per_epoch=2))
    assert (trainer.epochs, trainer.steps_per_epoch, trainer.igdm_alpha) == (3, 2, 2.0)


def test_gacd_distill_runs_igdm_end_to_end(tmp_path):
    from gacd_tf.models import build_model

    write_tiny_cifar10(tmp_path / "data", train=16, test=8)
    build_model("resnet8", num_classes=10).save(tmp_path / "teacher.keras")
    out = tmp_path / "igdm"
    result = run_program(
        "distill", "--method=igdm", f"--teacher={tmp_path / 'teacher.keras'}",
        "--arch=resnet8", f"--data_dir={tmp_path / 'data'}", "--epochs=2", "--batch_size=8",
        "--train_attack_steps=1", "--attack_steps=1", "--val_examples=0", "--igdm_alpha=0.5",
        f"--model_dir={out}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "igdm" and metrics["teacher_unchanged"] is True
    assert metrics["settings"]["igdm_alpha"] == 0.5
    assert metrics["settings"]["attack"]["attack"] == "adaad_pgd"
    log = (out / "distill_log.csv").read_text().splitlines()
    ramp = log[0].split(",").index("igdm_ramp")
    # 2 steps per epoch, 2 epochs: the logged epoch means of the ramp are 1/2 and 1.
    assert [float(row.split(",")[ramp]) for row in log[1:]] == pytest.approx([0.5, 1.0])


def test_gacd_distill_runs_the_paper_normaliser_end_to_end(tmp_path):
    from gacd_tf.models import build_model

    write_tiny_cifar10(tmp_path / "data", train=30, test=8)
    build_model("resnet8", num_classes=10).save(tmp_path / "teacher.keras")
    out = tmp_path / "gacd"
    result = run_program(
        "distill", "--method=gacd", "--nce_normaliser=paper", "--nce_k=4", "--embed_dim=8",
        f"--teacher={tmp_path / 'teacher.keras'}", "--arch=resnet8",
        f"--data_dir={tmp_path / 'data'}", "--epochs=1", "--batch_size=8",
        "--train_attack_steps=1", "--attack_steps=2", "--val_examples=10", "--aft_epochs=1",
        f"--model_dir={out}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["nce_normaliser"] == "paper"
    # No Z in the loss: the bank's Z (its vars log_z, z_is_set) was never set, as the
    # distillation's last checkpoint holds it (with crd, z_is_set is 1 after the first step).
    [checkpoint] = (out / "checkpoints" / "distill").glob("*.weights.h5")
    with h5py.File(checkpoint, "r") as saved:
        banks = [saved[f"layers/{name}/vars"] for name in saved["layers"]
                 if name.startswith("memory_bank")]
        assert banks, list(saved["layers"])
        z = [(float(b["1"][()]), float(b["2"][()])) for b in banks]  # (log_z, z_is_set)
    assert z == [(0.0, 0.0)] * len(banks)
    # Validated after each epoch, distillation and AFT, with the evaluation PGD
    # (--attack_steps), not the training attack.
    assert metrics["settings"]["validation_attack"]["steps"] == 2
    assert metrics["aft_validation_attack"]["steps"] == 2
    for log in ("distill_log.csv", "aft_log.csv"):
        assert "val_adv_accuracy" in (out / log).read_text().splitlines()[0], log


def linear(seed, name):
    """4x4x3 images -> flatten ("features") -> logits: the input gradient is analytic."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 3))
    features = keras.layers.Flatten(name="features")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(features), name=name)


def numpy_inner_attack(w_s, b_s, w_t, b_t, x, start, eps, step, steps):
    """The official adaad_inner_loss iterates for linear networks (float64): sign ascent of
    KL(softmax(t(x')) || softmax(s(x'))), the gradient through both networks, from the
    unclipped start, each iterate projected onto the eps-ball and [0, 1]."""
    shape, flat, x_adv = x.shape, x.reshape(len(x), -1), start.reshape(len(x), -1)
    for _ in range(steps):
        s, t = x_adv @ w_s + b_s, x_adv @ w_t + b_t
        log_q, log_p = log_softmax(s), log_softmax(t)
        p, q = np.exp(log_p), np.exp(log_q)
        d = log_p - log_q
        kl = (p * d).sum(-1, keepdims=True)
        # dKL/ds = q - p; dKL/dt = p (d - KL) (the softmax Jacobian of sum p d).
        grad = (q - p) @ w_s.T + (p * (d - kl)) @ w_t.T
        x_adv = np.clip(np.clip(x_adv + step * np.sign(grad), flat - eps, flat + eps), 0.0, 1.0)
    return x_adv.reshape(shape)


def test_inner_attack_iterates_equal_a_numpy_re_derivation():
    student, teacher = linear(1, "student"), linear(2, "teacher")
    context = MethodContext(epochs=2, steps_per_epoch=1, seed=5, train_attack_steps=5,
                            train_step_size=2 / 255, eps=4 / 255)
    trainer, _ = METHODS.get("igdm").from_settings(student, teacher, {}, context)
    attack, starts = trainer.attack, []
    start = attack.start
    attack.start = lambda z: starts.append(start(z)) or starts[-1]  # records the noise
    # Near black, so [0, 1] clips; 5 steps of 2/255 in a 4/255 ball, so the ball clips.
    x = np.random.default_rng(0).uniform(0, 0.02, (6, 4, 4, 3)).astype("float32")
    got = attack(trainer.student_and_teacher, tf.constant(x), None).numpy()
    x0 = starts[0].numpy().astype("float64")
    assert (x0 < 0).any(), "the start should leave [0, 1] (the first gradient is taken there)"
    (w_s, b_s), (w_t, b_t) = ([v.numpy().astype("float64") for v in m.get_layer("logits").weights]
                              for m in (student, teacher))
    want = numpy_inner_attack(w_s, b_s, w_t, b_t, x.astype("float64"), x0, 4 / 255, 2 / 255, 5)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(got - x).max() == pytest.approx(4 / 255, abs=1e-6)  # the ball binds
    assert (got == 0).any()  # so does the box
