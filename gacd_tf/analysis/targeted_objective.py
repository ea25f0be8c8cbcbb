"""An attack objective that pulls examples towards a chosen class."""

import tensorflow as tf

from gacd_tf.attacks import Objective, as_outputs


class TargetedCrossEntropy(Objective):
    """Minus the cross-entropy towards a target class, per example.

    PGD *ascends* its objective, so ascending ``-CE(logits, target)`` makes
    the model classify the adversarial example as ``target`` (a targeted
    attack, e.g. trucks crafted to look like birds in the paper's Figure 5).

    Example:
    >>> attack = PGD(steps=20, objective=TargetedCrossEntropy())  # doctest: +SKIP
    >>> x_adv = attack(model, trucks, tf.fill([len(trucks)], 2))  # doctest: +SKIP

    Reference:
        Kurakin et al., "Adversarial Machine Learning at Scale", ICLR 2017
        (targeted iterative attacks).
    """

    def __call__(self, outputs, target):
        logits = as_outputs(outputs)["logits"]
        labels = tf.cast(target, tf.int32)
        return -tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
