"""Dataset info, split loading, balanced subsets and the tf.data pipeline."""

import numpy as np
import pytest
import tensorflow as tf

from gacd_tf import data
from gacd_tf.data import pipeline
from gacd_tf.errors import ConfigError, DataError


def _split(n=10, size=32, num_classes=5, seed=0, name="cifar10"):
    rng = np.random.default_rng(seed)
    return data.ArraySplit(
        images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        labels=(np.arange(n) % num_classes).astype(np.int32),
        info=data.get_dataset_info(name),
        split="train",
    )


def _collect(ds):
    batches = [tuple(t.numpy() for t in batch) for batch in ds]
    return tuple(np.concatenate(parts) for parts in zip(*batches))


# ------------------------------------------------------------- dataset info


def test_dataset_info():
    assert data.DATASET_NAMES == ("cifar10", "cifar100", "stl10")
    info = data.get_dataset_info("cifar10")
    assert (info.num_classes, info.image_size, info.splits) == (10, 32, ("train", "test"))
    assert info.mean == (0.4914, 0.4822, 0.4465) and info.std == (0.2470, 0.2435, 0.2616)
    assert data.get_dataset_info("cifar100").mean == (0.5071, 0.4865, 0.4409)
    stl = data.get_dataset_info("stl10")
    assert stl.image_size == 96 and "unlabelled" in stl.splits and stl.std == (0.2603, 0.2566, 0.2713)
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'; choose one of: cifar10, cifar100, stl10"):
        data.get_dataset_info("mnist")


# ---------------------------------------------------------- balanced subset


def test_balanced_subset_is_deterministic_balanced_and_in_file_order():
    labels = np.array([2, 0, 1, 1, 0, 2, 2, 0, 1, 0, 1, 2])
    idx = data.balanced_subset_indices(labels, 7, 3)
    np.testing.assert_array_equal(idx, data.balanced_subset_indices(labels, 7, 3))
    np.testing.assert_array_equal(idx, np.sort(idx))
    # 7 = 3 + 2 + 2: the remainder goes to class 0; each class its first members.
    np.testing.assert_array_equal(np.bincount(labels[idx]), [3, 2, 2])
    np.testing.assert_array_equal(idx, [0, 1, 2, 3, 4, 5, 7])
    idx = data.balanced_subset_indices(labels, 6, 3)
    np.testing.assert_array_equal(np.bincount(labels[idx]), [2, 2, 2])


def test_balanced_subset_errors():
    labels = np.array([0, 0, 0, 1])
    with pytest.raises(DataError, match="class 1 has only 1 examples but needs 2"):
        data.balanced_subset_indices(labels, 4, 2)
    with pytest.raises(DataError, match="examples=5 is out of range: the split holds 4"):
        data.balanced_subset_indices(labels, 5, 2)


# ---------------------------------------------------------------- load_split


def test_load_split_from_binaries(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(40) % 10
    data.write_cifar10(tmp_path, "train", images, labels, num_batches=2)
    full = data.load_split("cifar10", "train", data_dir=tmp_path)
    assert len(full) == 40 and full.split == "train" and full.info.name == "cifar10"
    np.testing.assert_array_equal(full.images, images)
    sub = data.load_split("cifar10", "train", data_dir=tmp_path, examples=20)
    np.testing.assert_array_equal(np.bincount(sub.labels), [2] * 10)
    np.testing.assert_array_equal(sub.images, images[:20])  # first two of each class
    assert sub.labels.dtype == np.int32 and sub.images.dtype == np.uint8

    data.write_cifar100(tmp_path, "test", images[:4], [99, 1, 2, 3], [19, 0, 1, 2])
    coarse = data.load_split("cifar100", "test", data_dir=tmp_path, label_mode="coarse")
    assert coarse.info.num_classes == 20 and coarse.labels.tolist() == [19, 0, 1, 2]
    assert data.load_split("cifar100", "test", data_dir=tmp_path).labels.tolist() == [99, 1, 2, 3]


def test_load_split_stl10_unlabelled(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    data.write_stl10(tmp_path, "unlabelled", images)
    split = data.load_split("stl10", "unlabeled", data_dir=tmp_path, examples=3)
    assert split.split == "unlabelled" and split.labels.tolist() == [-1, -1, -1]
    np.testing.assert_array_equal(split.images, images[:3])


def test_load_split_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="unknown cifar10 split 'unlabelled'; choose one of: train, test"):
        data.load_split("cifar10", "unlabelled", data_dir=tmp_path)
    with pytest.raises(DataError, match="label_mode='coarse' applies to cifar100 only"):
        data.load_split("cifar10", "test", data_dir=tmp_path, label_mode="coarse")
    with pytest.raises(DataError, match="test_batch.bin is missing"):
        data.load_split("cifar10", "test", data_dir=tmp_path)


def test_tfds_failure_is_one_clear_line(monkeypatch):
    import tensorflow_datasets as tfds

    def fail(*args, **kwargs):
        raise ConnectionError("Failed to fetch https://www.cs.toronto.edu/...\nretries exhausted")

    monkeypatch.setattr(tfds, "load", fail)
    with pytest.raises(DataError) as info:
        data.load_split("cifar10", "train")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("download of cifar10 via tensorflow-datasets failed (ConnectionError: Failed to fetch")
    assert "offline, pass data_dir=DIR with the official cifar10 binary files" in message
    assert info.value.argument == "data_dir"  # a program names its flag (test_offline)


def test_tfds_success_path_is_converted(monkeypatch):
    import tensorflow_datasets as tfds

    calls = {}

    def fake_load(name, split, **kwargs):
        calls.update(name=name, split=split, **kwargs)
        return {
            "image": tf.zeros([4, 32, 32, 3], tf.uint8),
            "label": tf.constant([3, 1, 4, 1], tf.int64),
            "coarse_label": tf.constant([0, 1, 2, 3], tf.int64),
        }

    monkeypatch.setattr(tfds, "load", fake_load)
    split = data.load_split("cifar100", "test", label_mode="coarse")
    assert calls == {"name": "cifar100", "split": "test", "batch_size": -1, "shuffle_files": False}
    assert split.labels.dtype == np.int32 and split.labels.tolist() == [0, 1, 2, 3]
    assert isinstance(split.images, np.ndarray) and split.images.shape == (4, 32, 32, 3)


# ----------------------------------------------------------------- pipeline


def test_eval_pipeline_keeps_order_and_values():
    split = _split(n=10)
    ds = data.make_dataset(split, batch_size=4, training=False)
    spec = ds.element_spec
    assert [s.dtype for s in spec] == [tf.float32, tf.int32, tf.int32]
    images, labels, indices = _collect(ds)
    assert [len(b[0]) for b in ds] == [4, 4, 2]  # remainder kept
    np.testing.assert_array_equal(indices, np.arange(10))
    np.testing.assert_array_equal(labels, split.labels)
    np.testing.assert_allclose(images, split.images / 255.0, rtol=0, atol=1e-7)  # no augmentation
    assert images.min() >= 0.0 and images.max() <= 1.0


def _candidates(image, padding=4):
    """Every pad-crop-flip of one image."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    crops = [padded[r : r + h, c : c + w] for r in range(2 * padding + 1) for c in range(2 * padding + 1)]
    return crops + [crop[:, ::-1] for crop in crops]


def test_training_augmentation_is_per_image_and_valid():
    base = _split(n=1)
    split = data.ArraySplit(np.repeat(base.images, 64, axis=0), np.zeros(64, np.int32), base.info, "train")
    images, _, indices = next(iter(data.make_dataset(split, batch_size=64, training=True, seed=3)))
    assert images.shape == (64, 32, 32, 3) and images.dtype == tf.float32
    assert sorted(indices.numpy()) == list(range(64))
    outputs = np.round(images.numpy() * 255).astype(np.uint8)
    distinct = {o.tobytes() for o in outputs}
    assert len(distinct) > 20  # 162 equally likely crops/flips per image
    flipped = sum(any(np.array_equal(o, c) for c in _candidates(base.images[0])[81:]) for o in outputs)
    assert 10 < flipped < 54  # flips drawn per image too
    candidates = {c.tobytes() for c in _candidates(base.images[0])}
    assert distinct <= candidates  # each output is a zero-pad-4 crop, maybe flipped


def test_training_pipeline_is_seeded_and_reshuffles_each_epoch():
    split = _split(n=24)

    def two_epochs(seed):
        ds = data.make_dataset(split, batch_size=8, training=True, seed=seed)
        return [_collect(ds) for _ in range(2)]

    first, second = two_epochs(0), two_epochs(0)
    for a, b in zip(first, second):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    (x0, y0, i0), (x1, _, i1) = first
    assert not np.array_equal(i0, i1)  # reshuffled
    assert sorted(i0) == list(range(24))
    np.testing.assert_array_equal(y0, split.labels[i0])  # labels follow their images
    assert not np.array_equal(x0, np.stack([split.images[i] / 255.0 for i in i0]))  # augmented
    other = two_epochs(1)[0]
    assert not np.array_equal(other[2], i0)


def test_training_defaults_and_overrides():
    split = _split(n=10)
    ds = data.make_dataset(split, batch_size=4, training=True)
    assert [len(b[0]) for b in ds] == [4, 4]  # drop_remainder defaults to training
    images, _, indices = _collect(data.make_dataset(split, 4, training=True, augment=False, drop_remainder=False))
    assert sorted(indices) == list(range(10))
    np.testing.assert_allclose(images, split.images[indices] / 255.0, atol=1e-7)
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        data.make_dataset(split, 0, training=False)
    with pytest.raises(ConfigError, match="train split holds 10 examples, fewer than one batch of "
                                          "batch_size=16") as err:
        data.make_dataset(split, 16, training=True)
    assert err.value.argument == "batch_size"
    assert len(list(data.make_dataset(split, 16, training=False))) == 1


def test_shapes_preserved_for_stl10_size():
    split = _split(n=4, size=96, name="stl10")
    images, _, _ = next(iter(data.make_dataset(split, batch_size=4, training=True)))
    assert images.shape == (4, 96, 96, 3)


def test_huge_array_path_matches_in_graph_path(monkeypatch, tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)
    data.write_stl10(tmp_path, "unlabelled", images)
    split = data.load_split("stl10", "unlabelled", data_dir=tmp_path)
    expected = _collect(data.make_dataset(split, 4, training=True, seed=5, drop_remainder=False))
    monkeypatch.setattr(pipeline, "MAX_IN_GRAPH_BYTES", 0)
    for a, b in zip(expected, _collect(data.make_dataset(split, 4, training=True, seed=5, drop_remainder=False))):
        np.testing.assert_array_equal(a, b)
    images_eval, labels, indices = _collect(data.make_dataset(split, 4, training=False))
    np.testing.assert_array_equal(indices, np.arange(6))
    np.testing.assert_array_equal(labels, [-1] * 6)
    np.testing.assert_allclose(images_eval, images / 255.0, atol=1e-7)


# ----------------------------------------------------------- real CIFAR-10


def test_real_cifar10(cifar10_dir):
    # Figures from shared/data/SOURCES.md.
    for split_name, mean in [("train", (0.4915, 0.4829, 0.4466)), ("test", (0.4941, 0.4851, 0.4504))]:
        split = data.load_split("cifar10", split_name, data_dir=cifar10_dir)
        assert split.images.shape == (10000, 32, 32, 3)
        np.testing.assert_array_equal(np.bincount(split.labels, minlength=10), [1000] * 10)
        np.testing.assert_allclose(split.images.reshape(-1, 3).mean(0) / 255.0, mean, atol=1e-3)
    sub = data.load_split("cifar10", "train", data_dir=cifar10_dir, examples=500)
    np.testing.assert_array_equal(np.bincount(sub.labels), [50] * 10)
    images, labels, indices = next(iter(data.make_dataset(sub, 128, training=False)))
    np.testing.assert_array_equal(indices, np.arange(128))
    np.testing.assert_array_equal(labels, sub.labels[:128])


def test_epoch_stream_rebuilds_any_epoch_and_the_rest_of_one():
    split = _split(n=24)
    full = list(data.make_dataset(split, batch_size=8, training=True, seed=4, epochs=3))
    assert len(full) == 9  # three epochs of three full batches, back to back
    epochs = [np.concatenate([b[2] for b in full[3 * e:3 * e + 3]]) for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(24))
    assert not np.array_equal(epochs[0], epochs[1])
    # Epoch 1 step 2 onwards, built on its own, equals the tail of the stream.
    rest = data.make_dataset(split, batch_size=8, training=True, seed=4, epochs=3,
                             start_epoch=1, start_step=2)
    assert int(rest.cardinality()) == 4  # known length: Keras ends epochs without warnings
    rest = list(rest)
    assert len(rest) == 4
    for got, want in zip(rest, full[5:]):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    other = list(data.make_dataset(split, batch_size=8, training=True, seed=5, epochs=1))
    assert not np.array_equal(np.concatenate([b[2] for b in other]), epochs[0])


def test_too_many_examples_names_the_argument_and_a_program_the_flag(tmp_path):
    rng = np.random.default_rng(0)
    data.write_cifar10(tmp_path, "test", rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
                       np.arange(10) % 10)
    with pytest.raises(DataError, match=r"^examples=11 is out of range: the test split "
                                        r"holds 10 examples; ask for 1 to 10$") as err:
        data.load_split("cifar10", "test", data_dir=tmp_path, examples=11)
    assert err.value.argument == "examples"
    from absl import flags

    from gacd_tf.programs.flag_core import arguments_as_flags

    holder = flags.FlagValues()
    flags.DEFINE_integer("test_examples", None, "", flag_values=holder)
    from gacd_tf.programs import flag_core

    real, flag_core.FLAGS = flag_core.FLAGS, holder
    try:
        with pytest.raises(DataError, match=r"^--test_examples=11 is out of range: the test "
                                            r"split holds 10 examples; ask for 1 to 10$"):
            with arguments_as_flags(examples="test_examples"):
                data.load_split("cifar10", "test", data_dir=tmp_path, examples=11)
    finally:
        flag_core.FLAGS = real
