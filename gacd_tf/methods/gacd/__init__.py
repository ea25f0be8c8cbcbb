"""GACD, Guided Adversarial Contrastive Distillation, and everything it alone uses.

- :class:`GACDDistiller` (``distiller.py``): the trainer, registered as method ``"gacd"``;
- :class:`MemoryBank` (``memory_bank.py``): the momentum bank of embeddings;
- the NCE forms and the fixed normaliser Z (``nce.py``): :func:`nce_logits`,
  :func:`initial_log_z`, :func:`reweighted_nce_loss`, and the banks' collapse
  detectors :func:`cross_class_cosine`, :func:`within_class_cosine`;
- :class:`OtherClassSampler` (``negative_sampling.py``): k negatives per sample
  from other classes;
- :class:`OptimalTransport` (``ot_objective.py``, attack objective ``"ot"``) on
  log-domain Sinkhorn (``sinkhorn.py``: :func:`cosine_cost`,
  :func:`sinkhorn_plan`, :func:`sinkhorn_distance`): Feature Scattering's
  positives.

Reference:
    Bai et al., "Feature Distillation With Guided Adversarial Contrastive
    Learning"; SPEC "GACD".
"""

from gacd_tf.methods.gacd.distiller import (NCE_FORMS, NCE_NORMALISERS, TEACHER_INPUTS,
                                            GACDDistiller)
from gacd_tf.methods.gacd.memory_bank import MemoryBank
from gacd_tf.methods.gacd.nce import (
    cross_class_cosine,
    initial_log_z,
    nce_logits,
    reweighted_nce_loss,
    within_class_cosine,
)
from gacd_tf.methods.gacd.negative_sampling import OtherClassSampler
from gacd_tf.methods.gacd.ot_objective import OptimalTransport
from gacd_tf.methods.gacd.sinkhorn import cosine_cost, sinkhorn_distance, sinkhorn_plan

__all__ = [
    "GACDDistiller", "MemoryBank", "NCE_FORMS", "NCE_NORMALISERS", "OptimalTransport",
    "OtherClassSampler",
    "TEACHER_INPUTS", "cosine_cost", "cross_class_cosine", "initial_log_z", "nce_logits",
    "reweighted_nce_loss", "sinkhorn_distance", "sinkhorn_plan", "within_class_cosine",
]
