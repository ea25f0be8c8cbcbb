"""Readers and writers for the official CIFAR-10, CIFAR-100 and STL-10 binaries.

Plain numpy, no pickle. Every reader returns ``(images, labels)``: images
``uint8 [N, H, W, 3]`` (NHWC) and labels ``int32 [N]``. Every writer produces
exactly the official byte layout, so ``write_* -> read_*`` is lossless and
``read_* -> write_*`` reproduces the files byte for byte.

Layouts (one record per image, no header):

- CIFAR-10 ``data_batch_{1..5}.bin``, ``test_batch.bin``: 1 label byte, then
  3072 pixel bytes: the 1024 red, 1024 green and 1024 blue values, each plane a
  row-major 32x32 image (pixel ``(row r, col c, channel ch)`` is at byte
  ``1 + ch * 1024 + r * 32 + c`` of its record).
- CIFAR-100 ``train.bin``, ``test.bin``: coarse label byte, fine label byte,
  then the same 3072 pixel bytes.
- STL-10 ``{train,test}_X.bin`` (and ``unlabeled_X.bin``): 27648 bytes per
  image, three 96x96 planes stored *column-major* (the official
  ``stl10_input.py`` reads them with ``np.transpose(x, (0, 3, 2, 1))``);
  ``{train,test}_y.bin``: one byte per image, labels 1..10 (returned as 0..9).
  The unlabeled split (2.7 GB) is memory-mapped and has label -1.

Every problem raises :class:`gacd_tf.errors.DataError` naming the file or
folder, what is wrong and what to do.
"""

import pathlib
import re

import numpy as np

from gacd_tf.errors import DataError

UNLABELLED = -1

_CIFAR_HW = (32, 32)
_STL10_HW = (96, 96)
# Transposes from the stored [N, 3, a, b] planes to NHWC.
_ROW_MAJOR = (0, 2, 3, 1)  # planes stored (channel, row, col)
_COLUMN_MAJOR = (0, 3, 2, 1)  # planes stored (channel, col, row)

_CIFAR10_TRAIN = re.compile(r"^data_batch_(\d+)\.bin$")
# Split name -> file stem ("unlabeled_X.bin"); both spellings are accepted.
_STL10_SPLITS = {
    "train": "train", "test": "test", "unlabelled": "unlabeled", "unlabeled": "unlabeled"
}


# --------------------------------------------------------------------------
# Shared helpers: folders, fixed-size records, image planes, label checks.


def _folder(data_dir, dataset, expected, official_subfolder):
    """Returns the folder holding the files; accepts the official sub-folder."""
    folder = pathlib.Path(data_dir).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"{dataset} data folder {folder} does not exist; pass data_dir=DIR "
            f"naming the folder that holds the official binary files ({expected})"
        ).on("data_dir")
    if (folder / official_subfolder).is_dir():
        folder = folder / official_subfolder
    return folder


def _require_file(path, dataset, expected):
    if not path.is_file():
        raise DataError(
            f"{dataset} file {path} is missing; the folder {path.parent} must hold "
            f"the official binary files: {expected}"
        )
    return path


def _read_records(path, record_size, dataset, mmap=False, official=None):
    """Reads a headerless file of fixed-size records as uint8 [n, record_size].

    ``official`` is the record count of the official file, quoted in the error.
    """
    size = path.stat().st_size
    if size == 0 or size % record_size:
        expected = (f" (the official file is {official * record_size} bytes: {official} "
                    "records)" if official else "")
        raise DataError(
            f"{path} is {size} bytes, not a whole (non-zero) number of {record_size}-byte "
            f"{dataset} records{expected}; the file is truncated or not in the official "
            "binary format: download it again"
        )
    if mmap:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    else:
        data = np.fromfile(path, dtype=np.uint8)
    return data.reshape(-1, record_size)


def _write_records(path, *columns):
    """Writes uint8 [n, k_i] column blocks side by side as one record per row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = np.concatenate([np.asarray(c, np.uint8).reshape(len(c), -1) for c in columns], axis=1)
    records.tofile(path)


def _planes_to_nhwc(pixels, hw, axes):
    images = pixels.reshape(-1, 3, *hw).transpose(axes)
    return images if isinstance(pixels, np.memmap) else np.ascontiguousarray(images)


def _nhwc_to_planes(images, axes):
    return np.ascontiguousarray(images.transpose(np.argsort(axes))).reshape(len(images), -1)


def _check_images(images, hw, source):
    """Checks arrays handed to a writer: uint8 [N, H, W, 3]."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (*hw, 3):
        raise DataError(
            f"{source}: images must be uint8 of shape (N, {hw[0]}, {hw[1]}, 3), got "
            f"{images.dtype} of shape {images.shape}; convert them with "
            "np.asarray(images, np.uint8) in NHWC order"
        )
    return images


def _check_count(labels, images, source):
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise DataError(
            f"{source}: got {len(images)} images but labels of shape {labels.shape}; "
            "pass one label per image"
        )
    return labels


def validate_labels(labels, num_classes, source, first=0):
    """Raises `DataError` unless every label lies in ``first .. first + num_classes - 1``.

    Args:
        labels: integer array of labels.
        num_classes: number of classes C.
        source: what the labels came from (a file name), used in the message.
        first: the smallest valid label (0; 1 for STL-10 ``*_y.bin`` files).

    Returns:
        ``labels`` as an int32 array.

    Example:
    >>> validate_labels(np.array([0, 9]), 10, "test_batch.bin")
    array([0, 9], dtype=int32)
    """
    labels = np.asarray(labels)
    last = first + num_classes - 1
    bad = np.flatnonzero((labels < first) | (labels > last))
    if bad.size:
        raise DataError(
            f"{source}: label {int(labels[bad[0]])} (record {int(bad[0])}, {bad.size} bad in "
            f"all) is out of range; valid labels are {first}..{last}; the file is corrupt "
            "or belongs to another dataset"
        )
    return labels.astype(np.int32)


def _choice(value, valid, what):
    if value not in valid:
        raise DataError(f"unknown {what} {value!r}; choose one of: {', '.join(valid)}")
    return value


# --------------------------------------------------------------------------
# CIFAR-10


_CIFAR10_EXPECTED = "data_batch_1.bin ... data_batch_5.bin (at least one) and test_batch.bin"


def _cifar10_files(folder, split):
    if split == "test":
        return [_require_file(folder / "test_batch.bin", "CIFAR-10", _CIFAR10_EXPECTED)]
    numbered = sorted(
        (int(m.group(1)), path)
        for path in folder.iterdir()
        if (m := _CIFAR10_TRAIN.match(path.name))
    )
    if not numbered:
        _require_file(folder / "data_batch_1.bin", "CIFAR-10", _CIFAR10_EXPECTED)
    return [path for _, path in numbered]


def read_cifar10(data_dir, split):
    """Reads a CIFAR-10 split from the official binary files.

    The train split is every ``data_batch_<k>.bin`` present, in order of k (at
    least one is needed); the test split is ``test_batch.bin``.

    Args:
        data_dir: folder holding the files (or the official
            ``cifar-10-batches-bin`` folder inside it).
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels)``: uint8 [N, 32, 32, 3] and int32 [N] in 0..9.

    Example:
    >>> images, labels = read_cifar10("data/cifar10", "test")  # doctest: +SKIP
    >>> images.shape  # doctest: +SKIP
    (10000, 32, 32, 3)
    """
    _choice(split, ("train", "test"), "CIFAR-10 split")
    folder = _folder(data_dir, "CIFAR-10", _CIFAR10_EXPECTED, "cifar-10-batches-bin")
    images, labels = [], []
    for path in _cifar10_files(folder, split):
        records = _read_records(path, 1 + 3072, "CIFAR-10", official=10000)
        labels.append(validate_labels(records[:, 0], 10, path))
        images.append(_planes_to_nhwc(records[:, 1:], _CIFAR_HW, _ROW_MAJOR))
    return np.concatenate(images), np.concatenate(labels)


def write_cifar10(data_dir, split, images, labels, num_batches=1):
    """Writes a CIFAR-10 split in the official binary layout.

    Args:
        data_dir: folder to write into (created if needed).
        split: ``"train"`` (``data_batch_1.bin`` .. ``data_batch_<num_batches>.bin``,
            the images split evenly in order) or ``"test"`` (``test_batch.bin``).
        images: uint8 [N, 32, 32, 3].
        labels: integers [N] in 0..9.
        num_batches: number of train batch files.

    Returns:
        The list of written paths.

    Example:
    >>> write_cifar10(tmp, "test", np.zeros((2, 32, 32, 3), np.uint8), [0, 1])  # doctest: +SKIP
    """
    _choice(split, ("train", "test"), "CIFAR-10 split")
    images = _check_images(images, _CIFAR_HW, "write_cifar10")
    labels = validate_labels(_check_count(labels, images, "write_cifar10"), 10, "write_cifar10")
    folder = pathlib.Path(data_dir).expanduser()
    if split == "test":
        names, parts = ["test_batch.bin"], [np.arange(len(images))]
    else:
        parts = np.array_split(np.arange(len(images)), num_batches)
        names = [f"data_batch_{k + 1}.bin" for k in range(num_batches)]
    paths = []
    for name, part in zip(names, parts):
        _write_records(folder / name, labels[part], _nhwc_to_planes(images[part], _ROW_MAJOR))
        paths.append(folder / name)
    return paths


# --------------------------------------------------------------------------
# CIFAR-100


_CIFAR100_EXPECTED = "train.bin and test.bin"


def read_cifar100(data_dir, split, label_mode="fine"):
    """Reads a CIFAR-100 split (``train.bin`` or ``test.bin``).

    Args:
        data_dir: folder holding the files (or the official ``cifar-100-binary``
            folder inside it).
        split: ``"train"`` or ``"test"``.
        label_mode: ``"fine"`` (100 classes) or ``"coarse"`` (20 super-classes).

    Returns:
        ``(images, labels)``: uint8 [N, 32, 32, 3] and int32 [N].

    Example:
    >>> images, labels = read_cifar100("data/cifar100", "train", "coarse")  # doctest: +SKIP
    """
    _choice(split, ("train", "test"), "CIFAR-100 split")
    _choice(label_mode, ("fine", "coarse"), "CIFAR-100 label mode")
    folder = _folder(data_dir, "CIFAR-100", _CIFAR100_EXPECTED, "cifar-100-binary")
    path = _require_file(folder / f"{split}.bin", "CIFAR-100", _CIFAR100_EXPECTED)
    records = _read_records(path, 2 + 3072, "CIFAR-100",
                            official=50000 if split == "train" else 10000)
    coarse = validate_labels(records[:, 0], 20, f"{path} (coarse labels)")
    fine = validate_labels(records[:, 1], 100, f"{path} (fine labels)")
    images = _planes_to_nhwc(records[:, 2:], _CIFAR_HW, _ROW_MAJOR)
    return images, (fine if label_mode == "fine" else coarse)


def write_cifar100(data_dir, split, images, fine_labels, coarse_labels):
    """Writes ``train.bin`` or ``test.bin`` in the official CIFAR-100 layout.

    Args:
        data_dir: folder to write into (created if needed).
        split: ``"train"`` or ``"test"``.
        images: uint8 [N, 32, 32, 3].
        fine_labels: integers [N] in 0..99.
        coarse_labels: integers [N] in 0..19.

    Returns:
        The written path.

    Example:
    >>> write_cifar100(tmp, "test", images, fine, coarse)  # doctest: +SKIP
    """
    _choice(split, ("train", "test"), "CIFAR-100 split")
    images = _check_images(images, _CIFAR_HW, "write_cifar100")
    fine, coarse = (
        validate_labels(_check_count(y, images, "write_cifar100"), c, f"write_cifar100 {kind} labels")
        for y, c, kind in [(fine_labels, 100, "fine"), (coarse_labels, 20, "coarse")]
    )
    path = pathlib.Path(data_dir).expanduser() / f"{split}.bin"
    _write_records(path, coarse, fine, _nhwc_to_planes(images, _ROW_MAJOR))
    return path


# --------------------------------------------------------------------------
# STL-10


_STL10_EXPECTED = "train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin"
_STL10_RECORD = 3 * 96 * 96
_STL10_OFFICIAL_RECORDS = {"train": 5000, "test": 8000, "unlabeled": 100000}


def read_stl10(data_dir, split):
    """Reads an STL-10 split from the official binary files.

    Args:
        data_dir: folder holding the files (or the official ``stl10_binary``
            folder inside it).
        split: ``"train"``, ``"test"`` or ``"unlabelled"`` (``"unlabeled"`` too).

    Returns:
        ``(images, labels)``: uint8 [N, 96, 96, 3] and int32 [N] in 0..9 (the
        files store 1..10); for the unlabelled split the images are a read-only
        memory map of ``unlabeled_X.bin`` and every label is -1.

    Example:
    >>> images, labels = read_stl10("data/stl10_binary", "train")  # doctest: +SKIP
    >>> images.shape, labels.min()  # doctest: +SKIP
    ((5000, 96, 96, 3), 0)
    """
    stem = _STL10_SPLITS[_choice(split, tuple(_STL10_SPLITS), "STL-10 split")]
    folder = _folder(data_dir, "STL-10", _STL10_EXPECTED, "stl10_binary")
    x_path = _require_file(folder / f"{stem}_X.bin", "STL-10", _STL10_EXPECTED)
    official = _STL10_OFFICIAL_RECORDS[stem]
    pixels = _read_records(x_path, _STL10_RECORD, "STL-10 image", mmap=stem == "unlabeled",
                           official=official)
    images = _planes_to_nhwc(pixels, _STL10_HW, _COLUMN_MAJOR)
    if stem == "unlabeled":
        return images, np.full(len(images), UNLABELLED, np.int32)
    y_path = _require_file(folder / f"{stem}_y.bin", "STL-10", _STL10_EXPECTED)
    raw = _read_records(y_path, 1, "STL-10 label", official=official)[:, 0]
    if len(raw) != len(images):
        raise DataError(
            f"{x_path} holds {len(images)} images of 3x96x96 bytes but {y_path} holds "
            f"{len(raw)} labels; the two files must come from the same official download"
        )
    return images, validate_labels(raw, 10, y_path, first=1) - 1


def write_stl10(data_dir, split, images, labels=None):
    """Writes an STL-10 split in the official layout.

    Args:
        data_dir: folder to write into (created if needed).
        split: ``"train"``, ``"test"`` or ``"unlabelled"``.
        images: uint8 [N, 96, 96, 3].
        labels: integers [N] in 0..9 (stored as 1..10); must be None for the
            unlabelled split.

    Returns:
        The list of written paths (``<split>_X.bin`` and, if labelled, ``<split>_y.bin``).

    Example:
    >>> write_stl10(tmp, "train", np.zeros((2, 96, 96, 3), np.uint8), [0, 9])  # doctest: +SKIP
    """
    stem = _STL10_SPLITS[_choice(split, tuple(_STL10_SPLITS), "STL-10 split")]
    images = _check_images(images, _STL10_HW, "write_stl10")
    folder = pathlib.Path(data_dir).expanduser()
    if (labels is None) != (stem == "unlabeled"):
        needs = "labels=None" if stem == "unlabeled" else "one label per image"
        raise DataError(f"write_stl10: split {split!r} needs {needs}")
    if labels is not None:
        labels = validate_labels(_check_count(labels, images, "write_stl10"), 10, "write_stl10")
        _write_records(folder / f"{stem}_y.bin", labels + 1)
    _write_records(folder / f"{stem}_X.bin", _nhwc_to_planes(images, _COLUMN_MAJOR))
    return [folder / f"{stem}_X.bin"] + ([folder / f"{stem}_y.bin"] if labels is not None else [])
