"""Random draws keyed per example: the same numbers for an example whatever batch it is in.

An evaluation attack draws its random numbers (a random start, Square's
squares) row by row, each row from a key that is a function of the attack's
seed, the draw's stream (attack and purpose, e.g. ``"apgd-ce/start"``), the
example's index in the evaluated set, and the run (restart or target) and
iteration where the draw is per run or per iteration. So an example's
result does not depend on the batch size, on which other rows are in its
batch or still running, on the device count, on sharding, or on where a run
was resumed.

The key of a row is built by folding each part into a 64-bit state with the
SplitMix64 finaliser (a bijective mixer): ``key <- mix(key ^ mix(part + c))``
with a different odd constant ``c`` per position. The ``n`` numbers of a row
are the first ``n`` outputs of the SplitMix64 generator seeded with its key
(``mix(key + (j + 1) * 0x9E3779B97F4A7C15)``, ``j = 0..n-1``), whose top 24
bits give a float32 uniform on [0, 1) exactly. Everything is int64 tensor
arithmetic (wrapping multiplication, logical shifts by masking), so it runs
on any device, inside ``tf.function`` and ``tf.while_loop``, and equals the
NumPy ``uint64`` re-derivation bit for bit.

Example:
>>> keys = example_keys(0, "pgd/start", tf.range(4), 0)
>>> u = uniform(keys, [32, 32, 3])  # [4, 32, 32, 3], row i depends on (0, "pgd/start", i, 0) only

Reference:
    Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
    OOPSLA 2014 (SplitMix64); Salmon et al., "Parallel random numbers: as easy
    as 1, 2, 3", SC 2011 (counter-based generation).
"""

import inspect
import zlib

import numpy as np
import tensorflow as tf

_MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB


def _signed(value):
    """A uint64 constant as the int64 with the same bits."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(z, bits):
    """Logical right shift of int64 ``z`` (an arithmetic shift, then the sign bits masked off)."""
    return tf.bitwise.bitwise_and(tf.bitwise.right_shift(z, tf.constant(bits, tf.int64)),
                                  tf.constant((1 << (64 - bits)) - 1, tf.int64))


def mix(z):
    """The SplitMix64 finaliser on int64 bits (a bijection of 64-bit words).

    Args:
        z: int64 tensor.

    Returns:
        int64 tensor of the same shape.
    """
    z = tf.convert_to_tensor(z, tf.int64)
    z = tf.bitwise.bitwise_xor(z, _shift_right(z, 30)) * tf.constant(_signed(_MUL1), tf.int64)
    z = tf.bitwise.bitwise_xor(z, _shift_right(z, 27)) * tf.constant(_signed(_MUL2), tf.int64)
    return tf.bitwise.bitwise_xor(z, _shift_right(z, 31))


def stream_id(name):
    """A stable 32-bit number for a stream name (CRC-32 of its UTF-8 bytes)."""
    return zlib.crc32(str(name).encode())


def fold(key, part, position):
    """``key`` with one more ``part`` folded in (both int64, broadcast); ``position``
    (a Python int) says which part of the key this is."""
    salt = tf.constant(_signed(GOLDEN * (2 * position + 1)), tf.int64)
    return mix(tf.bitwise.bitwise_xor(key, mix(tf.cast(part, tf.int64) + salt)))


def example_keys(seed, stream, indices, *counters):
    """One int64 key per example: a function of (seed, stream, index, counters...).

    Args:
        seed: int, the attack's seed (None counts as 0).
        stream: str naming the attack and the draw (``"square/position"``).
        indices: int ``[B]``, each example's index in the evaluated set.
        *counters: scalars (ints or int tensors): the run (restart or
            target) and, for a draw per iteration, the iteration.

    Returns:
        int64 ``[B]``.
    """
    key = tf.constant(_signed(int(seed or 0)), tf.int64)
    key = fold(key, tf.constant(stream_id(stream), tf.int64), 0)
    key = fold(key, tf.cast(indices, tf.int64), 1)
    for position, counter in enumerate(counters, start=2):
        key = fold(key, counter, position)
    return key


def random_bits(keys, n):
    """``[B, n]`` int64: the first ``n`` SplitMix64 outputs of each row's key."""
    counter = tf.range(1, n + 1, dtype=tf.int64) * tf.constant(_signed(GOLDEN), tf.int64)
    return mix(tf.cast(keys, tf.int64)[:, None] + counter[None, :])


def uniform(keys, shape):
    """Float32 uniforms on [0, 1), ``[B, *shape]``, row ``i`` drawn from ``keys[i]`` only.

    Args:
        keys: int64 ``[B]`` from :func:`example_keys`.
        shape: the per-example shape (a list of Python ints or a 1-D int tensor).

    Returns:
        float32 ``[B, *shape]``, multiples of 2^-24.
    """
    shape = tf.cast(tf.convert_to_tensor(shape), tf.int32)
    n = tf.reduce_prod(shape)
    top = _shift_right(random_bits(keys, n), 40)  # 24 bits
    values = tf.cast(top, tf.float32) * (2.0 ** -24)
    return tf.reshape(values, tf.concat([tf.shape(keys)[:1], shape], 0))


def normal(keys, shape):
    """Standard normals ``[B, *shape]`` from the row's uniforms (Box-Muller: two uniforms
    per normal, the cosine branch)."""
    shape = tf.cast(tf.convert_to_tensor(shape), tf.int32)
    n = tf.reduce_prod(shape)
    u = uniform(keys, [2 * n])
    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - u[:, :n]))  # 1 - u in (0, 1]
    values = radius * tf.cos(2.0 * np.pi * u[:, n:])
    return tf.reshape(values, tf.concat([tf.shape(keys)[:1], shape], 0))


def example_indices(x, indices=None):
    """Each row's index in the evaluated set: ``indices`` (int ``[B]``) when given,
    else the positions ``0..B-1`` of ``x``'s rows in this call."""
    if indices is None:
        return tf.range(tf.shape(x)[0], dtype=tf.int64)
    return tf.cast(tf.reshape(indices, [-1]), tf.int64)


def takes_indices(attack):
    """Whether ``attack.perturb`` takes the examples' ``indices`` (a custom attack may
    not, and a plain callable attack has no ``perturb``)."""
    perturb = getattr(attack, "perturb", None)
    if not callable(perturb):
        return False
    try:
        return "indices" in inspect.signature(perturb).parameters
    except (TypeError, ValueError):
        return False
