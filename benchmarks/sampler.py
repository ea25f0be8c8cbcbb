"""Milliseconds per call of GACD's negative sampler: the former [C, M]-table
sampler (copied below as ``TableSampler``) vs :class:`OtherClassSampler`.

One call = one training step's draw: ``k`` other-class negatives for each of
``B`` anchors. Table columns: classes C, training-set size M, old ms, new ms,
old / new. The old sampler builds and scatters a [C, M] table each call
(~40 C M bytes of intermediates); it is skipped, with the reason printed,
where that exceeds --old_max_gib or where one call would exceed
--old_max_seconds (estimated from the first configuration).

Example:
    python benchmarks/sampler.py --batch_size=128 --nce_k=16384
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from gacd_tf.methods.gacd.negative_sampling import OtherClassSampler  # noqa: E402

flags.DEFINE_list("num_classes", ["10", "100", "1000"], "Values of C.")
flags.DEFINE_list("num_data", ["50000", "1280000"], "Values of M.")
flags.DEFINE_integer("batch_size", 128, "B: anchors per call.")
flags.DEFINE_integer("nce_k", 16384, "k: negatives per anchor.")
flags.DEFINE_integer("warmup", 1, "Untimed calls (tracing).")
flags.DEFINE_integer("repeats", 3, "Timed calls (median).")
flags.DEFINE_float("old_max_gib", 2.5, "Skip the old sampler above this estimated memory.")
flags.DEFINE_float("old_max_seconds", 20.0,
                   "Skip the old sampler above this estimated time per call.")
flags.DEFINE_bool("jit_compile", False, "Compile both samplers with XLA.")
FLAGS = flags.FLAGS


class TableSampler:
    """The former sampler (gacd_tf/data/negative_sampling.py before issue 14), for comparison.

    Each call draws one random permutation of the M samples, arranges it as a
    [C, M] table whose row c lists the permuted samples of classes != c, and
    gives anchor i the k consecutive (cyclic) entries of row y_i from a
    random offset. O(M log M + C M + B k) time, O(C M) memory per call.
    """

    def __init__(self, labels, num_classes=None, seed=None):
        labels = np.asarray(labels)
        num_classes = int(num_classes or labels.max() + 1)
        counts = np.bincount(labels, minlength=num_classes)
        pool = len(labels) - counts
        self.num_data = len(labels)
        self.num_classes = num_classes
        self.labels = tf.constant(labels.astype(np.int32))
        self.pool_sizes = tf.constant(pool.astype(np.int32))
        self.min_pool = int(pool[counts > 0].min())
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _table(self):
        keys = keras.random.uniform([self.num_data], seed=self.seed_generator)
        perm = tf.cast(tf.argsort(keys), tf.int32)
        other = tf.not_equal(tf.gather(self.labels, perm)[None, :],
                             tf.range(self.num_classes)[:, None])  # [C, M]
        other_slot = tf.cumsum(tf.cast(other, tf.int32), axis=1) - 1
        same_slot = self.pool_sizes[:, None] + tf.cumsum(1 - tf.cast(other, tf.int32), axis=1) - 1
        slot = tf.where(other, other_slot, same_slot)
        rows = tf.broadcast_to(tf.range(self.num_classes)[:, None], tf.shape(slot))
        values = tf.broadcast_to(perm[None, :], tf.shape(slot))
        return tf.scatter_nd(tf.stack([rows, slot], axis=-1), values,
                             [self.num_classes, self.num_data])

    def __call__(self, anchor_labels, k):
        anchor_labels = tf.cast(anchor_labels, tf.int32)
        pool = tf.gather(self.pool_sizes, anchor_labels)[:, None]
        batch = tf.shape(anchor_labels)[0]
        offsets = keras.random.randint([batch, 1], 0, 2**30, seed=self.seed_generator) % pool
        columns = (offsets + tf.range(k)[None, :]) % pool
        if k > self.min_pool:
            draws = keras.random.randint([batch, k], 0, 2**30, seed=self.seed_generator) % pool
            columns = tf.where(k > pool, draws, columns)
        rows = tf.broadcast_to(anchor_labels[:, None], tf.shape(columns))
        return tf.gather_nd(self._table(), tf.stack([rows, columns], axis=-1))


def median_ms(fn, anchors):
    for _ in range(FLAGS.warmup):
        fn(anchors).numpy()
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        fn(anchors).numpy()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    b, k = FLAGS.batch_size, FLAGS.nce_k
    print(f"B={b}, k={k}, jit_compile={FLAGS.jit_compile}, "
          f"{tf.config.list_logical_devices()[-1].device_type}; median of {FLAGS.repeats} calls")
    print(f"{'C':>5} {'M':>9} {'old ms':>9} {'new ms':>9} {'old/new':>8}  note")
    old_ns_per_cm = None  # old sampler's time per table entry, from its first run
    for m in map(int, FLAGS.num_data):
        for c in map(int, FLAGS.num_classes):
            labels = rng.permutation(np.arange(m) % c).astype(np.int32)  # balanced classes
            anchors = tf.constant(rng.integers(0, c, b).astype(np.int32))
            new = OtherClassSampler(labels, c, seed=0)
            new_ms = median_ms(tf.function(lambda y, s=new: s(y, k),
                                           jit_compile=FLAGS.jit_compile), anchors)
            gib = 40 * c * m / 2**30
            guess = None if old_ns_per_cm is None else old_ns_per_cm * c * m / 1e9
            if gib > FLAGS.old_max_gib:
                old_ms, note = None, f"old skipped: its [C, M] table needs ~{gib:.1f} GiB"
            elif guess is not None and guess > FLAGS.old_max_seconds:
                old_ms, note = None, f"old skipped: ~{guess:.0f} s per call estimated"
            else:
                old = TableSampler(labels, c, seed=0)
                old_ms = median_ms(tf.function(lambda y, s=old: s(y, k),
                                               jit_compile=FLAGS.jit_compile), anchors)
                old_ns_per_cm = old_ns_per_cm or old_ms * 1e6 / (c * m)
                note = ""
            old_text = f"{old_ms:9.1f}" if old_ms is not None else f"{'-':>9}"
            ratio = f"{old_ms / new_ms:8.1f}" if old_ms is not None else f"{'-':>8}"
            print(f"{c:>5} {m:>9} {old_text} {new_ms:9.1f} {ratio}  {note}", flush=True)


if __name__ == "__main__":
    app.run(main)
