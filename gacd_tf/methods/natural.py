"""The teacher-free control: a student trained by cross-entropy on natural images."""

import tensorflow as tf

from gacd_tf.methods.common import per_example_ce, unpack_batch
from gacd_tf.methods.registry import METHODS, MethodDeclaration
from gacd_tf.methods.robust_trainer import RobustTrainer, accuracy


@METHODS.register("natural")
class NaturalTrainer(MethodDeclaration, RobustTrainer):
    """``L = CE(z_S(x), y)`` on natural images: no teacher, no attack.

    The control row of the distillation tables (SPEC "Adversarial
    fine-tuning"): a student trained plainly, then given the same AFT budget
    as the distilled students ("natural+AFT"), shows what distillation adds
    beyond AFT. Validation still reports natural and PGD accuracy
    (``eval_attack``).

    Args:
        student: the network, [0,1] images -> logits.
        weight_decay: coupled L2 coefficient (5e-4).
        eval_attack: attack of ``test_step`` (default PGD-10).
        **kwargs: passed to ``keras.Model``.

    Example:
    >>> trainer = build("natural", build_model("resnet20"))  # doctest: +SKIP
    >>> trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    >>> trainer.fit(train_ds, epochs=1)

    Reference:
        Goldblum et al., "Adversarially Robust Distillation", AAAI 2020 (the
        naturally trained baselines of its tables).
    """

    NEEDS_TEACHER = False

    def __init__(self, student, weight_decay=5e-4, eval_attack=None, **kwargs):
        super().__init__(student, ["loss", "accuracy"], weight_decay=weight_decay,
                         eval_attack=eval_attack, **kwargs)

    @property
    def student(self):
        return self.model

    def train_step(self, data):
        x, y, _ = unpack_batch(data)
        weights = self.model.trainable_weights
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            loss = tf.reduce_mean(per_example_ce(y, logits))
        self.apply_update(tape, loss, weights)
        return self.report(loss=loss, accuracy=accuracy(y, logits))
