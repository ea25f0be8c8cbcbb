"""The temperature-scaled distillation KL that KD, ARD, RSLAD and AdaAD build on.

All functions are pure TensorFlow: they take logits tensors and return a
scalar (or per-example) loss, so they work in eager mode, inside
``tf.function`` and inside a Keras ``train_step``. The teacher's
probabilities are always treated as constants (``tf.stop_gradient``).
"""

import tensorflow as tf

from gacd_tf.errors import ConfigError

KL_REDUCTIONS = ("batchmean", "official", "none")


def check_temperature(temperature):
    if not temperature > 0:
        raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
    return float(temperature)


def check_alpha(alpha):
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distillation weight alpha must be in [0, 1], got {alpha}")
    return float(alpha)


def as_float32(logits):
    """Logits as float32 (losses are computed in float32 under mixed precision)."""
    logits = tf.convert_to_tensor(logits)
    return tf.cast(logits, tf.float32) if logits.dtype in (tf.float16, tf.bfloat16) else logits


def mean_cross_entropy(logits, labels):
    logits = as_float32(logits)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )


def distillation_kl(
    student_logits, teacher_logits, temperature, reduction="batchmean", sample_weight=None
):
    """``T^2 * KL(softmax(z_T / T) || softmax(z_S / T))``, Hinton-style.

    The per-example divergence is
    ``kl_i = T^2 * sum_c p_T[i, c] * (log p_T[i, c] - log p_S[i, c])`` with
    ``p = softmax(z / T)``; the teacher side is a constant (stop-gradient).
    ``sample_weight`` multiplies each ``kl_i`` (reweighted ARD / GACD) and
    leaves the reduction unchanged (the batch mean still divides by ``B``,
    not by the sum of the weights).

    Reductions:

    * ``"batchmean"``: sum over classes, mean over the batch -- the textbook
      KL used by Hinton et al. and RepDistiller (``KL_i`` averaged over ``B``).
    * ``"official"``: mean over the batch *and* the classes, i.e. the
      ``"batchmean"`` value divided by ``C``. This is what ARD's official code
      computes (PyTorch ``nn.KLDivLoss()`` with its default
      ``reduction="mean"``), so its effective objective is
      ``(T^2 / C) * KL``; ARD's ``T = 30`` and ``lr = 0.1`` were tuned with
      that scaling. With ``"batchmean"`` the same ``T`` gives a term ``C``
      times stronger.
    * ``"none"``: the weighted per-example values ``w_i * kl_i``, shape ``[B]``.

    Args:
        student_logits: ``[B, C]`` float logits of the student.
        teacher_logits: ``[B, C]`` float logits of the teacher (no gradient).
        temperature: softmax temperature ``T > 0``.
        reduction: ``"batchmean"``, ``"official"`` or ``"none"``.
        sample_weight: optional ``[B]`` per-example weights (no gradient).

    Returns:
        A scalar tensor (``[B]`` for ``reduction="none"``), in the dtype of
        ``student_logits``.

    Example:
    >>> s = tf.constant([[1.0, 2.0, 0.5]])
    >>> t = tf.constant([[2.0, 1.0, 0.0]])
    >>> loss = distillation_kl(s, t, temperature=4.0)
    >>> ard = distillation_kl(s, t, temperature=30.0, reduction="official")

    Reference:
        Hinton et al., "Distilling the Knowledge in a Neural Network", 2015;
        Goldblum et al., "Adversarially Robust Distillation", AAAI 2020
        (code: goldblum/AdversariallyRobustDistillation).
    """
    temperature = check_temperature(temperature)
    if reduction not in KL_REDUCTIONS:
        raise ConfigError(
            f"unknown KL reduction {reduction!r}; choose one of: {', '.join(KL_REDUCTIONS)}"
        )
    student_logits = as_float32(student_logits)
    dtype = student_logits.dtype
    teacher_logits = tf.stop_gradient(tf.cast(teacher_logits, dtype))
    log_p_student = tf.nn.log_softmax(student_logits / temperature, axis=-1)
    log_p_teacher = tf.nn.log_softmax(teacher_logits / temperature, axis=-1)
    p_teacher = tf.exp(log_p_teacher)
    per_example = (temperature**2) * tf.reduce_sum(
        p_teacher * (log_p_teacher - log_p_student), axis=-1
    )
    if sample_weight is not None:
        per_example = per_example * tf.stop_gradient(
            tf.cast(tf.reshape(sample_weight, [-1]), dtype)
        )
    if reduction == "none":
        return per_example
    loss = tf.reduce_mean(per_example)
    if reduction == "official":
        loss = loss / tf.cast(tf.shape(student_logits)[-1], dtype)
    return loss
