"""The callback that adds a trainer's end-of-epoch measurements to the epoch logs."""

import keras


class EpochEndLogs(keras.callbacks.Callback):
    """Adds ``trainer.epoch_end_logs()`` to each epoch's logs (CSV, TensorBoard, History).

    Some measurements are about the state an epoch leaves behind, not about
    its steps, and are too costly to take every step: GACD's collapse
    detector reads its whole ``[M, d]`` memory banks (``O(M d)``, measured at
    tens of milliseconds per bank at M = 50,000 on 2 CPU cores). A trainer
    declares them in ``epoch_end_logs() -> {name: scalar}``; this callback,
    placed before the loggers, adds them to the logs every callback sees.
    Trainers without the method are left alone. ``fit_resumable`` (hence
    every program) adds it; with a plain ``fit``, pass it yourself.

    Example:
    >>> gacd.fit(dataset, epochs=5, callbacks=[EpochEndLogs()])  # doctest: +SKIP
    """

    def on_epoch_end(self, epoch, logs=None):
        measure = getattr(self.model, "epoch_end_logs", None)
        if logs is not None and callable(measure):
            logs.update({name: float(value) for name, value in measure().items()})
