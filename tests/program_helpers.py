"""Helpers shared by the tests that run the absl programs in subprocesses."""

import os
import subprocess
import sys

import numpy as np

from gacd_tf.data import write_cifar10


def run_program(module, *args, timeout=300):
    """Runs ``python -m gacd_tf.programs.MODULE ARGS`` offline; returns the CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("GACD_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", f"gacd_tf.programs.{module}", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def write_tiny_cifar10(folder, train=40, test=20, seed=0):
    """Random images with labels 0..9 in turn, in the official CIFAR-10 binary layout."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        write_cifar10(folder, split, images, labels)
    return folder
