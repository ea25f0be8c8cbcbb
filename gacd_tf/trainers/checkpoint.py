"""Saving the trained network (not the trainer wrapper) as ``.keras`` files."""

import math
import os

import keras


def save_model_atomic(model, path):
    """``model.save(path)`` via a temporary file and a rename.

    A kill during the write leaves the previous file at ``path`` intact.
    """
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), ".tmp-" + os.path.basename(path))
    model.save(tmp)
    os.replace(tmp, path)


class ModelCheckpoint(keras.callbacks.Callback):
    """Saves ``trainer.model`` (the network being trained) after each epoch.

    ``last_path`` is written every epoch; ``best_path`` (optional) when the
    monitored log value improves. Files are written atomically.

    Args:
        last_path: e.g. ``model_dir/model.keras``.
        best_path: e.g. ``model_dir/best.keras``, or None.
        monitor: log key deciding "best", e.g. ``val_adv_accuracy``.
        mode: "max" or "min".
    """

    def __init__(self, last_path, best_path=None, monitor="val_adv_accuracy", mode="max"):
        super().__init__()
        self.last_path, self.best_path = last_path, best_path
        self.monitor, self.mode = monitor, mode
        self.best = -math.inf if mode == "max" else math.inf
        self.best_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        network = self.model.model
        save_model_atomic(network, self.last_path)
        value = (logs or {}).get(self.monitor)
        if self.best_path is None or value is None:
            return
        value = float(value)
        improved = value > self.best if self.mode == "max" else value < self.best
        if improved:
            self.best, self.best_epoch = value, epoch + 1
            save_model_atomic(network, self.best_path)
