"""Dataset descriptions and split loading (official binaries or tensorflow-datasets).

A split is loaded into memory as an :class:`ArraySplit` (uint8 NHWC images,
int32 labels). The stable per-sample index used by memory banks is the
position in the (possibly subset) split: ``0 .. len(split) - 1``.
"""

import contextlib
import dataclasses
import socket
import threading
import urllib.parse
import urllib.request

import numpy as np

from gacd_tf.data import binary_formats
from gacd_tf.errors import DataError
from gacd_tf.registry import Registry


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and a pipeline need to know about a dataset.

    Args:
        name: registry name, e.g. ``"cifar10"``.
        num_classes: number of classes C.
        image_size: side of the square images in pixels (32 or 96).
        splits: split names accepted by :func:`load_split`.
        mean: per-channel mean of the train images in [0, 1] (for normalisation).
        std: per-channel standard deviation of the train images in [0, 1].

    Example:
    >>> info = get_dataset_info("cifar10")
    >>> info.num_classes, info.image_size
    (10, 32)
    """

    name: str
    num_classes: int
    image_size: int
    splits: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


DATASETS = Registry("dataset")  # name -> (DatasetInfo, binary reader)


def _register(reader, name, num_classes, image_size, splits, mean, std):
    DATASETS.register(name)((DatasetInfo(name, num_classes, image_size, splits, mean, std), reader))


_register(
    binary_formats.read_cifar10, "cifar10", 10, 32, ("train", "test"),
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
)
_register(
    binary_formats.read_cifar100, "cifar100", 100, 32, ("train", "test"),
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
)
_register(
    binary_formats.read_stl10, "stl10", 10, 96, ("train", "test", "unlabelled"),
    mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713),
)
DATASET_NAMES = tuple(DATASETS.names())
_SPLIT_ALIASES = {"unlabeled": "unlabelled"}
# Official class names (CIFAR-10 batches.meta.txt, STL-10 class_names.txt).
CLASS_NAMES = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                "ship", "truck"),
    "stl10": ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship",
              "truck"),
}


def get_dataset_info(name):
    """Returns the :class:`DatasetInfo` of a registered dataset.

    Args:
        name: one of :data:`DATASET_NAMES` (``cifar10``, ``cifar100``, ``stl10``).

    Returns:
        The dataset's :class:`DatasetInfo`.

    Raises:
        gacd_tf.errors.ConfigError: for an unknown name (the message lists the
            known ones).

    Example:
    >>> get_dataset_info("stl10").splits
    ('train', 'test', 'unlabelled')
    """
    return DATASETS.get(name)[0]


@dataclasses.dataclass(eq=False)
class ArraySplit:
    """One split of a dataset held in memory (or memory-mapped).

    Args:
        images: uint8 [N, H, W, 3].
        labels: int32 [N], in 0..C-1, or -1 for unlabelled images.
        info: the dataset's :class:`DatasetInfo` (``num_classes`` follows the
            label mode, e.g. 20 for CIFAR-100 coarse labels).
        split: ``"train"``, ``"test"`` or ``"unlabelled"``.

    Example:
    >>> split = load_split("cifar10", "test", data_dir="data/cifar10")  # doctest: +SKIP
    >>> len(split), split.images.shape  # doctest: +SKIP
    (10000, (10000, 32, 32, 3))
    """

    images: np.ndarray
    labels: np.ndarray
    info: DatasetInfo
    split: str

    def __len__(self):
        return len(self.labels)


def _check_examples(n, size, split=None):
    if not 1 <= n <= size:
        where = f"the {split} split" if split else "the split"
        raise DataError(f"examples={n} is out of range: {where} holds {size} examples; ask for "
                        f"1 to {size}").on("examples")


def balanced_subset_indices(labels, n, num_classes):
    """Picks a deterministic, class-balanced subset of ``n`` examples.

    Class c gets ``n // num_classes`` examples, plus one for each of the first
    ``n % num_classes`` classes; each class contributes its first examples in
    file order.

    Args:
        labels: int array [N] of labels in 0..num_classes-1.
        n: subset size, 1..N.
        num_classes: number of classes C.

    Returns:
        Sorted int64 indices into ``labels``.

    Raises:
        DataError: if ``n`` is out of range or a class has too few examples.

    Example:
    >>> balanced_subset_indices(np.array([0, 0, 1, 0, 1, 1]), 4, 2)
    array([0, 1, 2, 4])
    """
    labels = np.asarray(labels)
    _check_examples(n, len(labels))
    picked = []
    for c in range(num_classes):
        quota = n // num_classes + (c < n % num_classes)
        members = np.flatnonzero(labels == c)
        if len(members) < quota:
            raise DataError(
                f"cannot take a class-balanced subset of {n} examples: class {c} has only "
                f"{len(members)} examples but needs {quota}; ask for fewer examples"
            )
        picked.append(members[:quota])
    return np.sort(np.concatenate(picked))


# Where tensorflow-datasets fetches each dataset (its builders' URLs), and the
# bucket it may fetch a prepared copy from instead.
TFDS_SOURCES = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    "stl10": "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
}
TFDS_BUCKET = "https://storage.googleapis.com/tfds-data"
PROBE_SECONDS = 3.0


def _connect_target(url):
    """``(host, port)`` a download of ``url`` connects to first: its proxy if one applies."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname, parts.port or default


def unreachable(urls, seconds=PROBE_SECONDS):
    """Why none of ``urls`` can be reached, or None as soon as one can.

    Opens one TCP connection per URL (to its proxy where the environment sets
    one), all at once, each given ``seconds``; a name lookup that hangs counts
    as unreachable after ``seconds`` too. So an offline machine answers in
    about ``seconds`` instead of the minutes of tensorflow-datasets' retries.

    Returns:
        None, or ``"cannot reach HOST:PORT (why)"`` for the first URL.
    """
    targets = [_connect_target(url) for url in urls]
    outcomes = [None] * len(targets)
    reached = threading.Event()  # one URL answered, or all have failed

    def probe(i, host, port):
        try:
            socket.create_connection((host, port), timeout=seconds).close()
            outcomes[i] = True
        except Exception as error:  # refused, unreachable, name unknown, timed out, ...
            outcomes[i] = error
        finally:
            if outcomes[i] is True or all(o is not None for o in outcomes):
                reached.set()

    threads = [threading.Thread(target=probe, args=(i, *target), daemon=True)
               for i, target in enumerate(targets)]
    for thread in threads:
        thread.start()
    # Name lookups have no timeout of their own: wait at most seconds + 1.
    reached.wait(seconds + 1)
    if any(outcome is True for outcome in outcomes):
        return None
    host, port = targets[0]
    error = outcomes[0]
    why = (f"{type(error).__name__}: {error}" if isinstance(error, Exception)
           else f"no answer within {seconds:g} s")
    return f"cannot reach {host}:{port} ({why})"


@contextlib.contextmanager
def _fail_fast_offline(name):
    """While tensorflow-datasets loads ``name``: if it has to download (the data
    is not prepared locally), first check that its source or bucket answers,
    and raise ConnectionError within seconds if neither does.

    tfds has no hook before a download, and ``tfds.load`` calls
    ``DatasetBuilder.download_and_prepare`` only when the data is not
    prepared; so that method is wrapped for the duration of the load (and
    restored after), which probes exactly when tfds would download. Offline
    without the probe, tfds' retries (urllib3, backoff doubling up to 102 s)
    took 206 s to fail.
    """
    try:
        from tensorflow_datasets.core.dataset_builder import DatasetBuilder

        original = DatasetBuilder.__dict__["download_and_prepare"]
    except (ImportError, KeyError):  # another tfds layout: its own retries apply
        yield
        return

    def download_and_prepare(builder, *args, **kwargs):
        if name in TFDS_SOURCES:
            problem = unreachable([TFDS_SOURCES[name], TFDS_BUCKET])
            if problem:
                raise ConnectionError(problem)
        return original.__get__(builder, type(builder))(*args, **kwargs)

    DatasetBuilder.download_and_prepare = download_and_prepare
    try:
        yield
    finally:
        DatasetBuilder.download_and_prepare = original


def _load_tfds(name, split, label_mode):
    """Loads a whole split with tensorflow-datasets in its stored order."""
    try:
        import tensorflow_datasets as tfds

        with _fail_fast_offline(name):
            data = tfds.as_numpy(tfds.load(name, split=split, batch_size=-1,
                                           shuffle_files=False))
    except Exception as error:  # any download/prepare failure
        cause = type(error).__name__
        if str(error).strip():
            cause += ": " + str(error).strip().splitlines()[0][:200]
        raise DataError(
            f"download of {name} via tensorflow-datasets failed ({cause}); "
            f"offline, pass data_dir=DIR with the official {name} binary files"
        ).on("data_dir") from None
    labels = data["coarse_label" if label_mode == "coarse" else "label"]
    return data["image"], labels


def class_names(dataset, classes=None):
    """Human-readable names of a dataset's classes (``"class N"`` when unknown).

    Args:
        dataset: a registered dataset name.
        classes: original class ids to name (default: all of them).

    Returns:
        Tuple of strings, one per class.

    Example:
    >>> class_names("cifar10", [9, 2])
    ('truck', 'bird')
    """
    info = get_dataset_info(dataset)
    classes = range(info.num_classes) if classes is None else classes
    known = CLASS_NAMES.get(dataset, ())
    return tuple(known[c] if 0 <= c < len(known) else f"class {c}" for c in classes)


def select_classes(split, classes):
    """Keeps the examples of some classes and relabels them ``0 .. len(classes) - 1``.

    Class ``classes[j]`` becomes label ``j``; the examples keep their file
    order, and ``info.num_classes`` becomes ``len(classes)``. This makes a
    new task out of an existing dataset, e.g. CIFAR-10 classes 5-9 as a
    5-class transfer target for a backbone trained on classes 0-4.

    Args:
        split: an :class:`ArraySplit` with labels.
        classes: distinct original class ids, in the order of the new labels.

    Returns:
        A new :class:`ArraySplit`.

    Raises:
        DataError: for an empty, repeated or out-of-range class list, or an
            unlabelled split.

    Example:
    >>> train = load_split("cifar10", "train", "data/cifar10")  # doctest: +SKIP
    >>> upper = select_classes(train, [5, 6, 7, 8, 9])  # doctest: +SKIP
    >>> upper.info.num_classes, sorted(set(upper.labels))  # doctest: +SKIP
    (5, [0, 1, 2, 3, 4])
    """
    classes = [int(c) for c in classes]
    name = f"{split.info.name} {split.split}"
    if not classes:
        raise DataError(f"no classes given to select from {name}; name at least one class")
    if len(set(classes)) != len(classes):
        raise DataError(f"classes {classes} repeat a class; list each class once")
    bad = [c for c in classes if not 0 <= c < split.info.num_classes]
    if bad:
        raise DataError(f"classes {bad} are out of range for {name}: it has classes "
                        f"0..{split.info.num_classes - 1}")
    lookup = np.full(split.info.num_classes, -1, np.int32)
    lookup[classes] = np.arange(len(classes), dtype=np.int32)
    labels = np.asarray(split.labels)
    if (labels < 0).any():
        raise DataError(f"{name} is unlabelled; classes can only be selected from labelled splits")
    keep = np.flatnonzero(lookup[labels] >= 0)
    return ArraySplit(images=split.images[keep], labels=lookup[labels[keep]],
                      info=dataclasses.replace(split.info, num_classes=len(classes)),
                      split=split.split)


def load_split(dataset, split, data_dir=None, examples=None, label_mode="fine", classes=None):
    """Loads one split as uint8 NHWC images and int32 labels.

    Args:
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"stl10"``.
        split: ``"train"``, ``"test"``, or for STL-10 ``"unlabelled"``
            (``"unlabeled"`` is accepted too).
        data_dir: folder with the official binary files; None downloads the
            dataset with tensorflow-datasets (needs the network).
        examples: if given, keep a deterministic class-balanced subset of this
            many examples (:func:`balanced_subset_indices`); for the unlabelled
            split, the first ``examples`` images.
        label_mode: CIFAR-100 only: ``"fine"`` (100 classes) or ``"coarse"`` (20).
        classes: if given, keep only these classes, relabelled 0..len-1
            (:func:`select_classes`), before taking the ``examples`` subset.

    Returns:
        An :class:`ArraySplit`; ``index i`` of a sample is its position in it.

    Raises:
        DataError: for a bad split, missing or malformed files, a failed
            download, or an impossible subset.

    Example:
    >>> train = load_split("cifar10", "train", "data/cifar10", examples=500)  # doctest: +SKIP
    >>> np.bincount(train.labels)  # doctest: +SKIP
    array([50, 50, 50, 50, 50, 50, 50, 50, 50, 50])
    """
    info, reader = DATASETS.get(dataset)
    split = _SPLIT_ALIASES.get(split, split)
    if split not in info.splits:
        choices = ", ".join(info.splits)
        raise DataError(f"unknown {dataset} split {split!r}; choose one of: {choices}")
    kwargs = {}
    if dataset == "cifar100":
        if label_mode not in ("fine", "coarse"):
            raise DataError(f"unknown CIFAR-100 label mode {label_mode!r}; choose fine or coarse")
        kwargs["label_mode"] = label_mode
        info = dataclasses.replace(info, num_classes=20 if label_mode == "coarse" else 100)
    elif label_mode != "fine":
        raise DataError(f"label_mode={label_mode!r} applies to cifar100 only, not {dataset}")

    if data_dir is not None:
        images, labels = reader(data_dir, split, **kwargs)
    else:
        images, labels = _load_tfds(dataset, split, label_mode)
        if split == "unlabelled":
            labels = np.full(len(images), binary_formats.UNLABELLED)
        else:
            source = f"tensorflow-datasets {dataset} {split}"
            labels = binary_formats.validate_labels(labels, info.num_classes, source)
    labels = labels.astype(np.int32)
    if classes is not None:
        chosen = select_classes(ArraySplit(images, labels, info, split), classes)
        images, labels, info = chosen.images, chosen.labels, chosen.info

    if examples is not None:
        _check_examples(examples, len(labels), split)
        # Unlabelled: the first images (a slice keeps a memory map lazy).
        if split == "unlabelled":
            keep = slice(examples)
        else:
            keep = balanced_subset_indices(labels, examples, info.num_classes)
        images, labels = images[keep], labels[keep]
    return ArraySplit(images=images, labels=labels, info=info, split=split)
