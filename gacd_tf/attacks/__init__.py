"""Adversarial attacks: one PGD engine, pluggable norms and objectives
("ce", "kl", and "ot": the optimal-transport feature distance of Feature Scattering).

An attack is called as ``attack(model, x, target) -> x_adv``; see :class:`PGD`.
"""

from gacd_tf.attacks.norms import NORMS, L2Norm, LinfNorm, get_norm
from gacd_tf.attacks.objectives import (
    OBJECTIVES,
    CrossEntropy,
    KLDivergence,
    Objective,
    as_outputs,
    get_objective,
)
from gacd_tf.attacks.ot_objective import OptimalTransport
from gacd_tf.attacks.gaussian_start_pgd import GaussianStartPGD
from gacd_tf.attacks.pgd import ATTACKS, FGSM, PGD, build_attack
from gacd_tf.attacks.dlr import DLR, TargetedDLR, dlr_loss, targeted_dlr_loss
from gacd_tf.attacks.apgd import APGD, apgd_checkpoints, halving_decision
from gacd_tf.attacks.apgd_targeted import APGDTargeted
from gacd_tf.attacks.autoattack import AutoAttack
from gacd_tf.attacks.fab import FAB, FABTargeted, projection_linf
from gacd_tf.attacks.square import Square

__all__ = [
    "GaussianStartPGD",
    "ATTACKS", "FGSM", "PGD", "build_attack", "NORMS", "L2Norm", "LinfNorm", "get_norm",
    "APGD", "APGDTargeted", "apgd_checkpoints", "halving_decision",
    "DLR", "TargetedDLR", "dlr_loss", "targeted_dlr_loss",
    "OBJECTIVES", "CrossEntropy", "KLDivergence", "Objective", "OptimalTransport", "as_outputs",
    "get_objective", "AutoAttack",
    "FAB", "FABTargeted", "projection_linf",
    "Square",
]
