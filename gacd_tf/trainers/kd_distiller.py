"""Knowledge distillation (Hinton et al. 2015) on natural images."""

import tensorflow as tf

from gacd_tf.losses import kd_loss
from gacd_tf.settings import Setting
from gacd_tf.trainers.common import unpack_batch
from gacd_tf.trainers.distiller import Distiller
from gacd_tf.trainers.methods import METHODS
from gacd_tf.trainers.robust_trainer import accuracy


@METHODS.register("kd")
class KDDistiller(Distiller):
    """``L = (1 - a) CE(z_S(x), y) + a T^2 KL(softmax(z_T(x)/T) || softmax(z_S(x)/T))``.

    Args:
        student: the student network.
        teacher: the frozen teacher.
        alpha: a, the weight of the KL term (0.9, RepDistiller).
        temperature: T (4, RepDistiller).
        **kwargs: passed to :class:`Distiller` (``weight_decay``, ``eval_attack``).

    Example:
    >>> kd = KDDistiller(build_model("resnet20"), teacher)  # doctest: +SKIP
    >>> kd.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    >>> kd.fit(train_ds, epochs=1)

    Reference:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """

    SETTINGS = (
        Setting("kd_alpha", 0.9, "KD: weight a of the KL term.", arg="alpha", lower=0.0,
                upper=1.0),
        Setting("kd_temperature", 4.0, "KD: temperature.", arg="temperature", positive=True),
    )

    def __init__(self, student, teacher, alpha=0.9, temperature=4.0, **kwargs):
        super().__init__(student, teacher, ["loss", "accuracy"], **kwargs)
        self.alpha, self.temperature = alpha, temperature

    def train_step(self, data):
        x, y, _ = unpack_batch(data)
        teacher_logits = self.teacher(x, training=False)
        weights = self.student.trainable_weights
        with tf.GradientTape() as tape:
            logits = self.student(x, training=True)
            loss = kd_loss(logits, teacher_logits, y, self.alpha, self.temperature)
        self.apply_update(tape, loss, weights)
        return self.report(loss=loss, accuracy=accuracy(y, logits))
