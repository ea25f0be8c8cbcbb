"""float64 through the trainers (benchmarks/torch_parity.py --dtype=float64): with Keras'
floatx float64, a training step, its loss, coupled L2, rate and optimizer stay float64,
checked against NumPy float64 re-derivations to 1e-12 (float32 anywhere would miss by
about 1e-7); and the float32 casts of the losses only widen float16/bfloat16."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from numpy_refs import batchmean_kl, log_softmax

from gacd_tf.methods import GACDDistiller, NaturalTrainer
from gacd_tf.methods.adaad import AdaADObjective
from gacd_tf.methods.igdm import igdm_loss, igdm_ramp
from gacd_tf.training import StepDecay, TorchSGD


@pytest.fixture
def float64():
    previous = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(previous)


def linear_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, name="logits")])


def test_natural_steps_equal_numpy_float64_sgd_across_a_decay(float64):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 5)), np.array([0, 1, 2, 0, 1, 2], np.int32)
    model = linear_model()
    w, b = [v.numpy() for v in model.weights]
    assert w.dtype == np.float64
    wd, momentum, rates = 5e-4, 0.9, [0.1, 0.01]  # StepDecay(0.1, [1])
    trainer = NaturalTrainer(model, weight_decay=wd)
    trainer.compile(optimizer=TorchSGD(StepDecay(0.1, [1]), momentum=momentum))
    buffers, losses = None, []
    for lr in rates:
        # NumPy: CE of softmax(x W + b), coupled L2, torch.optim.SGD's momentum.
        log_p = log_softmax(x @ w + b)
        losses.append(-log_p[np.arange(6), y].mean())
        delta = (np.exp(log_p) - np.eye(3)[y]) / 6
        grads = [x.T @ delta + wd * w, delta.sum(0) + wd * b]
        buffers = grads if buffers is None else [momentum * m + g for m, g in zip(buffers, grads)]
        w, b = w - lr * buffers[0], b - lr * buffers[1]
    got = [float(trainer.train_on_batch(x, y, return_dict=True)["loss"]) for _ in rates]
    np.testing.assert_allclose(got, losses, rtol=1e-12)
    np.testing.assert_allclose(model.weights[0].numpy(), w, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(model.weights[1].numpy(), b, rtol=1e-12, atol=1e-15)


def test_peer_losses_keep_float64_and_widen_only_half_precision():
    rng = np.random.default_rng(1)
    s_plus, s_minus, t_plus, t_minus = (rng.normal(0, 3, (4, 10)) for _ in range(4))

    # alpha 0.3 is not a float32 number: a float32 round trip would show at 1e-8.
    got = igdm_loss(*[tf.constant(z) for z in (s_plus, s_minus, t_plus, t_minus)], 0.3)
    assert got.dtype == tf.float64
    expected = batchmean_kl(s_plus, t_plus) + 0.3 * batchmean_kl(s_plus - s_minus,
                                                                t_plus - t_minus)
    np.testing.assert_allclose(float(got), expected, rtol=1e-12)
    kl = AdaADObjective()({"logits": tf.constant(s_plus), "teacher_logits": tf.constant(t_plus)})
    assert kl.dtype == tf.float64
    np.testing.assert_allclose(kl.numpy().mean(), batchmean_kl(s_plus, t_plus), rtol=1e-12)
    half = igdm_loss(*[tf.constant(z, tf.float16) for z in (s_plus, s_minus, t_plus, t_minus)],
                     0.3)
    assert half.dtype == tf.float32


def test_igdm_ramp_and_a_constant_rate_are_exact_in_float64(float64):
    assert igdm_ramp(tf.constant(0), 1, 5).dtype == tf.float64
    assert float(igdm_ramp(tf.constant(0), 1, 5)) == 0.2
    assert float(StepDecay(0.1, [])(0)) == 0.1  # not float32's 0.10000000149


def test_gacd_heads_and_banks_follow_float64(float64):
    def tiny(seed, name):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((8, 8, 3))
        h = keras.layers.GlobalAveragePooling2D(name="features")(keras.layers.Conv2D(4, 3)(inputs))
        return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h), name=name)

    labels = np.arange(12) % 3
    gacd = GACDDistiller(tiny(0, "student"), tiny(1, "teacher"), labels, nce_k=4, embed_dim=4)
    assert gacd.student_embed.compute_dtype == gacd.teacher_embed.compute_dtype == "float64"
    assert gacd.student_bank.bank.dtype == "float64"
