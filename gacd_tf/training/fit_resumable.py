"""``fit`` that picks up a killed run where its last checkpoint left it."""

import os

import keras
import numpy as np

from gacd_tf.errors import TrainingError
from gacd_tf.training.epoch_end_logs import EpochEndLogs
from gacd_tf.training.training_checkpoint import find_seed_generators, read_state


def _restore(trainer, checkpoint, state, directory=None):
    directory = directory or checkpoint.directory
    path = os.path.join(directory, state["weights"])
    if state["steps_per_epoch"] != checkpoint.steps_per_epoch:
        raise TrainingError(
            f"checkpoint {path} was written with {state['steps_per_epoch']} steps per epoch, "
            f"this run has {checkpoint.steps_per_epoch} (other data or batch size); resume "
            "with the data and settings that started the run, or use a new checkpoint folder")
    try:
        trainer.load_weights(path)
    except Exception as err:  # h5py / Keras raise many types for a mismatched file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrainingError(
            f"checkpoint {path} does not fit this model ({first}); resume with the settings "
            f"that started the run, or use a new checkpoint folder") from err
    generators = find_seed_generators(trainer)
    missing = set(state["seed_generators"]) ^ set(generators)
    if missing:
        raise TrainingError(f"checkpoint {directory} holds random generators that do "
                            f"not match this trainer ({', '.join(sorted(missing))}); resume with "
                            "the settings that started the run, or use a new checkpoint folder")
    for name, generator in generators.items():
        generator.state.assign(np.asarray(state["seed_generators"][name],
                                          dtype=generator.state.dtype))
    checkpoint.restore_from(state)


def fit_resumable(trainer, dataset_fn, epochs, steps_per_epoch, checkpoint, callbacks=(),
                  validation_data=None, verbose=1):
    """Trains ``trainer`` for ``epochs``, resuming from ``checkpoint`` when it holds a run.

    Fresh start: builds the optimizer (so its slots are saved from the first
    checkpoint on), then ``fit`` from epoch 0. Resume: loads the last
    committed checkpoint (weights, optimizer, memory banks, random-generator
    states, best value), finishes the interrupted epoch on the batches it
    would have seen (``dataset_fn(epoch, step)``), then runs the remaining
    epochs. With the same data and ``tf.config.experimental.
    enable_op_determinism()``, the resumed run ends with exactly the weights
    of an uninterrupted one. A run already completed is not trained again.

    Callbacks are called once per ``fit`` (twice when resuming mid-epoch):
    a ``keras.callbacks.CSVLogger`` among them is switched to append, and its
    file is cleared on a fresh start. Loss trackers of the interrupted epoch
    restart from the resumed step (its logged means cover the rest only).

    Args:
        trainer: a compiled trainer (fresh optimizer).
        dataset_fn: ``dataset_fn(start_epoch, start_step)`` -> the stream of
            training batches from there to the last epoch (e.g.
            ``make_dataset(..., epochs=epochs, start_epoch=e, start_step=s)``).
        epochs: total epochs of the run.
        steps_per_epoch: batches per epoch.
        checkpoint: a :class:`TrainingCheckpoint` for this run (or phase).
        callbacks: further Keras callbacks.
        validation_data: passed to ``fit``.
        verbose: passed to ``fit``.

    Returns:
        dict with ``resumed_from`` (``{"epoch", "step_in_epoch",
        "global_step"}`` or None), ``completed_before`` (True when the run
        had already finished) and ``train_seconds`` (the training wall time
        summed over every invocation; an earlier invocation counts up to its
        last checkpoint, so work a kill threw away is counted once, when
        redone).

    Raises:
        TrainingError: a NaN/Inf loss (naming the step and the last good
            checkpoint), or a checkpoint that does not fit the trainer.
    """
    return resume_and_fit(trainer, dataset_fn, epochs, steps_per_epoch, checkpoint, _fit,
                          callbacks=callbacks, validation_data=validation_data, verbose=verbose)


def resume_and_fit(trainer, dataset_fn, epochs, steps_per_epoch, checkpoint, fit, callbacks=(),
                   validation_data=None, verbose=1, restore_directory=None):
    """:func:`fit_resumable` with the training loop ``fit`` and where to resume from.

    Shared by :func:`fit_resumable` (``fit`` = Keras ``fit``) and
    :func:`gacd_tf.training.fit_multi_worker_resumable.fit_multi_worker_resumable`
    (the multi-worker loop, whose non-chief workers write their checkpoints
    to a temporary folder but resume from the chief's).

    Args:
        fit: ``fit(trainer, dataset, initial_epoch, epochs, steps, callbacks,
            validation_data, verbose)`` trains epochs ``initial_epoch`` ..
            ``epochs - 1`` of ``steps`` batches each.
        restore_directory: the folder of the committed checkpoint to resume
            from (default ``checkpoint.directory``).
        Others: as :func:`fit_resumable`.
    """
    restore_directory = restore_directory or checkpoint.directory
    state = read_state(restore_directory)
    checkpoint.set_model(trainer)
    with trainer.distribute_strategy.scope():
        if not trainer.optimizer.built:
            # Slot order = trainable_variables order, the same in every process.
            trainer.optimizer.build(trainer.trainable_variables)
    callbacks = list(callbacks)
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.CSVLogger):
            if state is None and os.path.exists(callback.filename):
                os.remove(callback.filename)
            callback.append = True
    info = {"resumed_from": None, "completed_before": False}
    epoch, step = 0, 0
    if state is not None:
        _restore(trainer, checkpoint, state, restore_directory)
        epoch, step = state["epoch"], state["step_in_epoch"]
        info["resumed_from"] = {k: state[k] for k in ("epoch", "step_in_epoch", "global_step")}
        if state["completed"] or epoch >= epochs:
            info["completed_before"] = bool(state["completed"])
            _finish(checkpoint, epochs)
            info["train_seconds"] = round(checkpoint.train_seconds(), 1)
            return info
    # End-of-epoch measurements first, so the checkpoint and the loggers see them.
    all_callbacks = [EpochEndLogs(), checkpoint] + callbacks
    checkpoint.start_clock()
    if step:
        # The rest of the interrupted epoch, then the remaining epochs.
        fit(trainer, dataset_fn(epoch, step), epoch, epoch + 1, steps_per_epoch - step,
            all_callbacks, validation_data, verbose)
        _raise_on_failure(checkpoint)
        epoch += 1
    if epoch < epochs and not trainer.stop_training:
        fit(trainer, dataset_fn(epoch, 0), epoch, epochs, steps_per_epoch, all_callbacks,
            validation_data, verbose)
        _raise_on_failure(checkpoint)
    _finish(checkpoint, epochs)
    info["train_seconds"] = round(checkpoint.train_seconds(), 1)
    return info


def _fit(trainer, dataset, initial_epoch, epochs, steps, callbacks, validation_data, verbose):
    trainer.fit(dataset, initial_epoch=initial_epoch, epochs=epochs, steps_per_epoch=steps,
                validation_data=validation_data, callbacks=callbacks, verbose=verbose,
                shuffle=False)


def _finish(checkpoint, epochs):
    state = read_state(checkpoint.directory)
    if state is not None and not state["completed"] and state["epoch"] >= epochs:
        checkpoint.save(state["epoch"] - 1, checkpoint.steps_per_epoch, completed=True)


def _raise_on_failure(checkpoint):
    failure = checkpoint.failure
    if not failure:
        return
    good = checkpoint.last_good()
    if good is None:
        where = "no checkpoint was written before it"
    else:
        where = (f"the last good checkpoint is {os.path.join(checkpoint.directory, good['weights'])}"
                 f" (after {good['epoch']} epochs and {good['step_in_epoch']} steps, global step "
                 f"{good['global_step']}), left untouched")
    raise TrainingError(
        f"training stopped: {failure['what']} at epoch {failure['epoch'] + 1}, step "
        f"{failure['step_in_epoch']} (global step {failure['global_step']}); {where}. Lower "
        "the learning rate or check the inputs, and start again with a new checkpoint folder")

