"""Adversarially Robust Distillation (Goldblum et al. 2020): its loss
(:func:`ard_loss`) and its trainer (:class:`ARDDistiller`, method ``"ard"``)."""

import tensorflow as tf

from gacd_tf.attacks import PGD
from gacd_tf.errors import ConfigError
from gacd_tf.losses.distillation_kl import check_alpha, distillation_kl, mean_cross_entropy
from gacd_tf.settings import Setting
from gacd_tf.methods.common import unpack_batch
from gacd_tf.methods.distiller import Distiller
from gacd_tf.methods.registry import METHODS
from gacd_tf.methods.robust_trainer import accuracy


def ard_loss(
    student_adv_logits,
    student_nat_logits,
    teacher_logits,
    labels,
    alpha=1.0,
    temperature=30.0,
    kl_reduction="official",
    sample_weight=None,
):
    """Adversarially Robust Distillation loss (Goldblum et al. 2020).

    ``L = alpha * distillation_kl(z_S(x_adv), z_T(x), T, kl_reduction, w)
    + (1 - alpha) * CE(z_S(x), y)``. The teacher sees the natural images; the
    student's adversarial examples come from PGD on the student's CE.

    The default ``kl_reduction="official"`` reproduces the official code
    (``nn.KLDivLoss()`` averages over batch *and* classes, so the KL term is
    divided by ``C``; ARD's ``T = 30`` was tuned with that scaling).
    ``kl_reduction="batchmean"`` gives the textbook KL, ``C`` times stronger at
    the same ``T``. ``sample_weight`` reweights each example's KL (the paper's
    reweighting ablation applied to ARD).

    Args:
        student_adv_logits: ``[B, C]`` student logits on adversarial inputs.
        student_nat_logits: ``[B, C]`` student logits on natural inputs; may be
            ``None`` only when ``alpha == 1`` (the CE term then vanishes).
        teacher_logits: ``[B, C]`` teacher logits on natural inputs.
        labels: ``[B]`` integer class labels.
        alpha: weight of the KL term, in ``[0, 1]`` (official default 1.0).
        temperature: ``T > 0`` (official default 30).
        kl_reduction: ``"official"`` or ``"batchmean"``.
        sample_weight: optional ``[B]`` weights of the KL term (no gradient).

    Returns:
        A scalar loss tensor.

    Example:
    >>> z = tf.zeros([2, 10])
    >>> loss = ard_loss(z, z, tf.ones([2, 10]), tf.constant([0, 1]), alpha=0.9)

    Reference:
        Goldblum et al., "Adversarially Robust Distillation", AAAI 2020
        (code: goldblum/AdversariallyRobustDistillation, main.py).
    """
    alpha = check_alpha(alpha)
    if kl_reduction not in ("official", "batchmean"):
        raise ConfigError(
            f"ARD kl_reduction must be 'official' or 'batchmean', got {kl_reduction!r}"
        )
    kl = distillation_kl(
        student_adv_logits, teacher_logits, temperature,
        reduction=kl_reduction, sample_weight=sample_weight,
    )
    if alpha == 1.0 and student_nat_logits is None:
        return kl
    if student_nat_logits is None:
        raise ConfigError(f"ARD with alpha={alpha} < 1 needs the student's natural logits")
    ce = mean_cross_entropy(tf.cast(student_nat_logits, kl.dtype), labels)
    return alpha * kl + (1.0 - alpha) * ce


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
    ``ard_attack_training_mode=True`` reproduces three details of the
    official code ("ARD as its code runs", SPEC "ARD baseline"): the student
    makes its attack in *training* mode (batch statistics; every PGD iterate
    updates the running statistics), the natural forward pass runs even at
    ``a = 1`` (where it only moves the running statistics), and the attack
    built by :func:`gacd_tf.methods.build` takes its first gradient at the
    unclipped random start ``x + U(-eps, eps)`` (main.py:69-70; PGD with
    ``clip_start=False``; by default PGD clips the start to [0, 1]). ``benchmarks/torch_parity.py`` shows this mode's
    step equal to the official one to float32 round-off. Default False: the
    attack sees the student in inference mode from a clipped start, as every
    other attack here.

    Args:
        student, teacher: the networks (teacher frozen).
        attack: the student attack (default PGD-10).
        ard_alpha: a (1.0, official).
        ard_temperature: T (30, official).
        kl_reduction: "official" or "batchmean".
        reweight: teacher-confidence sample weights.
        ard_attack_training_mode: the official code's training-mode attack (above).
        **kwargs: passed to :class:`Distiller`.

    Reference:
        Goldblum, Fowl, Feizi, Goldstein, "Adversarially Robust Distillation",
        AAAI 2020 (code: goldblum/AdversariallyRobustDistillation).
    """

    SETTINGS = (
        Setting("ard_alpha", 1.0, "ARD: weight a of the KL term.", lower=0.0, upper=1.0),
        Setting("ard_temperature", 30.0, "ARD: temperature.", positive=True),
        Setting("kl_reduction", "official", "ARD KL reduction: 'official' = mean over batch "
                "and classes (the official code, (T^2/C) KL); 'batchmean' = textbook (C times "
                "stronger).", kind="enum", choices=("official", "batchmean")),
        Setting("ard_attack_training_mode", False, "ARD: as the official code runs, make the "
                "student attack in training-mode batch norm (batch statistics, running "
                "statistics updated by every PGD iterate) from the unclipped random start, and "
                "run the natural forward pass even at --ard_alpha=1.", kind="bool"),
    )
    REWEIGHT = False

    @classmethod
    def build_attack(cls, settings, context):
        if settings.get("ard_attack_training_mode"):
            # As the official code (main.py:69-70): the first gradient at the unclipped start.
            return context.attack(clip_start=False)
        return context.attack()

    def __init__(self, student, teacher, attack=None, ard_alpha=1.0, ard_temperature=30.0,
                 kl_reduction="official", reweight=False, ard_attack_training_mode=False,
                 **kwargs):
        super().__init__(student, teacher, ["loss", "adv_accuracy"], **kwargs)
        self.attack = attack if attack is not None else PGD(steps=10)
        self.ard_alpha, self.ard_temperature = ard_alpha, ard_temperature
        self.kl_reduction, self.reweight = kl_reduction, reweight
        self.ard_attack_training_mode = bool(ard_attack_training_mode)

    def _attacked_student(self, x, training=False):
        """The student as the official code's attack sees it: in training mode."""
        del training
        return self.student(x, training=True)

    def train_step(self, data):
        x, y, _ = unpack_batch(data)
        x_adv = self.attack(self._attacked_student if self.ard_attack_training_mode else self.student,
                            x, y)
        teacher_logits = self.teacher(x, training=False)
        weight = self.teacher_confidence(teacher_logits, y) if self.reweight else None
        weights = self.student.trainable_weights
        with tf.GradientTape() as tape:
            adv_logits = self.student(x_adv, training=True)
            # The natural forward pass only feeds the CE term: skip it when a == 1
            # (unless the official code's batch-norm side effects are asked for).
            natural = self.ard_alpha < 1 or self.ard_attack_training_mode
            nat_logits = self.student(x, training=True) if natural else None
            loss = ard_loss(adv_logits, nat_logits, teacher_logits, y, self.ard_alpha,
                            self.ard_temperature, self.kl_reduction, weight)
        self.apply_update(tape, loss, weights)
        return self.report(loss=loss, adv_accuracy=accuracy(y, adv_logits))
