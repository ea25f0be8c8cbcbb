"""AutoAttack of a model on a deterministic, class-balanced subset of a test split."""

import os

from absl import logging

from gacd_tf.attacks.autoattack import json_result
from gacd_tf.data import balanced_subset_indices, load_split
from gacd_tf.errors import DataError


def autoattack_test_subset(model, attack, dataset, data_dir, examples, batch_size, classes=None,
                           progress_file=None, strategy=None):
    """Runs ``attack`` (an :class:`gacd_tf.attacks.AutoAttack`) on test examples.

    Args:
        model: the classifier, ``model(x, training=False) -> logits``.
        attack: the AutoAttack to run (its version or attack list, eps, norm, seed).
        dataset: the dataset of the test split (e.g. "cifar10").
        data_dir: its folder (None: tensorflow-datasets).
        examples: how many test examples: a deterministic class-balanced
            subset of that many, or the whole split when it has no more.
        batch_size: points per attack call.
        classes: a transfer task's classes (relabelled 0..k-1), or None.
        progress_file: save the attack's progress there and resume from it
            (a killed run started again does not redo the finished batches).
        strategy: a ``tf.distribute.Strategy`` whose replicas share each
            batch (see :meth:`AutoAttack.run`); None: one device.

    Returns:
        a JSON-able dict: ``natural_accuracy``, ``robust_accuracy``,
        ``robust_accuracy_by_attack``, ``num_examples``, ``seconds``,
        ``seconds_by_attack``, ``warnings`` and ``attack`` (settings and seed).

    Raises:
        DataError: about ``examples`` when the split cannot give a balanced subset.
    """
    test = load_split(dataset, "test", data_dir, classes=classes)
    images, labels = test.images, test.labels
    if examples < len(labels):
        try:
            keep = balanced_subset_indices(labels, examples, test.info.num_classes)
        except DataError as err:
            raise DataError(f"examples={examples}: {err}").on("examples") from None
        images, labels = images[keep], labels[keep]
    logging.info("AutoAttack on %d test examples", len(labels))
    if progress_file and (strategy is None or strategy.extended.should_checkpoint):
        os.makedirs(os.path.dirname(os.path.abspath(progress_file)), exist_ok=True)
    return json_result(attack.run(model, images, labels, batch_size=batch_size,
                                  progress_file=progress_file, strategy=strategy))
