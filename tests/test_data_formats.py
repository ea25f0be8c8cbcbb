"""Official binary formats: round trips, hand-built layouts and clear errors."""

import re

import numpy as np
import pytest

from gacd_tf.data import binary_formats as bf
from gacd_tf.errors import DataError


def _images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _labels(n, num_classes, seed=1):
    return np.random.default_rng(seed).integers(0, num_classes, n)


def _same_bytes(dir_a, dir_b):
    names = sorted(p.name for p in dir_a.iterdir())
    assert names == sorted(p.name for p in dir_b.iterdir())
    for name in names:
        assert (dir_a / name).read_bytes() == (dir_b / name).read_bytes(), name


# ---------------------------------------------------------------- round trips


def test_cifar10_round_trip_byte_for_byte(tmp_path):
    images, labels = _images(7, 32), _labels(7, 10)
    paths = bf.write_cifar10(tmp_path / "a", "train", images, labels, num_batches=3)
    bf.write_cifar10(tmp_path / "a", "test", images[:2], labels[:2])
    assert [p.name for p in paths] == ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin"]
    assert all(p.stat().st_size % 3073 == 0 for p in paths)
    for split, n in [("train", 7), ("test", 2)]:
        got_x, got_y = bf.read_cifar10(tmp_path / "a", split)
        assert got_x.dtype == np.uint8 and got_y.dtype == np.int32
        np.testing.assert_array_equal(got_x, images[:n])
        np.testing.assert_array_equal(got_y, labels[:n])
        bf.write_cifar10(tmp_path / "b", split, got_x, got_y, num_batches=3)
    _same_bytes(tmp_path / "a", tmp_path / "b")


def test_cifar10_train_batches_in_numeric_order(tmp_path):
    for k, label in [(10, 3), (2, 2), (1, 1)]:
        bf.write_cifar10(tmp_path / str(k), "test", _images(1, 32, k), [label])
        (tmp_path / str(k) / "test_batch.bin").rename(tmp_path / f"data_batch_{k}.bin")
    (tmp_path / "data_batch_1.bin.bak").write_bytes(b"junk")  # not a batch file
    _, labels = bf.read_cifar10(tmp_path, "train")
    np.testing.assert_array_equal(labels, [1, 2, 3])


def test_cifar10_official_subfolder_is_found(tmp_path):
    bf.write_cifar10(tmp_path / "cifar-10-batches-bin", "test", _images(2, 32), [4, 5])
    np.testing.assert_array_equal(bf.read_cifar10(tmp_path, "test")[1], [4, 5])


@pytest.mark.parametrize("label_mode", ["fine", "coarse"])
def test_cifar100_round_trip_byte_for_byte(tmp_path, label_mode):
    images, fine, coarse = _images(5, 32), _labels(5, 100), _labels(5, 20, seed=2)
    bf.write_cifar100(tmp_path / "a", "train", images, fine, coarse)
    got_x, got_y = bf.read_cifar100(tmp_path / "a", "train", label_mode=label_mode)
    np.testing.assert_array_equal(got_x, images)
    np.testing.assert_array_equal(got_y, fine if label_mode == "fine" else coarse)
    _, other = bf.read_cifar100(tmp_path / "a", "train", "coarse" if label_mode == "fine" else "fine")
    bf.write_cifar100(tmp_path / "b", "train", got_x, *((got_y, other) if label_mode == "fine" else (other, got_y)))
    _same_bytes(tmp_path / "a", tmp_path / "b")


def test_stl10_round_trip_byte_for_byte(tmp_path):
    data = {"train": (_images(4, 96), _labels(4, 10)), "test": (_images(3, 96, 5), _labels(3, 10, 6))}
    for split, (images, labels) in data.items():
        bf.write_stl10(tmp_path / "a", split, images, labels)
    unlabelled = _images(3, 96, 7)
    bf.write_stl10(tmp_path / "a", "unlabelled", unlabelled)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "test_X.bin", "test_y.bin", "train_X.bin", "train_y.bin", "unlabeled_X.bin"
    ]
    for split, (images, labels) in data.items():
        got_x, got_y = bf.read_stl10(tmp_path / "a", split)
        np.testing.assert_array_equal(got_x, images)
        np.testing.assert_array_equal(got_y, labels)
        assert got_y.dtype == np.int32
        bf.write_stl10(tmp_path / "b", split, got_x, got_y)
    for spelling in ("unlabelled", "unlabeled"):
        got_x, got_y = bf.read_stl10(tmp_path / "a", spelling)
        assert isinstance(got_x, np.memmap)
        np.testing.assert_array_equal(got_x, unlabelled)
        np.testing.assert_array_equal(got_y, [-1, -1, -1])
    bf.write_stl10(tmp_path / "b", "unlabeled", got_x)
    _same_bytes(tmp_path / "a", tmp_path / "b")
    # The y file stores 1..10.
    np.testing.assert_array_equal(np.fromfile(tmp_path / "a" / "train_y.bin", np.uint8), data["train"][1] + 1)


# ------------------------------------------------ layouts built independently


def _cifar_bytes_by_hand(image, header):
    """One record: header bytes, then pixel (r, c, ch) at len(header) + ch*1024 + r*32 + c."""
    record = np.zeros(len(header) + 3072, np.uint8)
    record[: len(header)] = header
    r, c, ch = np.indices((32, 32, 3))
    record[len(header) + ch * 1024 + r * 32 + c] = image[r, c, ch]
    return record.tobytes()


def test_cifar10_layout_by_hand(tmp_path):
    image = _images(1, 32)[0]
    (tmp_path / "test_batch.bin").write_bytes(_cifar_bytes_by_hand(image, [7]))
    images, labels = bf.read_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(images[0], image)
    assert labels.tolist() == [7]
    # One asymmetric pixel: red plane is channel 0, rows before columns.
    record = np.zeros(3073, np.uint8)
    record[1 + 1 * 1024 + 3 * 32 + 5] = 200  # (row 3, col 5, green)
    (tmp_path / "test_batch.bin").write_bytes(record.tobytes())
    images, _ = bf.read_cifar10(tmp_path, "test")
    assert images[0, 3, 5, 1] == 200 and images.sum() == 200


def test_cifar100_layout_by_hand(tmp_path):
    image = _images(1, 32, 3)[0]
    (tmp_path / "test.bin").write_bytes(_cifar_bytes_by_hand(image, [13, 87]))
    images, fine = bf.read_cifar100(tmp_path, "test")
    np.testing.assert_array_equal(images[0], image)
    assert fine.tolist() == [87] and bf.read_cifar100(tmp_path, "test", "coarse")[1].tolist() == [13]


def test_stl10_layout_by_hand(tmp_path):
    # Column-major planes, as stl10_input.py: pixel (row r, col c, ch) at ch*9216 + c*96 + r.
    image = _images(1, 96, 4)[0]
    raw = np.zeros(3 * 96 * 96, np.uint8)
    r, c, ch = np.indices((96, 96, 3))
    raw[ch * 9216 + c * 96 + r] = image[r, c, ch]
    (tmp_path / "test_X.bin").write_bytes(raw.tobytes())
    (tmp_path / "test_y.bin").write_bytes(bytes([10]))
    images, labels = bf.read_stl10(tmp_path, "test")
    np.testing.assert_array_equal(images[0], image)
    assert labels.tolist() == [9]
    # The official reader's transpose gives the same array.
    official = np.transpose(np.frombuffer(raw, np.uint8).reshape(-1, 3, 96, 96), (0, 3, 2, 1))
    np.testing.assert_array_equal(images, official)
    raw[:] = 0
    raw[2 * 9216 + 10 * 96 + 40] = 255  # (row 40, col 10, blue)
    (tmp_path / "test_X.bin").write_bytes(raw.tobytes())
    images, _ = bf.read_stl10(tmp_path, "test")
    assert images[0, 40, 10, 2] == 255 and images.sum() == 255


# ------------------------------------------------------------------ errors


def _raises(match_parts):
    return pytest.raises(DataError, match=".*".join(re.escape(p) for p in match_parts))


def test_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    for reader in (bf.read_cifar10, bf.read_cifar100, bf.read_stl10):
        # The library names its argument; a program names the flag (test_bad_inputs).
        with _raises([str(missing), "does not exist", "pass data_dir=DIR"]) as err:
            reader(missing, "train")
        assert err.value.argument == "data_dir"


def test_missing_files_list_expected_names(tmp_path):
    with _raises(["test_batch.bin is missing", "data_batch_1.bin", "test_batch.bin"]):
        bf.read_cifar10(tmp_path, "test")
    with _raises(["data_batch_1.bin is missing", "at least one"]):
        bf.read_cifar10(tmp_path, "train")
    with _raises(["train.bin is missing", "train.bin and test.bin"]):
        bf.read_cifar100(tmp_path, "train")
    with _raises(["train_X.bin is missing", "train_y.bin", "unlabeled_X.bin"]):
        bf.read_stl10(tmp_path, "train")
    bf.write_stl10(tmp_path, "train", _images(1, 96), [0])
    (tmp_path / "train_y.bin").unlink()
    with _raises(["train_y.bin is missing"]):
        bf.read_stl10(tmp_path, "train")


@pytest.mark.parametrize(
    "write, name, record",
    [
        (lambda d: bf.write_cifar10(d, "test", _images(2, 32), [1, 2]), "test_batch.bin", 3073),
        (lambda d: bf.write_cifar100(d, "test", _images(2, 32), [1, 2], [0, 1]), "test.bin", 3074),
        (lambda d: bf.write_stl10(d, "test", _images(2, 96), [1, 2]), "test_X.bin", 27648),
    ],
)
def test_truncated_file(tmp_path, write, name, record):
    write(tmp_path)
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:-1])
    reader = {3073: bf.read_cifar10, 3074: bf.read_cifar100, 27648: bf.read_stl10}[record]
    with _raises([name, f"is {2 * record - 1} bytes", f"{record}-byte", "download it again"]):
        reader(tmp_path, "test")


def test_empty_file(tmp_path):
    (tmp_path / "test_batch.bin").write_bytes(b"")
    with _raises(["test_batch.bin is 0 bytes"]):
        bf.read_cifar10(tmp_path, "test")


def _patch(path, offset, value):
    data = bytearray(path.read_bytes())
    data[offset] = value
    path.write_bytes(bytes(data))


def test_labels_out_of_range(tmp_path):
    bf.write_cifar10(tmp_path, "test", _images(3, 32), [0, 1, 2])
    _patch(tmp_path / "test_batch.bin", 3073, 10)  # label of record 1
    with _raises(["test_batch.bin", "label 10 (record 1", "0..9"]):
        bf.read_cifar10(tmp_path, "test")

    bf.write_cifar100(tmp_path, "test", _images(2, 32), [5, 6], [1, 2])
    _patch(tmp_path / "test.bin", 1, 100)  # fine label of record 0
    with _raises(["test.bin (fine labels)", "label 100 (record 0", "0..99"]):
        bf.read_cifar100(tmp_path, "test")
    _patch(tmp_path / "test.bin", 1, 5)
    _patch(tmp_path / "test.bin", 3074, 20)  # coarse label of record 1
    with _raises(["test.bin (coarse labels)", "label 20 (record 1", "0..19"]):
        bf.read_cifar100(tmp_path, "test", "coarse")

    bf.write_stl10(tmp_path, "train", _images(2, 96), [0, 9])
    for bad in (0, 11):
        _patch(tmp_path / "train_y.bin", 1, bad)
        with _raises(["train_y.bin", f"label {bad} (record 1", "1..10"]):
            bf.read_stl10(tmp_path, "train")


def test_stl10_image_and_label_counts_differ(tmp_path):
    bf.write_stl10(tmp_path, "train", _images(3, 96), [0, 1, 2])
    (tmp_path / "train_y.bin").write_bytes(bytes([1, 2]))
    with _raises(["train_X.bin holds 3 images", "train_y.bin holds 2 labels"]):
        bf.read_stl10(tmp_path, "train")


def test_stl10_x_file_of_cifar_sized_images(tmp_path):
    # 32x32 images written as an STL X file: size is no multiple of 3*96*96.
    (tmp_path / "train_X.bin").write_bytes(_images(5, 32).tobytes())
    (tmp_path / "train_y.bin").write_bytes(bytes([1] * 5))
    with _raises(["train_X.bin is 15360 bytes", "27648-byte STL-10 image records"]):
        bf.read_stl10(tmp_path, "train")


def test_writers_reject_bad_arrays(tmp_path):
    with _raises(["write_stl10", "uint8 of shape (N, 96, 96, 3)", "(2, 32, 32, 3)"]):
        bf.write_stl10(tmp_path, "train", _images(2, 32), [0, 1])
    with _raises(["write_cifar10", "float64 of shape"]):
        bf.write_cifar10(tmp_path, "test", _images(2, 32) / 255.0, [0, 1])
    with _raises(["write_cifar10", "2 images but labels of shape (3,)"]):
        bf.write_cifar10(tmp_path, "test", _images(2, 32), [0, 1, 2])
    with _raises(["write_cifar100 fine labels", "label 100", "0..99"]):
        bf.write_cifar100(tmp_path, "test", _images(1, 32), [100], [0])
    with _raises(["write_stl10", "label 10", "0..9"]):
        bf.write_stl10(tmp_path, "test", _images(1, 96), [10])
    with _raises(["unlabelled", "labels=None"]):
        bf.write_stl10(tmp_path, "unlabelled", _images(1, 96), [1])


def test_unknown_split(tmp_path):
    with _raises(["unknown CIFAR-10 split 'valid'", "train, test"]):
        bf.read_cifar10(tmp_path, "valid")
    with _raises(["unknown CIFAR-100 label mode 'medium'"]):
        bf.read_cifar100(tmp_path, "train", "medium")
