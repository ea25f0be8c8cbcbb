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
    ``attack_training_mode=True`` reproduces two batch-norm details of the
    official code ("ARD as its code runs", SPEC "ARD baseline"): the student
    makes its attack in *training* mode (batch statistics; every PGD iterate
    updates the running statistics), and the natural forward pass runs even
    at ``a = 1`` (where it only moves the running statistics). Default False:
    the attack sees the student in inference mode, as every other attack here.

    Args:
        student, teacher: the networks (teacher frozen).
        attack: the student attack (default PGD-10).
        alpha: a (1.0, official).
        temperature: T (30, official).
        kl_reduction: "official" or "batchmean".
        reweight: teacher-confidence sample weights.
        attack_training_mode: the official code's training-mode attack (above).
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
        Setting("ard_attack_training_mode", False, "ARD: as the official code runs, make the "
                "student attack in training-mode batch norm (batch statistics, running "
                "statistics updated by every PGD iterate) and run the natural forward pass "
                "even at --ard_alpha=1.", arg="attack_training_mode", kind="bool"),
    )
    REWEIGHT = False

    @classmethod
    def build_attack(cls, settings, context):
        return context.attack()

    def __init__(self, student, teacher, attack=None, alpha=1.0, temperature=30.0,
                 kl_reduction="official", reweight=False, attack_training_mode=False, **kwargs):
        super().__init__(student, teacher, ["loss", "adv_accuracy"], **kwargs)
        self.attack = attack if attack is not None else PGD(steps=10)
        self.alpha, self.temperature = alpha, temperature
        self.kl_reduction, self.reweight = kl_reduction, reweight
        self.attack_training_mode = bool(attack_training_mode)

    def _attacked_student(self, x, training=False):
        """The student as the official code's attack sees it: in training mode."""
        del training
        return self.student(x, training=True)

    def train_step(self, data):
        x, y, _ = unpack_batch(data)
        x_adv = self.attack(self._attacked_student if self.attack_training_mode else self.student,
                            x, y)
        teacher_logits = self.teacher(x, training=False)
        weight = self.teacher_confidence(teacher_logits, y) if self.reweight else None
        weights = self.student.trainable_weights
        with tf.GradientTape() as tape:
            adv_logits = self.student(x_adv, training=True)
            # The natural forward pass only feeds the CE term: skip it when a == 1
            # (unless the official code's batch-norm side effects are asked for).
            natural = self.alpha < 1 or self.attack_training_mode
            nat_logits = self.student(x, training=True) if natural else None
            loss = ard_loss(adv_logits, nat_logits, teacher_logits, y, self.alpha,
                            self.temperature, self.kl_reduction, weight)
        self.apply_update(tape, loss, weights)
        return self.report(loss=loss, adv_accuracy=accuracy(y, adv_logits))
