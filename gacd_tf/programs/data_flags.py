"""The programs' data flags: dataset, examples, batch, seed, and the validation split.

``--val_examples`` are held out of the *training* split (SPEC "Model
selection and controls"); the test split only serves the final report.
"""

import dataclasses
import os
import types

from absl import logging

from gacd_tf.data import holdout_indices, load_split, make_dataset
from gacd_tf.data.datasets import DATASETS
from gacd_tf.programs.flag_core import (
    FLAGS,
    DEFINE_enum,
    DEFINE_integer,
    DEFINE_string,
    arguments_as_flags,
)


def define_dataset_flags(use=""):
    """``--dataset`` and ``--data_dir`` (``$GACD_DATA_DIR`` by default); ``use`` starts
    their help (e.g. what the program reads the dataset for)."""
    DEFINE_enum("dataset", "cifar10", DATASETS.names(), f"{use}Dataset name.")
    DEFINE_string(
        "data_dir", os.environ.get("GACD_DATA_DIR") or None,
        f"{use}Folder with the dataset's official binary files (offline). Unset: "
        "tensorflow-datasets downloads it. Defaults to $GACD_DATA_DIR.")


def define_data_flags(train=True):
    define_dataset_flags()
    if train:
        DEFINE_integer("train_examples", None, "Use a deterministic class-balanced subset "
                       "of this many training examples.", lower_bound=1)
    DEFINE_integer("test_examples", None, "Evaluate on a deterministic class-balanced subset "
                   "of this many test examples (default: the whole test split).", lower_bound=1)
    DEFINE_integer("batch_size", 128, "Global batch size.", lower_bound=1)
    DEFINE_integer("seed", 0, "Random seed (weights, data order, augmentation, attacks).")


def define_validation_flags(default, use):
    """``--val_examples``: training examples held out for validation (SPEC "Model selection")."""
    DEFINE_integer("val_examples", default, "Hold out this many class-balanced examples of the "
                   f"TRAINING split (never trained on) as the validation set, {use} "
                   "(0: no validation). The test split only serves the final report.",
                   lower_bound=0)


def load_data_from_flags():
    """Train, validation and test data and their pipelines, as the data flags ask.

    ``--val_examples`` (when the program has it) are held out of the
    *training* split (:func:`gacd_tf.data.holdout_indices`): never trained on, they feed
    the per-epoch validation (``val_*`` logs, ``best.keras``); the test split
    serves only the final report.

    Returns a namespace with ``train``, ``val`` (or None), ``test``, ``info``,
    ``val_ds`` (or None), ``test_ds`` and ``steps_per_epoch`` (full batches);
    training batches come from :func:`fit_phase`. A sample's index (the GACD
    memory-bank row) is its position in ``train``.
    """
    whole = load_split(FLAGS.dataset, "train", FLAGS.data_dir)
    val_examples = FLAGS.val_examples if "val_examples" in FLAGS else 0
    train_idx, val_idx = holdout_indices(whole.labels, whole.info.num_classes, val_examples,
                                         FLAGS.train_examples)
    train = whole
    if len(train_idx) < len(whole.labels):
        train = dataclasses.replace(whole, images=whole.images[train_idx],
                                    labels=whole.labels[train_idx])
    val = None
    if len(val_idx):
        val = dataclasses.replace(whole, images=whole.images[val_idx],
                                  labels=whole.labels[val_idx])
    del whole
    with arguments_as_flags(examples="test_examples"):
        test = load_split(FLAGS.dataset, "test", FLAGS.data_dir, FLAGS.test_examples)
    logging.info("%s: %d training, %d validation (held out of the training split), %d test "
                 "examples", train.info.name, len(train.labels), len(val_idx), len(test.labels))
    return types.SimpleNamespace(
        train=train, val=val, test=test, info=train.info,
        val_ds=None if val is None else make_dataset(val, FLAGS.batch_size, training=False),
        test_ds=make_dataset(test, FLAGS.batch_size, training=False),
        steps_per_epoch=max(1, len(train.labels) // FLAGS.batch_size),  # full batches only
    )
