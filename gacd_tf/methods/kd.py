"""Knowledge distillation (Hinton et al. 2015) on natural images: its loss
(:func:`kd_loss`) and its trainer (:class:`KDDistiller`, method ``"kd"``)."""

import tensorflow as tf

from gacd_tf.losses.distillation_kl import (as_float32, check_alpha, distillation_kl,
                                            mean_cross_entropy)
from gacd_tf.settings import Setting
from gacd_tf.methods.common import unpack_batch
from gacd_tf.methods.distiller import Distiller
from gacd_tf.methods.registry import METHODS
from gacd_tf.methods.robust_trainer import accuracy


def kd_loss(student_logits, teacher_logits, labels, alpha=0.9, temperature=4.0):
    """Hinton knowledge distillation: ``(1 - a) CE + a T^2 KL``.

    ``L = (1 - alpha) * CE(z_S, y) + alpha * distillation_kl(z_S, z_T, T)``
    with the textbook ``"batchmean"`` KL (sum over classes, mean over batch)
    and the cross-entropy averaged over the batch. Defaults are RepDistiller's
    (``alpha = 0.9``, ``T = 4``).

    Args:
        student_logits: ``[B, C]`` student logits.
        teacher_logits: ``[B, C]`` teacher logits (no gradient).
        labels: ``[B]`` integer class labels.
        alpha: weight of the KL term, in ``[0, 1]``.
        temperature: softmax temperature ``T > 0``.

    Returns:
        A scalar loss tensor.

    Example:
    >>> loss = kd_loss(tf.zeros([2, 10]), tf.ones([2, 10]), tf.constant([1, 3]))

    Reference:
        Hinton et al., "Distilling the Knowledge in a Neural Network", 2015;
        Tian et al., "Contrastive Representation Distillation" (RepDistiller),
        ICLR 2020.
    """
    alpha = check_alpha(alpha)
    student_logits = as_float32(student_logits)
    kl = distillation_kl(student_logits, teacher_logits, temperature, reduction="batchmean")
    return (1.0 - alpha) * mean_cross_entropy(student_logits, labels) + alpha * kl


@METHODS.register("kd")
class KDDistiller(Distiller):
    """``L = (1 - a) CE(z_S(x), y) + a T^2 KL(softmax(z_T(x)/T) || softmax(z_S(x)/T))``.

    Args:
        student: the student network.
        teacher: the frozen teacher.
        kd_alpha: a, the weight of the KL term (0.9, RepDistiller).
        kd_temperature: T (4, RepDistiller).
        **kwargs: passed to :class:`Distiller` (``weight_decay``, ``eval_attack``).

    Example:
    >>> kd = KDDistiller(build_model("resnet20"), teacher)  # doctest: +SKIP
    >>> kd.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    >>> kd.fit(train_ds, epochs=1)

    Reference:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """

    SETTINGS = (
        Setting("kd_alpha", 0.9, "KD: weight a of the KL term.", lower=0.0, upper=1.0),
        Setting("kd_temperature", 4.0, "KD: temperature.", positive=True),
    )

    def __init__(self, student, teacher, kd_alpha=0.9, kd_temperature=4.0, **kwargs):
        super().__init__(student, teacher, ["loss", "accuracy"], **kwargs)
        self.kd_alpha, self.kd_temperature = kd_alpha, kd_temperature

    def train_step(self, data):
        x, y, _ = unpack_batch(data)
        teacher_logits = self.teacher(x, training=False)
        weights = self.student.trainable_weights
        with tf.GradientTape() as tape:
            logits = self.student(x, training=True)
            loss = kd_loss(logits, teacher_logits, y, self.kd_alpha, self.kd_temperature)
        self.apply_update(tape, loss, weights)
        return self.report(loss=loss, accuracy=accuracy(y, logits))
