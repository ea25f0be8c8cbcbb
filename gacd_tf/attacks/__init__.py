"""Adversarial attacks: PGD and FGSM on pluggable norms and objectives, and
AutoAttack (APGD-CE/DLR, APGD-T, FAB, FAB-T, Square) natively in TensorFlow.

An attack is called as ``attack(model, x, target) -> x_adv``; see :class:`PGD`.
Names, norms, objectives and AutoAttack versions live in one registry
(:mod:`gacd_tf.attacks.registry`); each attack is one file that registers
itself there and is imported below. GACD's "ot" objective registers itself
from ``gacd_tf.methods.gacd``.
"""

from gacd_tf.attacks.registry import (
    AA_VERSIONS,
    ATTACKS,
    NORMS,
    OBJECTIVES,
    build_attack,
    ensemble_attack_names,
    norm_names,
)

from gacd_tf.attacks.norms import L2Norm, LinfNorm, get_norm
from gacd_tf.attacks.objectives import (
    CrossEntropy,
    KLDivergence,
    Objective,
    as_outputs,
    get_objective,
)
from gacd_tf.attacks.gaussian_start_pgd import GaussianStartPGD
from gacd_tf.attacks.pgd import FGSM, PGD
from gacd_tf.attacks.dlr import DLR, TargetedDLR, dlr_loss, targeted_dlr_loss
from gacd_tf.attacks.apgd import APGD, apgd_checkpoints, halving_decision
from gacd_tf.attacks.apgd_targeted import APGDTargeted
from gacd_tf.attacks.autoattack import AutoAttack
from gacd_tf.attacks.fab import FAB, FABTargeted, projection_linf
from gacd_tf.attacks.square import Square
from gacd_tf.attacks.pass_counter import PassCounter

__all__ = [
    "GaussianStartPGD",
    "AA_VERSIONS", "ATTACKS", "FGSM", "PGD", "build_attack", "ensemble_attack_names",
    "norm_names", "NORMS", "L2Norm", "LinfNorm", "get_norm",
    "APGD", "APGDTargeted", "apgd_checkpoints", "halving_decision",
    "DLR", "TargetedDLR", "dlr_loss", "targeted_dlr_loss",
    "OBJECTIVES", "CrossEntropy", "KLDivergence", "Objective", "as_outputs",
    "get_objective", "AutoAttack",
    "FAB", "FABTargeted", "projection_linf",
    "Square",
    "PassCounter",
]
