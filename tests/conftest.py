"""Shared pytest fixtures.

Real CIFAR-10 (official binary layout) is looked up in $GACD_DATA_DIR, then in
``../shared/data/cifar10`` beside the repository; tests that need it skip with
the reason when it is absent.
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from gacd_tf.training.distribute import configure_cpu_devices  # noqa: E402

# Two logical CPU devices for the whole session, before TensorFlow starts, so
# the MirroredStrategy parity tests run here; single-device tests use CPU:0.
configure_cpu_devices(2)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _find_cifar10():
    candidates = []
    if os.environ.get("GACD_DATA_DIR"):
        candidates.append(pathlib.Path(os.environ["GACD_DATA_DIR"]))
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "cifar10")
    for path in candidates:
        if (path / "test_batch.bin").is_file():
            return path
    return None


@pytest.fixture(scope="session")
def cifar10_dir():
    path = _find_cifar10()
    if path is None:
        pytest.skip(
            "real CIFAR-10 binaries not found: set GACD_DATA_DIR or place them in "
            "../shared/data/cifar10 (data_batch_*.bin, test_batch.bin)"
        )
    return path


@pytest.fixture(autouse=True)
def _clear_keras_session():
    yield
    import keras

    keras.backend.clear_session()
