"""Supervised negative sampling for GACD: k indices of *other-class* samples."""

import keras
import numpy as np
import tensorflow as tf

from gacd_tf.errors import ConfigError


class OtherClassSampler:
    """Draws, for each anchor, ``k`` training-sample indices from other classes.

    The supervised ("exact") mode of RepDistiller's ``CIFAR100InstanceSample``:
    anchor ``i`` of class ``y_i`` gets negatives from the pool of samples whose
    label differs from ``y_i``, without replacement when ``k`` fits in the
    pool and with replacement otherwise.

    Vectorised, no Python loop per sample and no [B, M] top-k: each call
    draws one random permutation of the M samples, arranges it as a [C, M]
    table whose row ``c`` lists the permuted samples of classes != c, and
    gives anchor ``i`` the ``k`` consecutive (cyclic) entries of row ``y_i``
    from a random offset. A window of a uniformly random permutation is a
    uniformly random k-subset, so each anchor's negatives are a uniform draw
    without replacement; anchors of the same class in one batch share the
    permutation (their windows are correlated), which leaves each anchor's
    loss term unbiased. Cost per call: O(M log M + C M + B k).

    Args:
        labels: int labels [M] of the training set, indexed by sample index.
        num_classes: C (default ``max(labels) + 1``).
        seed: seed of the draws (a ``keras.random.SeedGenerator``).

    Example:
    >>> sampler = OtherClassSampler(train.labels, 10, seed=0)  # doctest: +SKIP
    >>> negatives = sampler(batch_labels, k=16384)  # [B, k] int32

    Reference:
        Tian et al., "Contrastive Representation Distillation", ICLR 2020.
    """

    def __init__(self, labels, num_classes=None, seed=None):
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ConfigError(f"negative sampling needs a 1-D array of labels, got {labels.shape}")
        if labels.min() < 0:
            raise ConfigError("negative sampling needs labelled data (a label < 0 was found)")
        num_classes = int(num_classes or labels.max() + 1)
        counts = np.bincount(labels, minlength=num_classes)
        pool = len(labels) - counts
        present = counts > 0
        if np.any(pool[present] == 0):
            raise ConfigError("negative sampling needs at least two classes in the training data")
        self.num_data = len(labels)
        self.num_classes = num_classes
        self.labels = tf.constant(labels.astype(np.int32))
        self.pool_sizes = tf.constant(pool.astype(np.int32))
        self.min_pool = int(pool[present].min())
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _table(self):
        """[C, M]: row c starts with a random permutation of the samples of classes != c.

        Row c is a permutation of all M samples: first the ``pool[c]`` other-class
        samples in permuted order, then class c's own. Fixed shapes throughout
        (no data-dependent ``tf.where``), so it also compiles under XLA.
        """
        keys = keras.random.uniform([self.num_data], seed=self.seed_generator)
        perm = tf.cast(tf.argsort(keys), tf.int32)
        other = tf.not_equal(tf.gather(self.labels, perm)[None, :],
                             tf.range(self.num_classes)[:, None])  # [C, M]
        other_slot = tf.cumsum(tf.cast(other, tf.int32), axis=1) - 1
        same_slot = self.pool_sizes[:, None] + tf.cumsum(1 - tf.cast(other, tf.int32), axis=1) - 1
        slot = tf.where(other, other_slot, same_slot)  # a permutation of 0..M-1 per row
        rows = tf.broadcast_to(tf.range(self.num_classes)[:, None], tf.shape(slot))
        values = tf.broadcast_to(perm[None, :], tf.shape(slot))
        return tf.scatter_nd(tf.stack([rows, slot], axis=-1), values,
                             [self.num_classes, self.num_data])

    def __call__(self, anchor_labels, k):
        """Negative indices ``[B, k]`` (int32) for anchors with ``anchor_labels`` [B]."""
        if int(k) < 1:
            raise ConfigError(f"the number of negatives k must be >= 1, got {k}")
        anchor_labels = tf.cast(anchor_labels, tf.int32)
        pool = tf.gather(self.pool_sizes, anchor_labels)[:, None]  # [B, 1]
        batch = tf.shape(anchor_labels)[0]
        offsets = keras.random.randint([batch, 1], 0, 2**30, seed=self.seed_generator) % pool
        columns = (offsets + tf.range(k)[None, :]) % pool  # distinct while k <= pool
        if k > self.min_pool:  # some classes need replacement: independent uniform draws
            draws = keras.random.randint([batch, k], 0, 2**30, seed=self.seed_generator) % pool
            columns = tf.where(k > pool, draws, columns)
        rows = tf.broadcast_to(anchor_labels[:, None], tf.shape(columns))
        return tf.gather_nd(self._table(), tf.stack([rows, columns], axis=-1))
