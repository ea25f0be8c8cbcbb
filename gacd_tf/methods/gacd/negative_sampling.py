"""Supervised negative sampling for GACD: k indices of *other-class* samples."""

import keras
import numpy as np
import tensorflow as tf

from gacd_tf.errors import ConfigError

# Random integers this wide make the modulo bias of ``draw % n`` negligible
# (at most n / 2**62 for a pool of n samples).
_WIDE = 2**62


def _in_xla_context():
    """True while tracing for XLA (``jit_compile``): no ``StatelessShuffle``, static shapes."""
    if tf.executing_eagerly():
        return False
    try:
        from tensorflow.python.ops import control_flow_util
        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except (ImportError, AttributeError):  # pragma: no cover - private API moved: XLA-safe path
        return True


class OtherClassSampler:
    """Draws, for each anchor, ``k`` training-sample indices from other classes.

    The supervised ("exact") mode of RepDistiller's ``CIFAR100InstanceSample``:
    anchor ``i`` of class ``y_i`` gets negatives from the pool of samples whose
    label differs from ``y_i``, without replacement when ``k`` fits in the
    pool and with replacement otherwise.

    How, in O(M) memory and without the former [C, M] table: the samples are
    laid out class by class (``class_sorted``; class c fills the block of
    slots ``[start_c, start_c + n_c)``), so the pool of class c is the cyclic
    run of ``M - n_c`` slots that starts where block c ends. Each call (one
    training step) draws one uniformly random permutation ``tau`` of the M
    slots. Anchor ``i`` of class c takes ``k`` consecutive slots ``x`` of its
    pool from a random offset and maps each through ``tau``,
    *cycle-walking* (``x -> tau(x) -> tau(tau(x)) ..``) until it leaves
    block c. That map is the permutation ``tau`` induces on the slots outside
    block c (block c deleted from ``tau``'s cycles), which is a uniformly
    random permutation of the pool. So each anchor's negatives are the images
    of ``k`` distinct slots, chosen without looking at ``tau``, under a
    uniformly random permutation of its pool: a uniformly random k-subset of
    the pool, in uniformly random order -- the same law per anchor as the
    former sampler (a window of a uniformly random ordering of the pool).
    Anchors of one call share ``tau`` (same-class anchors' draws overlap, as
    before), which leaves each anchor's loss term unbiased. An anchor whose
    pool is smaller than ``k`` gets ``k`` independent uniform draws from its
    pool instead.

    The walk is precomputed once per call for every slot (where the walk
    from ``tau(x)`` leaves ``tau(x)``'s own block), so an anchor only reads
    three per-slot arrays (sample at ``tau(x)``, its class, sample at the
    exit) over a contiguous window of ``k`` slots.

    Cost per call: O(M) for ``tau`` and the per-slot arrays (a shuffle; an
    ``argsort`` of random 62-bit keys under XLA, which has no shuffle
    kernel; walks of mean length ~``n_c / M``), plus O(B k) to read the
    windows; O(M + B k) memory. Fixed shapes except the batch size; runs
    eagerly, in ``tf.function`` and under XLA. ``benchmarks/sampler.py``
    times it against the former sampler.

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
        labels = labels.astype(np.int64)
        num_classes = int(num_classes or labels.max() + 1)
        if labels.max() >= num_classes:
            raise ConfigError(f"negative sampling: label {labels.max()} does not fit "
                              f"num_classes={num_classes}; pass the number of classes of the data")
        counts = np.bincount(labels, minlength=num_classes)
        pool = len(labels) - counts
        present = counts > 0
        if np.any(pool[present] == 0):
            raise ConfigError("negative sampling needs at least two classes in the training data")
        self.num_data = len(labels)
        self.num_classes = num_classes
        self.labels = tf.constant(labels.astype(np.int32))
        self.pool_sizes = tf.constant(pool.astype(np.int32))
        self.class_counts = tf.constant(counts.astype(np.int32))
        self.class_starts = tf.constant((np.cumsum(counts) - counts).astype(np.int32))
        self.class_sorted = tf.constant(np.argsort(labels, kind="stable").astype(np.int32))
        self.min_pool = int(pool[present].min())
        self.max_pool = int(pool[present].max())
        self.max_class_count = int(counts.max())
        # Per slot of class_sorted: its class and the block of its class.
        sorted_labels = np.sort(labels)
        self.sorted_labels = tf.constant(sorted_labels.astype(np.int32))
        self.slot_starts = tf.constant((np.cumsum(counts) - counts)[sorted_labels].astype(np.int32))
        self.slot_counts = tf.constant(counts[sorted_labels].astype(np.int32))
        self.seed_generator = keras.random.SeedGenerator(seed)

    def seed_generators(self):
        """``{attribute name: keras.random.SeedGenerator}`` this sampler draws from."""
        return {"seed_generator": self.seed_generator}

    def _permutation(self, xla):
        """A uniformly random permutation ``tau`` of the slots ``0..M-1`` (int32 [M])."""
        if xla:  # no StatelessShuffle kernel: argsort of 62-bit keys (ties ~ M^2 / 2^63)
            keys = keras.random.randint([self.num_data], 0, _WIDE, dtype="int64",
                                        seed=self.seed_generator)
            return tf.cast(tf.argsort(keys), tf.int32)
        seed = keras.random.randint([2], 0, 2**31 - 1, seed=self.seed_generator)
        return tf.random.experimental.stateless_shuffle(tf.range(self.num_data), seed=seed)

    def _ranks(self, shape, pool):
        """Uniform random ranks ``0..pool-1`` (int32 ``shape``), ``pool`` broadcast."""
        draws = keras.random.randint(shape, 0, _WIDE, dtype="int64", seed=self.seed_generator)
        return tf.cast(draws % tf.cast(pool, tf.int64), tf.int32)

    @staticmethod
    def _inside(x, start, count):
        """``start <= x < start + count`` (one unsigned comparison)."""
        return tf.cast(x - start, tf.uint32) < tf.cast(count, tf.uint32)

    def _exit_samples(self, tau, first, xla):
        """Per slot ``y``: the sample at the first of ``tau(y), tau(tau(y)), ..`` outside
        ``y``'s class block (``first[y] = class_sorted[tau(y)]`` unless ``tau(y)``
        stays in the block; any value where ``y``'s whole cycle stays inside its
        block: such a ``y`` is never the image of a slot outside the block)."""
        slots = tf.range(self.num_data)

        def walking(z, y, start, count):
            return self._inside(z, start, count) & tf.not_equal(z, y)

        def walk(z, y, start, count):
            # A walk stays at most n_c steps inside a block of n_c slots.
            (z,) = tf.while_loop(
                lambda z: tf.reduce_any(walking(z, y, start, count)),
                lambda z: (tf.where(walking(z, y, start, count), tf.gather(tau, z), z),),
                (z,), maximum_iterations=self.max_class_count)
            return tf.gather(self.class_sorted, z)

        if xla:  # static shapes: every slot goes through the loop (cheap on an accelerator)
            return walk(tau, slots, self.slot_starts, self.slot_counts)
        # Only the ~n_c / M fraction of slots whose image stays in the block walks on.
        back = tf.where(walking(tau, slots, self.slot_starts, self.slot_counts))  # [n, 1]
        walked = walk(tf.gather_nd(tau, back), tf.cast(back[:, 0], tf.int32),
                      tf.gather_nd(self.slot_starts, back), tf.gather_nd(self.slot_counts, back))
        return tf.tensor_scatter_nd_update(first, back, walked)

    def _without_replacement(self, anchor_labels, pool, k):
        """[B, k]: ``k`` consecutive slots of each anchor's pool through the
        permutation ``tau`` induces on that pool (garbage in rows whose pool < k)."""
        xla = _in_xla_context()
        tau = self._permutation(xla)
        first, first_class = tf.gather(self.class_sorted, tau), tf.gather(self.sorted_labels, tau)
        # Per slot x: the sample at tau(x), its class, and the sample where the
        # walk from tau(x) leaves tau(x)'s block (O(M) work per call).
        second = tf.gather(self._exit_samples(tau, first, xla), tau)
        # The pool is the cyclic run of slots from the end of the anchor's
        # block; k of them from a random offset (any choice made without tau
        # is exact), read as contiguous windows of the three per-slot arrays.
        end = tf.gather(self.class_starts + self.class_counts, anchor_labels)
        offset = self._ranks([tf.shape(anchor_labels)[0]], tf.maximum(pool[:, 0] - k + 1, 1))
        begin = (end + offset) % self.num_data
        tables = [tf.concat([t, t[:k]], axis=0) for t in (first_class, first, second)]  # no wrap
        if xla:  # a slice at a computed offset would be recompiled for every call
            cls, first, second = (tf.gather(t, begin[:, None] + tf.range(k)[None, :])
                                  for t in tables)
        else:  # B slices: copies, faster than a gather on CPU
            cls, first, second = tf.map_fn(
                lambda b: tuple(tf.slice(t, [b], [k]) for t in tables), begin,
                fn_output_signature=(tf.int32,) * 3, parallel_iterations=16)  # 3 x [B, k]
        # x -> tau(x), walking on to the block's exit where tau(x) is of the anchor's class.
        return tf.where(tf.equal(cls, anchor_labels[:, None]), second, first)

    def _with_replacement(self, anchor_labels, pool, k):
        """[B, k] independent uniform draws from each anchor's other-class pool."""
        rank = self._ranks([tf.shape(anchor_labels)[0], k], pool)
        end = tf.gather(self.class_starts + self.class_counts, anchor_labels)[:, None]
        return tf.gather(self.class_sorted, (end + rank) % self.num_data)

    def __call__(self, anchor_labels, k):
        """Negative indices ``[B, k]`` (int32) for anchors with ``anchor_labels`` [B]."""
        if int(k) < 1:
            raise ConfigError(f"the number of negatives k must be >= 1, got {k}")
        k = int(k)
        anchor_labels = tf.cast(anchor_labels, tf.int32)
        pool = tf.gather(self.pool_sizes, anchor_labels)[:, None]  # [B, 1]
        if k > self.max_pool:  # no pool holds k samples
            return self._with_replacement(anchor_labels, pool, k)
        negatives = self._without_replacement(anchor_labels, pool, k)
        if k > self.min_pool:  # some classes need replacement: independent uniform draws
            negatives = tf.where(k > pool, self._with_replacement(anchor_labels, pool, k),
                                 negatives)
        return negatives
