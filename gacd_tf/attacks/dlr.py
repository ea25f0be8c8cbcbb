"""The DLR (Difference of Logits Ratio) losses of AutoAttack, untargeted and targeted.

Both are invariant to shifting and to positive rescaling of the logits, so an
attack on them is not fooled by a model whose logits are merely scaled up
(one way gradient masking shows). With ``z`` sorted descending as
``z_pi1 >= z_pi2 >= ...``:

- untargeted: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)``;
- targeted on class ``t``: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``.

The functions take logits; the :class:`~gacd_tf.attacks.objectives.Objective`
wrappers ("dlr" and "dlr-targeted" in ``OBJECTIVES``) take any model outputs
(see ``as_outputs``) so the PGD engine can ascend them too.

Reference: Croce and Hein, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", ICML 2020, section 4;
fra31/auto-attack, autoattack/autopgd_base.py (``dlr_loss``,
``dlr_loss_targeted``).
"""

import tensorflow as tf

from gacd_tf.attacks.objectives import OBJECTIVES, Objective, as_outputs
from gacd_tf.errors import ModelError

_TINY = 1e-12


def _check_classes(logits, needed, name):
    classes = logits.shape[-1]
    if classes is not None and classes < needed:
        raise ModelError(f"the {name} loss needs logits of at least {needed} classes; the model "
                         f"gives {classes}; use cross-entropy for a model with so few classes")


def dlr_loss(logits, labels):
    """Per-example untargeted DLR loss ``[B]`` (higher = closer to misclassified).

    Args:
        logits: ``[B, C]`` logits, ``C >= 3``.
        labels: ``[B]`` integer true labels.

    Example:
    >>> dlr_loss(tf.constant([[3.0, 1.0, 0.0]]), tf.constant([0]))  # -(3 - 1) / (3 - 0)
    """
    logits = tf.cast(logits, tf.float32)
    _check_classes(logits, 3, "DLR")
    labels = tf.cast(labels, tf.int32)
    top3 = tf.math.top_k(logits, k=3).values
    true = tf.gather(logits, labels, batch_dims=1)
    is_true = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
    other = tf.reduce_max(tf.where(is_true, -float("inf"), logits), axis=-1)
    return -(true - other) / (top3[:, 0] - top3[:, 2] + _TINY)


def targeted_dlr_loss(logits, labels, target_classes):
    """Per-example targeted DLR loss ``[B]`` towards ``target_classes``.

    Args:
        logits: ``[B, C]`` logits, ``C >= 4``.
        labels: ``[B]`` integer true labels.
        target_classes: ``[B]`` integer target classes.

    Example:
    >>> targeted_dlr_loss(tf.constant([[3.0, 2.0, 1.0, 0.0]]), tf.constant([0]), tf.constant([1]))
    """
    logits = tf.cast(logits, tf.float32)
    _check_classes(logits, 4, "targeted DLR")
    top4 = tf.math.top_k(logits, k=4).values
    true = tf.gather(logits, tf.cast(labels, tf.int32), batch_dims=1)
    target = tf.gather(logits, tf.cast(target_classes, tf.int32), batch_dims=1)
    return -(true - target) / (top4[:, 0] - 0.5 * (top4[:, 2] + top4[:, 3]) + _TINY)


@OBJECTIVES.register("dlr")
class DLR(Objective):
    """Untargeted DLR loss (:func:`dlr_loss`) as an attack objective; target = labels.

    Example:
    >>> loss = DLR()({"logits": tf.random.normal([2, 10])}, tf.constant([1, 2]))
    """

    def __call__(self, outputs, target):
        return dlr_loss(as_outputs(outputs)["logits"], target)


@OBJECTIVES.register("dlr-targeted")
class TargetedDLR(Objective):
    """Targeted DLR loss (:func:`targeted_dlr_loss`); target = ``(labels, target_classes)``.

    Example:
    >>> loss = TargetedDLR()(tf.random.normal([2, 10]), (tf.constant([1, 2]), tf.constant([3, 4])))
    """

    def __call__(self, outputs, target):
        labels, target_classes = target
        return targeted_dlr_loss(as_outputs(outputs)["logits"], labels, target_classes)
