"""Feature Scattering's attack objective: the optimal-transport distance.

Registered as ``"ot"``: ``PGD(objective="ot", ...)`` ascends the entropic OT
distance between the clean batch's representation (the attack's ``target``)
and the adversarial batch's representation.
"""

import tensorflow as tf

from gacd_tf.attacks.objectives import OBJECTIVES, Objective, as_outputs
from gacd_tf.training.distribute import all_gather
from gacd_tf.errors import ConfigError
from gacd_tf.methods.gacd.sinkhorn import _check_sinkhorn_args, sinkhorn_distance

REPRESENTATIONS = ("features", "logits")


@OBJECTIVES.register("ot")
class OptimalTransport(Objective):
    """Entropic OT distance between clean and adversarial representations.

    ``target`` is the clean batch's representation ``r(x)`` (treated as a
    constant); ``__call__`` takes the model's outputs on the adversarial
    batch, picks ``r(x_adv)`` (``"features"`` or ``"logits"``), builds the
    cosine cost ``C_ij = max(0, 1 - cos(r_i(x), r_j(x_adv)))`` and returns the
    per-row contributions ``sum_j pi_ij C_ij`` (``[B]``) of
    :func:`gacd_tf.methods.gacd.sinkhorn_distance`; PGD sums them, so it ascends
    ``D = sum(pi * C)`` with the Sinkhorn plan held fixed. The per-row split
    attributes each term to its clean row ``i``; only the sum is meaningful.

    Feature Scattering uses the logits and one step of size eps; GACD's
    default is the penultimate features (the model must then return
    ``(features, logits)`` or a dict with ``"features"``).

    Args:
        representation: ``"features"`` (default) or ``"logits"``.
        epsilon: Sinkhorn entropic regularisation (default 0.01).
        max_iters: maximum Sinkhorn iterations (default 100).
        threshold: Sinkhorn stop tolerance on ``sum |u - u_prev|`` (0.1).

    Example:
    >>> objective = OptimalTransport(representation="features")
    >>> clean = objective.target_from(model(x, training=False))  # doctest: +SKIP
    >>> attack = PGD(eps=8 / 255, step_size=8 / 255, steps=1, objective=objective)
    >>> x_adv = attack(model, x, clean)  # doctest: +SKIP

    Reference:
        Zhang & Wang, "Defense Against Adversarial Attacks Using Feature
        Scattering-based Adversarial Training", NeurIPS 2019 (code:
        Haichao-Zhang/FeatureScatter, attack_methods.py and ot.py).
    """

    def __init__(self, representation="features", epsilon=0.01, max_iters=100, threshold=0.1):
        if representation not in REPRESENTATIONS:
            raise ConfigError(
                f"OT objective representation must be one of {', '.join(REPRESENTATIONS)}, "
                f"got {representation!r}"
            )
        self.representation = representation
        self.epsilon, self.max_iters, self.threshold = _check_sinkhorn_args(
            epsilon, max_iters, threshold
        )

    def representation_of(self, outputs):
        """The chosen representation from a model's outputs."""
        outputs = as_outputs(outputs)
        if self.representation not in outputs:
            raise ConfigError(
                f"the OT attack objective needs the model's {self.representation!r}, but the "
                "model returns only logits; give the attack a model returning (features, "
                "logits) (see gacd_tf.models.features_and_logits) or use "
                "representation='logits'"
            )
        return outputs[self.representation]

    def target_from(self, outputs):
        """The attack ``target``: the clean batch's representation, no gradient."""
        return tf.stop_gradient(self.representation_of(outputs))

    def __call__(self, outputs, target):
        # The OT distance couples the whole batch: under tf.distribute it is
        # computed on the gathered global batch (all_gather is differentiable),
        # so each replica ascends the same objective as a single device.
        adversarial = all_gather(self.representation_of(outputs))
        clean = tf.stop_gradient(tf.cast(all_gather(target), adversarial.dtype))
        return sinkhorn_distance(
            clean, adversarial, epsilon=self.epsilon, max_iters=self.max_iters,
            threshold=self.threshold, reduction="none",
        )

    def get_config(self):
        return {
            "representation": self.representation,
            "epsilon": self.epsilon,
            "max_iters": self.max_iters,
            "threshold": self.threshold,
        }
