"""Losses several methods share: the temperature-scaled distillation KL.

Pure TensorFlow functions of tensors, usable in any training loop. A loss that
belongs to one method lives beside it (``gacd_tf.methods.kd.kd_loss``,
``gacd_tf.methods.ard.ard_loss``, ``gacd_tf.methods.gacd.reweighted_nce_loss``, ...).
"""

from gacd_tf.losses.distillation_kl import KL_REDUCTIONS, distillation_kl

__all__ = ["KL_REDUCTIONS", "distillation_kl"]
