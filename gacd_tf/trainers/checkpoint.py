"""Saving the trained network (not the trainer wrapper) as ``.keras`` files."""

import math
import os

import keras


def _atomic(write, path):
    """``write(tmp)`` then rename to ``path``: a kill mid-write keeps the old file."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), ".tmp-" + os.path.basename(path))
    write(tmp)
    os.replace(tmp, path)


def save_model_atomic(model, path):
    """``model.save(path)`` (a ``.keras`` file), atomically."""
    _atomic(model.save, path)


def save_weights_atomic(model, path):
    """``model.save_weights(path)`` (a ``.weights.h5`` file), atomically."""
    _atomic(model.save_weights, path)


class ModelCheckpoint(keras.callbacks.Callback):
    """Saves ``trainer.model`` (the network being trained) after each epoch.

    ``last_path`` is written every epoch; ``best_path`` (optional) when the
    monitored log value improves; ``state_path`` (optional) holds all the
    trainer's variables (``save_weights``: the network, embedding heads, the
    GACD memory bank and Z, the teacher). Files are written atomically.

    Args:
        last_path: e.g. ``model_dir/model.keras``.
        best_path: e.g. ``model_dir/best.keras``, or None.
        monitor: log key deciding "best", e.g. ``val_adv_accuracy``.
        mode: "max" or "min".
        state_path: e.g. ``model_dir/trainer.weights.h5``, or None.
    """

    def __init__(self, last_path, best_path=None, monitor="val_adv_accuracy", mode="max",
                 state_path=None):
        super().__init__()
        self.last_path, self.best_path, self.state_path = last_path, best_path, state_path
        self.monitor, self.mode = monitor, mode
        self.best = -math.inf if mode == "max" else math.inf
        self.best_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        network = self.model.model
        save_model_atomic(network, self.last_path)
        if self.state_path:
            save_weights_atomic(self.model, self.state_path)
        value = (logs or {}).get(self.monitor)
        if self.best_path is None or value is None:
            return
        value = float(value)
        improved = value > self.best if self.mode == "max" else value < self.best
        if improved:
            self.best, self.best_epoch = value, epoch + 1
            save_model_atomic(network, self.best_path)
