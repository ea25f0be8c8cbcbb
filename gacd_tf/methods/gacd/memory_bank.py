"""GACD's memory bank of student embeddings and its fixed NCE normaliser Z."""

import math

import keras
import tensorflow as tf

from gacd_tf.training.distribute import all_gather


class MemoryBank(keras.layers.Layer):
    """A non-trainable [M, d] table of embeddings, one row per training sample.

    Rows start U(-s, s) with s = 1/sqrt(d/3) (RepDistiller ``ContrastMemory``)
    and are updated after each step at the batch's sample indices by
    ``bank[idx] <- l2norm(m * bank[idx] + (1 - m) * e)``. The layer also holds
    ``log_z``, the log of the NCE normaliser Z, set once on the first batch
    (:meth:`log_z_once`) and then constant. Both are Keras variables, so they
    are saved with the trainer's weights and survive a resume.

    Under ``tf.distribute`` every replica gathers the whole global batch's
    indices and embeddings and the variables use ``ONLY_FIRST_REPLICA``
    aggregation: the first replica's update, which covers every replica's
    rows, is applied to every copy, so the bank stays identical on all
    replicas and equal to a single-device bank.

    Args:
        size: M, the number of training samples.
        dim: d, the embedding dimension.
        momentum: m (0.5).
        seed: seed of the initial rows.
        **kwargs: passed to ``keras.layers.Layer``.

    Reference:
        Tian et al., "Contrastive Representation Distillation", ICLR 2020;
        Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
        Discrimination", CVPR 2018.
    """

    def __init__(self, size, dim, momentum=0.5, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.size, self.dim, self.momentum, self.seed = int(size), int(dim), momentum, seed
        bound = 1.0 / math.sqrt(self.dim / 3.0)
        self.bank = self.add_weight(
            shape=(self.size, self.dim), name="bank", trainable=False,
            initializer=keras.initializers.RandomUniform(-bound, bound, seed=seed),
            aggregation="only_first_replica")
        self.log_z = self.add_weight(shape=(), name="log_z", trainable=False,
                                     initializer="zeros", aggregation="only_first_replica")
        self.z_is_set = self.add_weight(shape=(), name="z_is_set", trainable=False,
                                        initializer="zeros", aggregation="only_first_replica")

    def rows(self, indices=None):
        """The bank (or its rows at ``indices``) as a constant: no gradient flows into it."""
        value = self.bank if indices is None else tf.gather(self.bank, indices)
        return tf.stop_gradient(tf.convert_to_tensor(value))

    def update(self, indices, embeddings):
        """Momentum update of the rows at ``indices`` with ``embeddings`` [B, d].

        Under ``tf.distribute``, call it from every replica with its own
        batch: the rows of all replicas are gathered and written together.
        """
        indices, embeddings = all_gather(indices), all_gather(embeddings)
        old = tf.gather(self.bank, indices)
        new = self.momentum * old + (1.0 - self.momentum) * tf.stop_gradient(embeddings)
        new = tf.math.l2_normalize(new, axis=-1)
        # In-place row update of the backing tf.Variable (no [M, d] copy per step).
        self.bank.value.scatter_update(tf.IndexedSlices(new, indices))

    def log_z_once(self, candidate):
        """``log_z``: set to ``candidate`` on the first call, unchanged afterwards.

        ``candidate`` must be the same on every replica (compute it from the
        gathered global batch).
        """
        is_set = self.z_is_set > 0.5
        value = tf.where(is_set, tf.convert_to_tensor(self.log_z), tf.stop_gradient(candidate))
        self.log_z.assign(value)
        self.z_is_set.assign(1.0)
        return value

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, dim=self.dim, momentum=self.momentum, seed=self.seed)
        return config
