"""Attack objectives: what an attack maximises.

An objective maps the model's outputs on the adversarial batch, plus the
attack's ``target`` (labels, a teacher's probabilities, clean features, ...),
to a per-example loss ``[B]`` that the attack ascends. Attacks sum it over the
batch, so each example's gradient does not depend on the batch size.

Model outputs are normalised by :func:`as_outputs` into a dict with ``logits``
and, when the model provides them, ``features``.

Adding an objective is one new class plus one ``@OBJECTIVES.register`` line.
"""

import tensorflow as tf

from gacd_tf.attacks.registry import OBJECTIVES
from gacd_tf.errors import ConfigError


def as_outputs(outputs):
    """Normalises a model's outputs to ``{"logits": ..., ["features": ...]}``.

    Accepts a logits tensor, a ``(features, logits)`` pair (the output of
    :func:`gacd_tf.models.features_and_logits`) or a dict with those keys.
    """
    if isinstance(outputs, dict):
        if "logits" not in outputs:
            raise ConfigError(f"model outputs {sorted(outputs)} have no 'logits' entry")
        return outputs
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 2:
            raise ConfigError(
                f"a model with {len(outputs)} outputs was given to an attack; expected "
                "logits or (features, logits)"
            )
        return {"features": outputs[0], "logits": outputs[1]}
    return {"logits": outputs}


class Objective:
    """Base class: ``objective(outputs, target) -> per-example loss [B]``."""

    def __call__(self, outputs, target):
        raise NotImplementedError

    def get_config(self):
        return {}


@OBJECTIVES.register("ce")
class CrossEntropy(Objective):
    """Cross-entropy of the logits against integer labels (Madry PGD).

    Example:
    >>> objective = CrossEntropy()
    >>> loss = objective({"logits": tf.zeros([2, 10])}, tf.constant([1, 2]))
    """

    def __call__(self, outputs, target):
        logits = as_outputs(outputs)["logits"]
        labels = tf.cast(target, tf.int32)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


@OBJECTIVES.register("kl")
class KLDivergence(Objective):
    """KL(target || softmax(logits / T)) summed over classes, per example.

    ``target`` holds probabilities (e.g. a teacher's softmax, or the model's
    own clean softmax for TRADES).

    Args:
        temperature: divides the adversarial logits before the softmax.
    """

    def __init__(self, temperature=1.0):
        if temperature <= 0:
            raise ConfigError(f"KL objective temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def __call__(self, outputs, target):
        logits = as_outputs(outputs)["logits"]
        log_q = tf.nn.log_softmax(logits / self.temperature, axis=-1)
        p = tf.cast(target, log_q.dtype)
        return tf.reduce_sum(tf.math.xlogy(p, p) - p * log_q, axis=-1)

    def get_config(self):
        return {"temperature": self.temperature}


def get_objective(objective):
    """An :class:`Objective` from a name or an instance."""
    if isinstance(objective, Objective):
        return objective
    if callable(objective) and not isinstance(objective, str):
        return objective
    return OBJECTIVES.get(objective)()
