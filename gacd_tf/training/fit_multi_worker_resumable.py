"""Resumable training on several workers (``MultiWorkerMirroredStrategy``)."""

import os

import tensorflow as tf

from gacd_tf.errors import TrainingError
from gacd_tf.training.fit_resumable import resume_and_fit
from gacd_tf.training.multi_worker_loop import fit_multi_worker
from gacd_tf.training.training_checkpoint import read_state

# What the collective ops raise when a peer worker died or restarted.
PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.AbortedError,
                 tf.errors.DeadlineExceededError, tf.errors.CancelledError)


def _fit_multi_worker(trainer, dataset, initial_epoch, epochs, steps, callbacks, validation_data,
                      verbose):

    fit_multi_worker(trainer, dataset, epochs=epochs, steps_per_epoch=steps,
                     callbacks=callbacks, verbose=verbose, initial_epoch=initial_epoch,
                     validation_data=validation_data)


def check_same_step(trainer):
    """Raises when the workers of the cluster did not resume from the same step.

    Every worker reads the committed checkpoint of the chief; if a worker read
    another one (a ``--model_dir`` that is not on a shared file system, or a
    checkpoint committed between two workers' reads), their steps differ and
    training would silently mix two states.
    """
    strategy = trainer.distribute_strategy
    replicas = strategy.num_replicas_in_sync

    @tf.function
    def sums():
        def replica():
            local = tf.cast(tf.identity(trainer.optimizer.iterations), tf.int64)
            context = tf.distribute.get_replica_context()
            return context.all_reduce("sum", tf.stack([local, local * local]))

        return strategy.experimental_local_results(strategy.run(replica))[0]

    total, squares = (int(v) for v in sums().numpy())
    # All equal <=> n * sum(s^2) == (sum s)^2 (Cauchy-Schwarz).
    if replicas * squares != total * total:
        raise TrainingError(
            f"the workers resumed from different steps (mean {total / replicas:g}): every "
            "worker must read the chief's checkpoints, so the checkpoint folder must be on a "
            "file system that every worker mounts (NFS, a cloud bucket); start all workers "
            "again")
    return total // replicas


def fit_multi_worker_resumable(trainer, dataset_fn, epochs, steps_per_epoch, checkpoint,
                               restore_directory, callbacks=(), validation_data=None, verbose=1):
    """:func:`~gacd_tf.training.fit_resumable` for a ``MultiWorkerMirroredStrategy`` cluster.

    Every worker calls it with the same arguments except ``checkpoint``: the
    chief's :class:`~gacd_tf.training.TrainingCheckpoint` writes to the
    run's folder (the committed copy), every other worker's to a temporary
    folder of its own (the files are identical; writing them keeps every
    worker on the same code path). Every worker resumes from the chief's
    committed checkpoint in ``restore_directory``, which therefore must be
    on a file system all workers see, as for Keras' ``BackupAndRestore``.

    When a worker dies, the collective operations of the others fail (after
    TensorFlow's peer health check, or its collective timeout): the whole
    cluster is restarted with the same commands, and every worker picks up
    at the last committed checkpoint. The global batches, random generator
    states and optimizer are restored as :func:`fit_resumable` does, so with
    ``--deterministic`` the resumed run ends with the weights of an
    uninterrupted one.

    Args:
        trainer: a trainer built and compiled under the strategy's scope.
        dataset_fn: ``dataset_fn(start_epoch, start_step)`` -> the stream of
            *global* training batches (each worker builds the same stream;
            ``tf.data`` hands each worker its part of every batch).
        epochs: total epochs of the run.
        steps_per_epoch: global batches per epoch.
        checkpoint: this worker's :class:`TrainingCheckpoint`.
        restore_directory: the chief's checkpoint folder of this phase.
        callbacks: further Keras callbacks (give non-chief workers ones that
            write to temporary places).
        validation_data: global batches evaluated after every epoch.
        verbose: 1 prints each epoch's logs (on the chief only).

    Returns:
        fit_resumable's dict (``resumed_from``, ``completed_before``,
        ``train_seconds``).

    Example:
    >>> ckpt = TrainingCheckpoint(ckpt_dir if chief else tempfile.mkdtemp(),
    ...                           steps_per_epoch=390)  # doctest: +SKIP
    >>> fit_multi_worker_resumable(trainer, dataset_fn, 10, 390, ckpt,
    ...                            restore_directory=ckpt_dir)  # doctest: +SKIP

    Reference:
        Keras ``BackupAndRestore`` under ``MultiWorkerMirroredStrategy``
        (tf.keras 2.x): chief writes, others write to temporary folders, all
        restore from the chief's backup.
    """

    def dataset(start_epoch, start_step):
        ds = dataset_fn(start_epoch, start_step)
        options = tf.data.Options()
        # Each worker takes its part of every global batch (not every other file).
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        return ds.with_options(options)

    def fit(trainer, ds, *args):
        try:
            check_same_step(trainer)
            _fit_multi_worker(trainer, ds, *args)
        except PEER_FAILURES as err:
            state = read_state(restore_directory)
            where = ("no checkpoint was committed yet: they start from the beginning"
                     if state is None else
                     f"they resume from the last committed checkpoint, global step "
                     f"{state['global_step']} ({os.path.join(restore_directory, state['weights'])})")
            first = str(err).strip().splitlines()
            raise TrainingError(
                f"another worker of the cluster stopped ({type(err).__name__}: "
                f"{first[0][:160] if first else ''}); start every stopped worker again with "
                f"the same command and TF_CONFIG: {where}") from err

    if validation_data is not None:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        validation_data = validation_data.with_options(options)
    return resume_and_fit(trainer, dataset, epochs, steps_per_epoch, checkpoint, fit,
                          callbacks=callbacks, validation_data=validation_data, verbose=verbose,
                          restore_directory=restore_directory)
