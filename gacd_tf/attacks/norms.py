"""Threat-model geometry: the l_inf and l_2 balls.

A norm knows three things, each per example: a random point in the ball
(random start), the steepest-ascent direction for a gradient, and the
projection of a perturbation back onto the ball.
"""

import keras
import tensorflow as tf

from gacd_tf.attacks.registry import NORMS

_TINY = 1e-12


def _per_example_l2(t):
    axes = list(range(1, t.shape.rank))
    return tf.sqrt(tf.reduce_sum(tf.square(t), axis=axes, keepdims=True))


@NORMS.register("linf")
class LinfNorm:
    """l_inf ball: sign steps, coordinate-wise clipping."""

    name = "linf"

    def random_perturbation(self, x, eps, seed):
        return keras.random.uniform(tf.shape(x), minval=-eps, maxval=eps, seed=seed)

    def ascent_direction(self, grad):
        return tf.sign(grad)

    def project(self, delta, eps):
        return tf.clip_by_value(delta, -eps, eps)


@NORMS.register("l2")
class L2Norm:
    """l_2 ball: normalised-gradient steps, radial projection."""

    name = "l2"

    def random_perturbation(self, x, eps, seed):
        # A uniformly random direction with a U(0, eps) radius.
        direction = keras.random.normal(tf.shape(x), seed=seed)
        direction = direction / (_per_example_l2(direction) + _TINY)
        radius_shape = tf.concat([tf.shape(x)[:1], tf.ones([x.shape.rank - 1], tf.int32)], 0)
        radius = keras.random.uniform(radius_shape, seed=seed)
        return direction * radius * eps

    def ascent_direction(self, grad):
        return grad / (_per_example_l2(grad) + _TINY)

    def project(self, delta, eps):
        norm = _per_example_l2(delta)
        return delta * tf.minimum(1.0, eps / (norm + _TINY))


def get_norm(norm):
    return norm if not isinstance(norm, str) else NORMS.get(norm)()
