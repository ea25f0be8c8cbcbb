"""Negative sampling never picks the anchor's class; the memory bank follows its formula."""

import numpy as np
import pytest
import tensorflow as tf

from gacd_tf.methods.gacd.negative_sampling import OtherClassSampler
from gacd_tf.errors import ConfigError
from gacd_tf.methods.gacd.memory_bank import MemoryBank


def labels_of(m=300, c=10, seed=0):
    return np.random.default_rng(seed).integers(0, c, m).astype("int32")


@pytest.mark.parametrize("k", [1, 50, 250])
def test_negatives_are_other_class_distinct_and_seeded(k):
    labels = labels_of()
    anchors = np.array([0, 1, 2, 3, 3, 9, 9, 5], "int32")
    sampler = OtherClassSampler(labels, 10, seed=4)
    neg = sampler(tf.constant(anchors), k).numpy()
    assert neg.shape == (8, k) and neg.dtype == np.int32
    assert neg.min() >= 0 and neg.max() < len(labels)
    assert np.all(labels[neg] != anchors[:, None])
    for row, y in zip(neg, anchors):
        if k <= np.sum(labels != y):
            assert len(np.unique(row)) == k  # without replacement while the pool allows
    again = OtherClassSampler(labels, 10, seed=4)(tf.constant(anchors), k).numpy()
    np.testing.assert_array_equal(neg, again)
    assert not np.array_equal(neg, sampler(tf.constant(anchors), k).numpy())


def test_negatives_cover_the_pool_uniformly():
    labels = labels_of(m=60, c=3)
    sampler = OtherClassSampler(labels, 3, seed=0)
    anchors = tf.zeros([4], tf.int32)
    counts = np.zeros(60)
    for _ in range(200):
        np.add.at(counts, sampler(anchors, 5).numpy().ravel(), 1)
    pool = labels != 0
    assert counts[~pool].sum() == 0
    expected = 200 * 4 * 5 / pool.sum()
    assert np.all(np.abs(counts[pool] - expected) < 0.35 * expected)


def test_negatives_with_replacement_when_k_exceeds_the_pool():
    labels = np.array([0] * 5 + [1] * 3, "int32")
    neg = OtherClassSampler(labels, 2, seed=1)(tf.constant([0, 1]), 60).numpy()
    assert neg.shape == (2, 60)  # k draws, not capped at the pool's 3 or 5 rows
    assert np.all(labels[neg[0]] == 1) and np.all(labels[neg[1]] == 0)
    # With replacement over the whole pool (60 draws miss a row with odds under 1e-5).
    assert set(neg[0]) == {5, 6, 7} and set(neg[1]) == {0, 1, 2, 3, 4}


def test_sampler_refuses_bad_labels():
    with pytest.raises(ConfigError, match="two classes"):
        OtherClassSampler(np.zeros(5, "int32"))
    with pytest.raises(ConfigError, match="labelled"):
        OtherClassSampler(np.array([-1, 0, 1]))
    with pytest.raises(ConfigError, match="k must be >= 1"):
        OtherClassSampler(labels_of())(tf.constant([0]), 0)


def test_bank_update_follows_the_momentum_formula_and_keeps_other_rows():
    bank = MemoryBank(20, 8, momentum=0.5, seed=0)
    s = 1 / np.sqrt(8 / 3)
    before = bank.bank.numpy().copy()
    assert np.abs(before).max() <= s and np.abs(before).max() > 0.5 * s
    idx = np.array([3, 7, 0], "int32")
    emb = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    bank.update(tf.constant(idx), tf.constant(emb))
    after = bank.bank.numpy()
    expected = 0.5 * before[idx] + 0.5 * emb
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(after[idx], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(after[idx], axis=1), 1.0, rtol=1e-6)
    others = np.setdiff1d(np.arange(20), idx)
    np.testing.assert_array_equal(after[others], before[others])


def test_log_z_is_set_once_then_constant():
    bank = MemoryBank(4, 2)
    assert float(bank.log_z_once(tf.constant(3.0))) == 3.0
    assert float(bank.log_z_once(tf.constant(5.0))) == 3.0
    assert float(bank.log_z.numpy()) == 3.0 and float(bank.z_is_set.numpy()) == 1.0

