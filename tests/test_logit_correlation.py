"""Logit correlation matrices against a NumPy computation written out by hand."""

import numpy as np
import tensorflow as tf

from gacd_tf.attacks import PGD
from gacd_tf.evaluation import correlation_difference, logit_correlation
from tiny_models import tiny


def dataset(n=40, batch=16):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (n, 8, 8, 3)).astype("float32")
    y = (np.arange(n) % 3).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y, np.arange(n, dtype="int32"))).batch(batch), x, y


def pearson(z):
    centred = z - z.mean(0)
    cov = centred.T @ centred
    std = np.sqrt(np.diag(cov))
    return cov / np.outer(std, std)


def test_natural_correlation_matches_a_hand_computation():
    model = tiny(1, batch_norm=False)
    ds, x, _ = dataset()
    expected = pearson(model(x).numpy().astype(np.float64))
    corr = logit_correlation(model, ds)
    assert corr.shape == (3, 3)
    np.testing.assert_allclose(corr, expected, atol=1e-6)
    np.testing.assert_allclose(np.diag(corr), 1.0, atol=1e-12)


def test_adversarial_correlation_uses_the_attacked_logits():
    model = tiny(1, batch_norm=False)
    ds, x, y = dataset(batch=40)
    attack = PGD(steps=2, random_start=False)
    x_adv = PGD(steps=2, random_start=False)(model, x, y).numpy()
    np.testing.assert_allclose(logit_correlation(model, ds, attack),
                               pearson(model(x_adv).numpy().astype(np.float64)), atol=1e-6)


def test_difference_is_zero_for_the_same_model_and_positive_otherwise():
    ds, x, _ = dataset()
    teacher, student = tiny(1, batch_norm=False), tiny(2, batch_norm=False)
    same, mean_same = correlation_difference(teacher, teacher, ds)
    assert mean_same == 0.0 and same.shape == (3, 3)
    diff, mean = correlation_difference(teacher, student, ds)
    # |corr_T - corr_S| entry by entry, from the hand computation.
    want = np.abs(pearson(teacher(x).numpy().astype(np.float64))
                  - pearson(student(x).numpy().astype(np.float64)))
    np.testing.assert_allclose(diff, want, atol=1e-6)
    assert mean > 1e-3 and np.isclose(mean, want.mean())
