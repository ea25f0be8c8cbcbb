"""Class correlations of a model's logits (paper Figures 3-4)."""

import numpy as np
import tensorflow as tf

from gacd_tf.attacks import as_outputs
from gacd_tf.errors import ModelError
from gacd_tf.methods.common import unpack_batch


def logit_correlation(model, dataset, attack=None):
    """The C x C Pearson correlation matrix of ``model``'s logits over ``dataset``.

    Entry (i, j) correlates the logit of class i with the logit of class j
    across all examples (NumPy's ``corrcoef`` of the logit columns). With an
    ``attack``, the logits are those of the adversarial examples
    ``attack(model, x, y)`` (Figure 4); without, of the natural images
    (Figure 3).

    Args:
        model: callable mapping [0,1] images to logits (or ``(features, logits)``).
        dataset: ``tf.data.Dataset`` of ``(image, label[, index])`` batches.
        attack: optional attack, e.g. ``PGD(steps=20)``.

    Returns:
        float64 array ``[C, C]``.

    Example:
    >>> corr = logit_correlation(model, make_dataset(test, 256, training=False))  # doctest: +SKIP
    """

    @tf.function(reduce_retracing=True)
    def logits_of(x, y):
        if attack is not None:
            x = attack(model, x, y)
        return as_outputs(model(x, training=False))["logits"]

    chunks = []
    for batch in dataset:
        x, y, _ = unpack_batch(batch)
        chunks.append(logits_of(x, y).numpy().astype(np.float64))
    if not chunks:
        raise ValueError("logit_correlation got an empty dataset")
    return np.corrcoef(np.concatenate(chunks), rowvar=False)


def correlation_difference(teacher, student, dataset, attack=None):
    """``|corr_T - corr_S|`` and its mean: how well a student captures the
    teacher's class correlations (lower is closer).

    Args:
        teacher, student: models mapping images to logits, same class count;
            either may instead be its already computed ``[C, C]`` correlation
            matrix (e.g. the teacher's, computed once for several students).
        dataset: the examples (the test split in the paper).
        attack: attack each model with it first (its own adversarial examples).

    Returns:
        ``(difference [C, C], mean absolute difference)``.

    Example:
    >>> corr_t = logit_correlation(teacher, test_ds)  # doctest: +SKIP
    >>> _, mean = correlation_difference(corr_t, student, test_ds)  # doctest: +SKIP
    """

    def matrix(model):
        if isinstance(model, np.ndarray):
            return model
        return logit_correlation(model, dataset, attack)

    corr_t, corr_s = matrix(teacher), matrix(student)
    if corr_t.shape != corr_s.shape:
        raise ModelError(f"teacher and student correlation matrices differ in shape: "
                         f"{corr_t.shape} vs {corr_s.shape}; compare models with the same "
                         "classes")
    difference = np.abs(corr_t - corr_s)
    return difference, float(difference.mean())
