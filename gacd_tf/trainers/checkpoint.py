"""Atomic writes of ``.keras`` files (write, then rename)."""

import os


def _atomic(write, path):
    """``write(tmp)`` then rename to ``path``: a kill mid-write keeps the old file."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), ".tmp-" + os.path.basename(path))
    write(tmp)
    os.replace(tmp, path)


def save_model_atomic(model, path):
    """``model.save(path)`` (a ``.keras`` file), atomically."""
    _atomic(model.save, path)

