"""Distillation losses: KD, ARD, GACD's reweighted NCE and the OT distance.

Pure TensorFlow functions of tensors, usable in any training loop.
"""

from gacd_tf.losses.distillation_kl import ard_loss, distillation_kl, kd_loss
from gacd_tf.losses.nce import (
    cross_class_cosine,
    initial_log_z,
    nce_logits,
    reweighted_nce_loss,
    within_class_cosine,
)
from gacd_tf.losses.sinkhorn import cosine_cost, sinkhorn_distance, sinkhorn_plan

__all__ = [
    "ard_loss", "distillation_kl", "kd_loss",
    "cross_class_cosine", "initial_log_z", "nce_logits", "reweighted_nce_loss",
    "within_class_cosine",
    "cosine_cost", "sinkhorn_distance", "sinkhorn_plan",
]
