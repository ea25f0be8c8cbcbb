"""Data: official binary formats, dataset descriptions, splits, the validation
hold-out and tf.data pipelines. A new dataset is a reader of its official
files plus one ``_register(...)`` line in ``datasets.py`` (the ``DATASETS``
registry).

Example:
>>> from gacd_tf import data
>>> train = data.load_split("cifar10", "train", data_dir="data/cifar10")  # doctest: +SKIP
>>> ds = data.make_dataset(train, batch_size=128, training=True, seed=0)  # doctest: +SKIP
>>> images, labels, indices = next(iter(ds))  # doctest: +SKIP
"""

from gacd_tf.data.binary_formats import (
    UNLABELLED,
    read_cifar10,
    read_cifar100,
    read_stl10,
    validate_labels,
    write_cifar10,
    write_cifar100,
    write_stl10,
)
from gacd_tf.data.datasets import (
    DATASET_NAMES,
    ArraySplit,
    DatasetInfo,
    balanced_subset_indices,
    get_dataset_info,
    load_split,
)
from gacd_tf.data.holdout import holdout_indices
from gacd_tf.data.pipeline import make_dataset, random_pad_crop_flip

__all__ = [
    "DATASET_NAMES",
    "UNLABELLED",
    "ArraySplit",
    "DatasetInfo",
    "balanced_subset_indices",
    "get_dataset_info",
    "holdout_indices",
    "load_split",
    "make_dataset",
    "random_pad_crop_flip",
    "read_cifar10",
    "read_cifar100",
    "read_stl10",
    "validate_labels",
    "write_cifar10",
    "write_cifar100",
    "write_stl10",
]
