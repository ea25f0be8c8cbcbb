"""Float64 NumPy references shared by the loss tests: log-softmax and the KL divergence.

Written from the formulas (SPEC.md, and PyTorch's ``KLDivLoss`` for ``batchmean``),
independently of the TensorFlow code they check. No TensorFlow import here.
"""

import numpy as np


def log_softmax(z):
    """log softmax over the last axis, in float64."""
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def kl_rows(teacher_logits, student_logits):
    """KL(p_T || p_S) per row: sum_c p_T (log p_T - log p_S), float64."""
    log_p, log_q = log_softmax(teacher_logits), log_softmax(student_logits)
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def batchmean_kl(student_logits, teacher_logits):
    """PyTorch KLDivLoss(reduction="batchmean")(log_softmax(s), softmax(t)), float64."""
    return kl_rows(teacher_logits, student_logits).mean()
