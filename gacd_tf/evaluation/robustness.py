"""Natural and adversarial accuracy of a model over a dataset."""

import time

import keras
import numpy as np
import tensorflow as tf

from gacd_tf.attacks import as_outputs
from gacd_tf.attacks.keyed_random import takes_indices
from gacd_tf.errors import ConfigError
from gacd_tf.methods.common import unpack_batch
from gacd_tf.models.folding import fold_batch_norm
from gacd_tf.models.io import float32_copy
from gacd_tf.training.distribute import run_on_replicas


def evaluate_robustness(model, dataset, attack, verbose=1, return_examples=False,
                        progress_file=None, strategy=None):
    """Natural and robust accuracy of ``model`` on every example of ``dataset``.

    Robustness follows SPEC "Counting": each batch is attacked with
    ``attack.perturb(model, x, y) -> (x_adv, robust)`` (model in inference
    mode), and an example is robust only if its clean image is classified
    correctly and no iterate of the attack (any restart, any target) is
    misclassified; so robust accuracy never exceeds natural accuracy. An
    attack without ``perturb`` (a plain ``attack(model, x, y) -> x_adv``
    callable) counts an example robust when both its clean and its
    adversarial image are classified correctly. An attack whose ``perturb``
    takes ``indices`` gets each example's position in ``dataset`` (its
    batch's start plus its row), the key of its random draws, so the
    per-example results do not depend on the batch size.

    An :class:`gacd_tf.attacks.AutoAttack` runs as an ensemble over the
    whole dataset (:meth:`AutoAttack.run`: each attack on the points still
    robust); its result adds ``robust_accuracy_by_attack`` and ``warnings``.

    Under a ``strategy`` of several replicas (devices, workers) each batch
    is split between them (:func:`gacd_tf.training.run_on_replicas`) and the
    per-example results gathered: the same answer, example by example, as
    one device, since the attack's draws are keyed per example. Every worker
    of a multi-worker strategy runs this with the same dataset.

    Args:
        model: callable mapping [0,1] images to logits (or ``(features, logits)``).
        dataset: ``tf.data.Dataset`` of ``(image, label[, index])`` batches.
        attack: e.g. ``PGD(steps=20)``; ``None`` measures natural accuracy only.
        verbose: 1 shows a progress bar.
        return_examples: also return NumPy arrays ``x_adv`` (the adversarial
            examples), ``robust`` and ``clean_correct`` (bool per example) and
            ``labels``, in dataset order.
        progress_file: AutoAttack only: save its progress in this ``.npz``
            file and resume from it (see :meth:`AutoAttack.run`).
        strategy: a ``tf.distribute.Strategy`` to spread the batches over
            (None: one device); the model should be built or loaded in its
            scope. An attack whose ``perturb`` takes no ``indices`` (its
            draws not keyed per example) is refused under several replicas.

    Returns:
        dict with ``natural_accuracy``, ``robust_accuracy`` (None without an
        attack), ``num_examples``, ``attack`` (the attack's settings) and
        ``seconds`` (AutoAttack adds ``robust_accuracy_by_attack``,
        ``seconds_by_attack`` and ``warnings``), plus the arrays above with
        ``return_examples``.

    Example:
    >>> evaluate_robustness(model, make_dataset(test, 256, training=False),
    ...                     PGD(steps=20))  # doctest: +SKIP
    """
    # Measured in float32 whatever the training precision (float16 input
    # gradients underflow, which would overstate robustness).
    model = float32_copy(model)
    if attack is not None and callable(getattr(attack, "run_ensemble", None)):
        return attack.run_ensemble(model, dataset, verbose=verbose,
                                   return_examples=return_examples, progress_file=progress_file,
                                   strategy=strategy)
    # Inference mode throughout: batch norms folded into the convolutions
    # (the same outputs to float32 round-off, fewer passes over the activations).
    model = fold_batch_norm(model)

    def logits_of(x):
        return as_outputs(model(x, training=False))["logits"]

    keyed = attack is not None and takes_indices(attack)
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    if replicas > 1 and attack is not None and not keyed:
        raise ConfigError(f"evaluating on {replicas} replicas needs an attack whose random draws "
                          f"are keyed per example (perturb(..., indices)); "
                          f"{type(attack).__name__} is not, so its answer would depend on how "
                          "the batches are split: evaluate it on one device")

    @tf.function(reduce_retracing=True)
    def per_example(x, y, indices):
        """(x_adv, robust, clean correct) of each row."""
        y = tf.cast(y, tf.int64)
        correct = tf.equal(tf.argmax(logits_of(x), -1), y)
        if attack is None:
            return x, correct, correct
        if keyed:
            x_adv, robust = attack.perturb(model, x, y, indices=indices)
        elif callable(getattr(attack, "perturb", None)):
            x_adv, robust = attack.perturb(model, x, y)
        else:
            x_adv = attack(model, x, y)
            robust = tf.equal(tf.argmax(logits_of(x_adv), -1), y)
        return tf.cast(x_adv, tf.float32), tf.logical_and(correct, robust), correct

    cardinality = int(dataset.cardinality())
    progbar = keras.utils.Progbar(cardinality if cardinality > 0 else None, verbose=verbose,
                                  stateful_metrics=["nat_acc", "adv_acc"])
    total = natural = robust = 0
    examples = {"x_adv": [], "robust": [], "clean_correct": [], "labels": []}
    start = time.time()
    for step, batch in enumerate(dataset):
        x, y, _ = unpack_batch(batch)
        x, y = np.asarray(x), np.asarray(y)
        indices = np.arange(total, total + len(y), dtype=np.int64)
        x_adv, robust_rows, correct_rows = run_on_replicas(strategy, per_example, x, y, indices)
        if return_examples:
            for key, value in zip(examples, (x_adv, robust_rows, correct_rows, y)):
                examples[key].append(value)
        total += len(y)
        natural += int(correct_rows.sum())
        robust += int(robust_rows.sum())
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
        "attack": (None if attack is None else attack.get_config()
                   if hasattr(attack, "get_config")
                   else {"attack": getattr(attack, "__name__", type(attack).__name__)}),
        "seconds": round(time.time() - start, 2),
    }
    if return_examples:
        result.update({key: np.concatenate(parts) for key, parts in examples.items()})
        result["x_adv"] = result["x_adv"].astype(np.float32)
    return result
