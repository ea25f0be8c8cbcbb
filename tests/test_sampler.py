"""OtherClassSampler: the law of its draws (checked by chi-square against the
uniform law, with a control the test must reject), seeds, graph modes, scale."""

import itertools
import time

import numpy as np
import pytest
import tensorflow as tf

from gacd_tf.methods.gacd.negative_sampling import OtherClassSampler
from gacd_tf.errors import ConfigError
from gacd_tf.training.training_checkpoint import seed_generators_of

# Upper 1e-4 quantiles of the chi-square law (scipy.stats.chi2.ppf(1 - 1e-4, df)).
CHI2_CRITICAL = {2: 18.42, 19: 50.80, 39: 80.65}


def chi_square(counts):
    """Pearson's statistic of ``counts`` against equal expected counts."""
    counts = np.asarray(counts, float)
    expected = counts.sum() / len(counts)
    return float(np.sum((counts - expected) ** 2 / expected))


def shuffled_labels(sizes, seed=0):
    """Labels with ``sizes[c]`` samples of class c, in a fixed random order."""
    labels = np.repeat(np.arange(len(sizes)), sizes).astype("int32")
    return np.random.default_rng(seed).permutation(labels)


def compiled(sampler, k, mode):
    return tf.function(lambda y: sampler(y, k), jit_compile=(mode == "xla"))


@pytest.mark.parametrize("mode", ["graph", "xla"])
def test_each_anchor_gets_a_uniform_k_subset_of_its_pool(mode):
    # Pool of class 0: the 6 samples of classes 1 and 2; k = 3 -> 20 subsets.
    # Class 0 holds 40 % of the slots, so many draws cycle-walk.
    labels = shuffled_labels([4, 3, 3])
    pool = np.flatnonzero(labels != 0)
    subsets = {s: i for i, s in enumerate(itertools.combinations(pool, 3))}
    draw = compiled(OtherClassSampler(labels, 3, seed=1), 3, mode)
    counts = np.zeros(len(subsets))
    for _ in range(1000):
        row = draw(tf.constant([0]))[0].numpy()
        assert len(set(row)) == 3 and np.all(labels[row] != 0)
        counts[subsets[tuple(sorted(row))]] += 1
    assert chi_square(counts) < CHI2_CRITICAL[19], counts

    # Control: a window of the class-sorted pool (within-class order random,
    # random offset) has uniform marginals but not uniform subsets; the
    # same statistic rejects it.
    rng = np.random.default_rng(0)
    control = np.zeros(len(subsets))
    for _ in range(1000):
        order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in (1, 2)])
        window = np.roll(order, -rng.integers(len(order)))[:3]
        control[subsets[tuple(sorted(window))]] += 1
    assert chi_square(control) > CHI2_CRITICAL[19]


def test_marginals_are_uniform_over_the_pool():
    labels = shuffled_labels([20, 25, 15])  # pool of class 0: 40 samples
    pool = labels != 0
    draw = compiled(OtherClassSampler(labels, 3, seed=2), 7, "graph")
    counts = np.zeros(len(labels))
    for _ in range(600):
        np.add.at(counts, draw(tf.constant([0])).numpy().ravel(), 1)
    assert counts[~pool].sum() == 0
    assert chi_square(counts[pool]) < CHI2_CRITICAL[39]
    # Control: the sampler's window of k pool slots from an offset in
    # [0, pool - k], taken without the permutation (ends of the pool drawn
    # less often), is rejected.
    rng = np.random.default_rng(0)
    control = np.zeros(int(pool.sum()))
    for _ in range(600):
        control[rng.integers(pool.sum() - 7 + 1) + np.arange(7)] += 1
    assert chi_square(control) > CHI2_CRITICAL[39]


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_other_class_and_distinct_while_k_fits_the_pool(mode):
    labels = shuffled_labels([200, 30, 50, 20])  # pools 100, 270, 250, 280
    anchors = tf.constant([0, 1, 2, 3, 0, 0, 3, 1], tf.int32)
    sampler = OtherClassSampler(labels, 4, seed=3)
    for k in (1, 64, 100):  # k = 100 is the whole pool of class 0
        draw = (lambda y, k=k: sampler(y, k)) if mode == "eager" else compiled(sampler, k, mode)
        neg = draw(anchors).numpy()
        assert neg.shape == (8, k) and neg.dtype == np.int32
        assert np.all(labels[neg] != anchors.numpy()[:, None])
        assert all(len(np.unique(row)) == k for row in neg)
    whole = neg[anchors.numpy() == 0]
    np.testing.assert_array_equal(np.sort(whole, axis=1),
                                  np.tile(np.flatnonzero(labels != 0), (len(whole), 1)))


def test_with_replacement_only_where_k_exceeds_the_pool():
    labels = shuffled_labels([50, 5, 5])  # pools 10, 55, 55
    neg = OtherClassSampler(labels, 3, seed=4)(tf.constant([0, 1, 2]), 20).numpy()
    assert np.all(labels[neg] != np.array([0, 1, 2])[:, None])
    assert len(np.unique(neg[0])) <= 10  # class 0: 20 draws from a pool of 10
    assert len(np.unique(neg[1])) == 20 and len(np.unique(neg[2])) == 20

    labels = np.array([0] * 5 + [1] * 3, "int32")  # every pool < k = 7
    draw = compiled(OtherClassSampler(labels, 2, seed=5), 7, "graph")
    counts = np.zeros(8)
    for _ in range(100):
        neg = draw(tf.constant([0, 1])).numpy()
        assert np.all(labels[neg[0]] == 1) and np.all(labels[neg[1]] == 0)
        np.add.at(counts, neg[0], 1)
    assert chi_square(counts[5:]) < CHI2_CRITICAL[2]


def test_same_seed_same_draws_and_generator_state_replays_them():
    labels = shuffled_labels([30, 30, 40])
    anchors = tf.constant([0, 1, 2, 2], tf.int32)
    first = OtherClassSampler(labels, 3, seed=6)
    a = first(anchors, 50).numpy()
    np.testing.assert_array_equal(a, OtherClassSampler(labels, 3, seed=6)(anchors, 50).numpy())
    assert not np.array_equal(a, OtherClassSampler(labels, 3, seed=7)(anchors, 50).numpy())
    # The declared generator is the whole random state: restoring it replays a draw.
    generators = first.seed_generators()
    assert generators == {"seed_generator": first.seed_generator}
    assert seed_generators_of(first) == generators
    state = first.seed_generator.state.numpy()
    b = first(anchors, 50).numpy()
    assert not np.array_equal(a, b)
    first.seed_generator.state.assign(state)
    np.testing.assert_array_equal(b, first(anchors, 50).numpy())


def test_refuses_labels_beyond_num_classes():
    with pytest.raises(ConfigError, match="num_classes"):
        OtherClassSampler(np.array([0, 1, 5]), 3)


def test_scales_to_a_thousand_classes_and_a_million_samples():
    # The former sampler needed a [C, M] = 1.28e9-entry table here.
    labels = np.random.default_rng(0).permutation(np.arange(1_280_000) % 1000).astype("int32")
    sampler = OtherClassSampler(labels, 1000, seed=8)
    anchors = tf.constant([0, 17, 999, 17], tf.int32)
    start = time.perf_counter()
    neg = sampler(anchors, 16384).numpy()
    assert time.perf_counter() - start < 20
    assert np.all(labels[neg] != anchors.numpy()[:, None])
    assert all(len(np.unique(row)) == 16384 for row in neg)
