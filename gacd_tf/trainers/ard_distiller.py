"""Adversarially Robust Distillation (Goldblum et al. 2020)."""

import tensorflow as tf

from gacd_tf.attacks import PGD
from gacd_tf.losses import ard_loss
from gacd_tf.settings import Setting
from gacd_tf.trainers.common import unpack_batch
from gacd_tf.trainers.distiller import Distiller
from gacd_tf.trainers.methods import METHODS
from gacd_tf.trainers.robust_trainer import accuracy


@METHODS.register("ard")
class ARDDistiller(Distiller):
    """``L = a T^2 KL(z_T(x) || z_S(x_adv)) + (1 - a) CE(z_S(x), y)``.

    ``x_adv`` is PGD on the *student's* cross-entropy (PGD-10, eps 8/255, step
    2/255, random start); the teacher sees natural ``x``.

    ``kl_reduction="official"`` (default) reproduces the official code's
    ``nn.KLDivLoss()`` mean over batch *and* classes, i.e. ``(T^2 / C) KL``,
    which its T=30 and lr were tuned with; ``"batchmean"`` is the textbook KL
    (sum over classes, mean over batch), C times stronger.
    ``reweight=True`` multiplies each sample's KL by the teacher's probability
    of the true class (the paper's reweighted-ARD ablation).

    Args:
        student, teacher: the networks (teacher frozen).
        attack: the student attack (default PGD-10).
        alpha: a (1.0, official).
        temperature: T (30, official).
        kl_reduction: "official" or "batchmean".
        reweight: teacher-confidence sample weights.
        **kwargs: passed to :class:`Distiller`.

    Reference:
        Goldblum, Fowl, Feizi, Goldstein, "Adversarially Robust Distillation",
        AAAI 2020 (code: goldblum/AdversariallyRobustDistillation).
    """

    SETTINGS = (
        Setting("ard_alpha", 1.0, "ARD: weight a of the KL term.", arg="alpha", lower=0.0,
                upper=1.0),
        Setting("ard_temperature", 30.0, "ARD: temperature.", arg="temperature",
                positive=True),
        Setting("kl_reduction", "official", "ARD KL reduction: 'official' = mean over batch "
                "and classes (the official code, (T^2/C) KL); 'batchmean' = textbook (C times "
                "stronger).", arg="kl_reduction", kind="enum", choices=("official", "batchmean")),
    )
    REWEIGHT = False

    @classmethod
    def build_attack(cls, settings, context):
        return context.attack()

    def __init__(self, student, teacher, attack=None, alpha=1.0, temperature=30.0,
                 kl_reduction="official", reweight=False, **kwargs):
        super().__init__(student, teacher, ["loss", "adv_accuracy"], **kwargs)
        self.attack = attack if attack is not None else PGD(steps=10)
        self.alpha, self.temperature = alpha, temperature
        self.kl_reduction, self.reweight = kl_reduction, reweight

    def train_step(self, data):
        x, y, _ = unpack_batch(data)
        x_adv = self.attack(self.student, x, y)
        teacher_logits = self.teacher(x, training=False)
        weight = self.teacher_confidence(teacher_logits, y) if self.reweight else None
        weights = self.student.trainable_weights
        with tf.GradientTape() as tape:
            adv_logits = self.student(x_adv, training=True)
            # The natural forward pass only feeds the CE term: skip it when a == 1.
            nat_logits = self.student(x, training=True) if self.alpha < 1 else None
            loss = ard_loss(adv_logits, nat_logits, teacher_logits, y, self.alpha,
                            self.temperature, self.kl_reduction, weight)
        self.apply_update(tape, loss, weights)
        return self.report(loss=loss, adv_accuracy=accuracy(y, adv_logits))
