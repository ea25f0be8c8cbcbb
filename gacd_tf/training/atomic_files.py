"""Atomic, durable file writes: write to a temporary name, flush to disk, rename.

A kill (or a power cut) at any moment leaves either the old file or the
complete new one under the final name, never a partial file.
"""

import json
import os


def _fsync_path(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(write, path):
    """``write(tmp)`` to a temporary file beside ``path``, flush it, rename it to ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, ".tmp-" + os.path.basename(path))
    write(tmp)
    _fsync_path(tmp)
    os.replace(tmp, path)
    _fsync_path(folder, directory=True)  # the rename itself reaches the disk


def save_model_atomic(model, path):
    """``model.save(path)`` (a ``.keras`` file), atomically."""
    atomic_write(model.save, path)


def write_json_atomic(path, obj):
    """Writes ``obj`` as indented, key-sorted JSON, atomically."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(write, path)
