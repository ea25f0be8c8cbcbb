"""Natural and adversarial accuracy of a model over a dataset."""

import time

import keras
import tensorflow as tf

from gacd_tf.attacks import as_outputs
from gacd_tf.trainers.common import unpack_batch


def evaluate_robustness(model, dataset, attack, verbose=1):
    """Natural and robust accuracy of ``model`` on every example of ``dataset``.

    Each batch is attacked once (``attack(model, x, y)``, model in inference
    mode); an example counts as robust if the model still classifies its
    adversarial version correctly.

    Args:
        model: callable mapping [0,1] images to logits (or ``(features, logits)``).
        dataset: ``tf.data.Dataset`` of ``(image, label[, index])`` batches.
        attack: e.g. ``PGD(steps=20)``; ``None`` measures natural accuracy only.
        verbose: 1 shows a progress bar.

    Returns:
        dict with ``natural_accuracy``, ``robust_accuracy`` (None without an
        attack), ``num_examples``, ``attack`` (the attack's settings) and
        ``seconds``.

    Example:
    >>> evaluate_robustness(model, make_dataset(test, 256, training=False),
    ...                     PGD(steps=20))  # doctest: +SKIP
    """

    def logits_of(x):
        return as_outputs(model(x, training=False))["logits"]

    @tf.function(reduce_retracing=True)
    def batch_counts(x, y):
        y = tf.cast(y, tf.int64)
        nat = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits_of(x), -1), y), tf.int64))
        if attack is None:
            return nat, tf.constant(0, tf.int64)
        x_adv = attack(model, x, y)
        adv = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits_of(x_adv), -1), y), tf.int64))
        return nat, adv

    cardinality = int(dataset.cardinality())
    progbar = keras.utils.Progbar(cardinality if cardinality > 0 else None, verbose=verbose,
                                  stateful_metrics=["nat_acc", "adv_acc"])
    total = natural = robust = 0
    start = time.time()
    for step, batch in enumerate(dataset):
        x, y, _ = unpack_batch(batch)
        nat, adv = batch_counts(x, y)
        total += int(x.shape[0])
        natural += int(nat)
        robust += int(adv)
        metrics = [("nat_acc", natural / total)]
        if attack is not None:
            metrics.append(("adv_acc", robust / total))
        progbar.update(step + 1, metrics)
    if total == 0:
        raise ValueError("evaluate_robustness got an empty dataset")
    result = {
        "natural_accuracy": natural / total,
        "robust_accuracy": robust / total if attack is not None else None,
        "num_examples": total,
        "attack": attack.get_config() if attack is not None else None,
        "seconds": round(time.time() - start, 2),
    }
    return result
