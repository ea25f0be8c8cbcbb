"""AdaAD: adaptive adversarial distillation (Huang et al., CVPR 2023).

Everything AdaAD is lives here: its loss (:func:`adaad_loss`), its inner
objective (:class:`AdaADObjective`, which needs the teacher inside the
attack), its inner attack (:class:`AdaADAttack`) and its trainer
(:class:`AdaADDistiller`, registered as method ``"adaad"``).
"""

import tensorflow as tf

from gacd_tf.attacks import GaussianStartPGD, Objective, as_outputs
from gacd_tf.errors import ConfigError
from gacd_tf.losses import distillation_kl
from gacd_tf.losses.distillation_kl import as_float32
from gacd_tf.settings import Setting
from gacd_tf.methods.common import unpack_batch
from gacd_tf.methods.distiller import Distiller
from gacd_tf.methods.registry import METHODS
from gacd_tf.methods.robust_trainer import accuracy

ADAAD_KL_REDUCTIONS = ("official", "batchmean", "mean")


def _kl_scale(kl_reduction, num_classes):
    """The factor on the batchmean KL: "mean" divides by C; "official" is "mean" on 10 classes."""
    if kl_reduction == "mean" or (kl_reduction == "official" and num_classes == 10):
        return 1.0 / num_classes
    return 1.0


def adaad_loss(student_adv_logits, student_nat_logits, teacher_adv_logits, teacher_nat_logits,
               alpha=1.0, kl_reduction="official", sample_weight=None):
    """``alpha KL(T(x_adv) || S(x_adv)) + (1 - alpha) KL(T(x) || S(x))``, no temperature.

    Each KL is summed over classes and averaged over the examples given
    (under ``tf.distribute``: this replica's), the teacher's probabilities
    being constants; then scaled by ``kl_reduction``:

    * ``"batchmean"``: as is (the paper's KL; the official CIFAR-100 branch).
    * ``"mean"``: divided by the class count C (PyTorch ``nn.KLDivLoss()``
      averaging over batch *and* classes; the official CIFAR-10 branch).
    * ``"official"``: what the official code does for the data: ``"mean"``
      with 10 classes (its CIFAR-10 branch), ``"batchmean"`` otherwise (its
      CIFAR-100 branch).

    The natural term is left out (not computed) when ``alpha == 1``.

    Args:
        student_adv_logits, student_nat_logits: ``[B, C]`` student logits on
            ``x_adv`` and on natural ``x`` (the latter may be None at alpha 1).
        teacher_adv_logits, teacher_nat_logits: the teacher's on the same.
        alpha: weight of the adversarial term (1.0, official).
        kl_reduction: "official", "batchmean" or "mean".
        sample_weight: optional ``[B]`` weights of each example's KL terms.

    Returns:
        A float32 scalar.

    Example:
    >>> loss = adaad_loss(tf.zeros([2, 10]), None, tf.ones([2, 10]), None)

    Reference:
        Huang, Chen, Wang, Lu, Cheng, Wang, "Boosting Accuracy and Robustness of
        Student Models via Adaptive Adversarial Distillation", CVPR 2023 (code:
        boyellow/AdaAD, main.py).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"AdaAD alpha must be in [0, 1], got {alpha}")
    if kl_reduction not in ADAAD_KL_REDUCTIONS:
        raise ConfigError(f"AdaAD kl_reduction must be one of {', '.join(ADAAD_KL_REDUCTIONS)}, "
                          f"got {kl_reduction!r}")

    def kl(student_logits, teacher_logits):
        return tf.reduce_mean(distillation_kl(student_logits, teacher_logits, 1.0,
                                              reduction="none", sample_weight=sample_weight))

    loss = alpha * kl(student_adv_logits, teacher_adv_logits)
    if alpha < 1.0:
        if student_nat_logits is None or teacher_nat_logits is None:
            raise ConfigError(f"AdaAD with alpha={alpha} < 1 needs the natural logits")
        loss = loss + (1.0 - alpha) * kl(student_nat_logits, teacher_nat_logits)
    return loss * _kl_scale(kl_reduction, int(student_adv_logits.shape[-1]))


class AdaADObjective(Objective):
    """``KL(softmax(z_T(x_adv)) || softmax(z_S(x_adv)))`` per example, summed over classes.

    Unlike a KL to a fixed target, the teacher sees the *same* adversarial
    point, and the gradient flows through both networks (as in the official
    ``adaad_inner_loss``, which does not detach the teacher). The attacked
    model's outputs must be a dict with ``"logits"`` (student) and
    ``"teacher_logits"``; the attack's target is ignored.

    Example:
    >>> pair = lambda x, training=False: {"logits": student(x), "teacher_logits": teacher(x)}
    >>> x_adv = AdaADAttack()(pair, x, None)  # doctest: +SKIP
    """

    def __call__(self, outputs, target=None):
        outputs = as_outputs(outputs)
        if "teacher_logits" not in outputs:
            raise ConfigError("the AdaAD objective needs model outputs with 'teacher_logits' "
                              "(attack a callable returning the student's and the teacher's "
                              "logits)")
        log_q = tf.nn.log_softmax(as_float32(outputs["logits"]), axis=-1)
        log_p = tf.nn.log_softmax(tf.cast(outputs["teacher_logits"], log_q.dtype), axis=-1)
        return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


class AdaADAttack(GaussianStartPGD):
    """PGD on :class:`AdaADObjective` from ``x + start_std * N(0, 1)``, AdaAD's inner attack.

    The model attacked is a callable returning the student's and the
    teacher's logits (both in inference mode). As in the official
    ``adaad_inner_loss`` (``random_init=True``), the start point is not
    clipped (the first gradient is taken there) and every iterate, like the
    returned point, is projected onto the eps-ball and [0, 1]. The noise is
    drawn for the global batch and sliced, so a replica starts where one
    device would.

    Args:
        start_std: standard deviation of the Gaussian start (0.001, official).
        **kwargs: passed to :class:`PGD` (``eps``, ``step_size``, ``steps``,
            ``norm``, ``seed``, ``random_start``).

    Reference:
        boyellow/AdaAD, AT_helper.py (``adaad_inner_loss``).
    """

    name = "adaad_pgd"

    def __init__(self, start_std=0.001, **kwargs):
        kwargs.setdefault("objective", AdaADObjective())
        super().__init__(start_std=start_std, **kwargs)



@METHODS.register("adaad")
class AdaADDistiller(Distiller):
    """``L = a KL(T(x_adv) || S(x_adv)) + (1 - a) KL(T(x) || S(x))``, a = 1: adaptive adversaries.

    ``x_adv`` maximises the teacher-student discrepancy at the same point,
    ``KL(T(x_adv) || S(x_adv))`` (PGD-10, step 2/255, eps 8/255, from
    ``x + 0.001 N(0, 1)``, both networks in inference mode, gradient through
    both: :class:`AdaADAttack`), and the student then matches the teacher
    there. No hard labels, no temperature. The update's student passes run
    in training mode, natural first, as in the official ``main.py``; the
    natural pass runs even at ``a = 1`` (its batch statistics reach the
    running averages, as there), though its term is then not computed.

    Where paper and code differ, the code decides: the official defaults are
    a = 1 (``--AdaAD_alpha``; its README's commands use eps 8/255, step
    2/255, 10 steps), and its KL is ``nn.KLDivLoss()`` (mean over batch *and*
    classes, the paper's KL / C) on CIFAR-10 but a sum over classes divided
    by the batch on CIFAR-100. ``kl_reduction="official"`` (default)
    reproduces both (/C with 10 classes, the paper's KL otherwise);
    ``"batchmean"`` and ``"mean"`` pick one. Official schedule (flagfiles):
    200 epochs, SGD lr 0.1 momentum 0.9, x0.1 at epochs 100 and 150, weight
    decay 5e-4, batch 128. The repository's ``--temp`` (30) only feeds its
    AdaAD+IAD variant, not AdaAD.

    ``reweight=True`` (off by default, as in AdaAD) multiplies both KL terms
    of each example by the teacher's probability of its true class on the
    natural image (GACD's sample weight): AdaAD trusts the teacher's
    predictions wholesale, and the weight trusts them less where the teacher
    is wrong (AdaAD's own paper pairs it with IAD for that reason).

    Args:
        student, teacher: the networks (teacher frozen).
        attack: the inner attack (default :class:`AdaADAttack`, PGD-10); it
            is called on the student-teacher pair.
        adaad_alpha: a, the weight of the adversarial term (1.0).
        adaad_kl_reduction: "official", "batchmean" or "mean".
        reweight: teacher-confidence sample weights.
        **kwargs: passed to :class:`Distiller`.

    Example:
    >>> adaad = build("adaad", student, teacher)  # doctest: +SKIP
    >>> adaad.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    >>> adaad.fit(train_ds, epochs=1)

    Reference:
        Huang, Chen, Wang, Lu, Cheng, Wang, "Boosting Accuracy and Robustness of
        Student Models via Adaptive Adversarial Distillation", CVPR 2023 (code:
        boyellow/AdaAD, AT_helper.py and main.py).
    """

    SETTINGS = (
        Setting("adaad_alpha", 1.0, "AdaAD: weight of KL(T(x_adv) || S(x_adv)); the natural "
                "term KL(T(x) || S(x)) gets 1 - adaad_alpha.", lower=0.0, upper=1.0),
        Setting("adaad_kl_reduction", "official", "AdaAD: 'official' = the official code's KL "
                "(mean over batch and classes with 10 classes, sum over classes / batch "
                "otherwise); 'batchmean' = the paper's KL; 'mean' = batchmean / classes.",
                kind="enum", choices=ADAAD_KL_REDUCTIONS),
    )
    REWEIGHT = False

    @classmethod
    def build_attack(cls, settings, context):
        base = context.attack().get_config()
        return AdaADAttack(eps=base["eps"], step_size=base["step_size"], steps=base["steps"],
                           norm=base["norm"], seed=base["seed"])

    def __init__(self, student, teacher, attack=None, adaad_alpha=1.0,
                 adaad_kl_reduction="official", reweight=False, **kwargs):
        super().__init__(student, teacher, ["loss", "adv_accuracy"], **kwargs)
        if adaad_kl_reduction not in ADAAD_KL_REDUCTIONS:
            raise ConfigError(f"AdaAD adaad_kl_reduction must be one of "
                              f"{', '.join(ADAAD_KL_REDUCTIONS)}, got {adaad_kl_reduction!r}")
        self.attack = attack if attack is not None else AdaADAttack(steps=10)
        self.adaad_alpha, self.adaad_kl_reduction = adaad_alpha, adaad_kl_reduction
        self.reweight = reweight

    def train_step(self, data):
        x, y, _ = unpack_batch(data)
        x_adv = self.attack(self.student_and_teacher, x, None)
        teacher_nat = self.teacher(x, training=False)
        teacher_adv = self.teacher(x_adv, training=False)
        weight = self.teacher_confidence(teacher_nat, y) if self.reweight else None
        weights = self.student.trainable_weights
        with tf.GradientTape() as tape:
            nat_logits = self.student(x, training=True)
            adv_logits = self.student(x_adv, training=True)
            loss = adaad_loss(adv_logits, nat_logits, teacher_adv, teacher_nat, self.adaad_alpha,
                              self.adaad_kl_reduction, weight)
        self.apply_update(tape, loss, weights)
        return self.report(loss=loss, adv_accuracy=accuracy(y, adv_logits))
