"""Transfer by linear evaluation (paper Table 4): frozen backbone, new linear head."""

import json
import os

import keras
import tensorflow as tf

from gacd_tf.analysis import plots
from gacd_tf.analysis.linear_probe import LinearProbe
from gacd_tf.analysis.tables import csv_text, markdown_table, write_text
from gacd_tf.attacks import PGD
from gacd_tf.data import make_dataset
from gacd_tf.evaluation import evaluate_robustness
from gacd_tf.models.interface import feature_dim
from gacd_tf.models.io import weights_digest

TRANSFER_COLUMNS = ["model", "natural_accuracy", "robust_accuracy", "train_accuracy",
                    "num_examples", "train_examples", "feature_dim", "backbone_unchanged",
                    "source"]


def linear_transfer(backbone, train, test, epochs, optimizer=None, batch_size=128, attack=None,
                    weight_decay=0.0, seed=0, augment=True, fit=None, verbose=0,
                    strategy=None):
    """Linear evaluation of a frozen model on a target task, natural and robust.

    Trains a :class:`gacd_tf.analysis.LinearProbe` (frozen ``backbone``, new
    ``Dense`` head) on ``train`` with cross-entropy on natural images, then
    measures natural and adversarial accuracy of backbone + head on the
    whole ``test`` split, the attack going through the frozen backbone.

    Args:
        backbone: a classifier following the gacd_tf interface (frozen in place).
        train, test: :class:`gacd_tf.data.ArraySplit` of the target task
            (e.g. ``load_split("cifar10", ..., classes=[5, 6, 7, 8, 9])``).
        epochs: training epochs of the head.
        optimizer: a Keras optimizer (default SGD lr 0.1, momentum 0.9).
        batch_size: examples per batch.
        attack: evaluation attack (default PGD-7, eps 8/255, step 2/255).
        weight_decay: coupled L2 of the head.
        seed: shuffle and augmentation seed.
        augment: pad-4 crop + flip while training the head.
        fit: ``fit(probe)`` trains the compiled probe instead of a plain
            ``probe.fit`` over ``epochs`` (e.g. the programs' resumable
            ``gacd_tf.programs.common.fit_phase``).
        verbose: Keras verbosity.
        strategy: a ``tf.distribute`` strategy to build and train the probe
            under (load ``backbone`` and make ``optimizer`` under its scope
            too); default: the current one. Under a
            ``MultiWorkerMirroredStrategy`` pass a ``fit`` that trains with the
            library's loop (``fit_phase``): Keras' ``fit`` cannot run there.

    Returns:
        ``(result, probe)``: result holds ``natural_accuracy``,
        ``robust_accuracy``, ``num_examples``, ``attack``, ``seconds`` (of the
        evaluation), ``train_accuracy`` (natural, on the un-augmented
        training images after training), ``train_examples``,
        ``feature_dim`` and ``backbone_unchanged`` (weights hash equal before
        and after).

    Example:
    >>> result, probe = linear_transfer(student, train_5_9, test_5_9, epochs=10)  # doctest: +SKIP
    >>> result["natural_accuracy"], result["robust_accuracy"]  # doctest: +SKIP
    (0.62, 0.31)
    """


    before = weights_digest(backbone)
    with (strategy or tf.distribute.get_strategy()).scope():
        probe = LinearProbe(backbone, train.info.num_classes,
                            input_shape=train.images.shape[1:], weight_decay=weight_decay,
                            eval_attack=attack if attack is not None else PGD(steps=7, seed=seed))
        probe.compile(optimizer=optimizer or keras.optimizers.SGD(0.1, momentum=0.9))
    if fit is None:
        probe.fit(make_dataset(train, batch_size, training=True, seed=seed, augment=augment),
                  epochs=epochs, verbose=verbose, shuffle=False)
    else:
        fit(probe)
    result = evaluate_robustness(probe.model, make_dataset(test, batch_size, training=False),
                                 probe.eval_attack, verbose=verbose)
    on_train = evaluate_robustness(probe.model, make_dataset(train, batch_size, training=False),
                                   None, verbose=0)
    unchanged = weights_digest(backbone) == before
    if not unchanged:  # a bug, never a user error
        raise RuntimeError("the frozen backbone's weights changed while training the linear head")
    result.update(train_accuracy=on_train["natural_accuracy"],
                  train_examples=len(train), feature_dim=feature_dim(backbone),
                  backbone_unchanged=unchanged)
    return result, probe


def write_transfer(rows, output_dir, task):
    """Writes ``transfer.json``, ``transfer.md``, ``transfer.csv`` and ``transfer.png``.

    Args:
        rows: list of dicts, one per model, with ``model`` and the
            :func:`linear_transfer` result.
        output_dir: an existing folder.
        task: a description of the target task (e.g. "cifar10 classes 5,6,7,8,9").

    Returns:
        The Markdown table (also in ``transfer.md``).
    """
    with open(os.path.join(output_dir, "transfer.json"), "w") as f:
        json.dump({"task": task, "models": rows}, f, indent=2, sort_keys=True)
        f.write("\n")
    table = markdown_table(rows, TRANSFER_COLUMNS)
    write_text(os.path.join(output_dir, "transfer.md"),
               f"# Linear transfer to {task}\n\n{table}")
    write_text(os.path.join(output_dir, "transfer.csv"), csv_text(rows, TRANSFER_COLUMNS))
    plots.grouped_bars([r["model"] for r in rows],
                       {"natural": [r["natural_accuracy"] for r in rows],
                        "robust": [r["robust_accuracy"] for r in rows]},
                       os.path.join(output_dir, "transfer.png"),
                       title=f"linear transfer to {task}")
    return table
