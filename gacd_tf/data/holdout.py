"""The validation hold-out: training examples set aside for model selection.

Validation comes from the *training* split, never from the test split (SPEC
"Model selection and controls"); the test split only serves the final report.
"""

import numpy as np

from gacd_tf.data.datasets import balanced_subset_indices
from gacd_tf.errors import DataError


def holdout_indices(labels, num_classes, val_examples, train_examples=None):
    """Splits a training split into disjoint training and validation indices.

    Validation: a deterministic, class-balanced set of ``val_examples`` taken
    from the *end* of each class (its last examples in file order). Training:
    the rest, or a class-balanced subset of ``train_examples`` of the rest
    (each class's first examples), so with room to spare a ``train_examples``
    subset is the same with or without validation.

    Args:
        labels: int labels [N] of the whole training split.
        num_classes: C.
        val_examples: validation size (0: none).
        train_examples: training size (None: everything not held out).

    Returns:
        ``(train_indices, val_indices)``: sorted, disjoint int64 arrays.

    Raises:
        DataError: about ``val_examples`` or ``train_examples`` (its
            ``argument``) when the split cannot hold both.

    Example:
    >>> labels = np.arange(100) % 10
    >>> train, val = holdout_indices(labels, 10, val_examples=20)
    >>> len(train), len(val)
    (80, 20)
    """
    labels = np.asarray(labels)
    size = len(labels)
    held = np.zeros(size, dtype=bool)
    if val_examples:
        if val_examples >= size:
            raise DataError(f"val_examples={val_examples} leaves no training examples: the "
                            f"train split holds {size}; ask for fewer").on("val_examples")
        try:
            from_end = balanced_subset_indices(labels[::-1], val_examples, num_classes)
        except DataError as err:
            raise DataError(f"val_examples={val_examples}: {err}").on("val_examples") from None
        held[size - 1 - from_end] = True
    pool = np.flatnonzero(~held)
    train = pool
    if train_examples is not None:
        if train_examples > len(pool):
            held_out = (f", {val_examples} of them held out by val_examples={val_examples}"
                        if val_examples else "")
            raise DataError(f"train_examples={train_examples} is out of range: the train split "
                            f"holds {size} examples{held_out}; ask for 1 to {len(pool)}"
                            ).on("train_examples", "val_examples")
        try:
            train = pool[balanced_subset_indices(labels[pool], train_examples, num_classes)]
        except DataError as err:
            raise DataError(f"train_examples={train_examples}: {err}").on("train_examples") from None
    return np.sort(train), np.flatnonzero(held)
