"""A custom training loop for the trainers under ``MultiWorkerMirroredStrategy``.

Keras 3's ``fit`` does not run under ``MultiWorkerMirroredStrategy`` (it fails
with "Attempt to convert a value (PerReplica:{...}) ... to a Tensor"), but the
trainers' ``train_step`` does: :func:`fit_multi_worker` runs it per replica
with ``strategy.run`` inside a ``tf.function``, the way ``fit`` does under
``MirroredStrategy``. Gradients are summed across every replica of every
worker by the optimizer (``RobustTrainer.apply_update`` divides the loss by
the replica count), and the cross-replica helpers of
:mod:`gacd_tf.training.distribute` (random starts, negatives, the GACD memory bank)
act on the global batch, so W workers with global batch B take the same step
as one device with batch B.

One detail makes the per-replica call work: with one replica per worker,
``ReplicaContext.all_gather`` of a tensor that carries no device (the
``tf.function``'s batch inputs) fails with "ValueError: destinations can not
be empty". The loop therefore passes the batch through ``tf.identity`` inside
the replica function, which places it on the replica's device.
"""

import json
import os

import keras
import tensorflow as tf


def is_chief_task(task_type, task_id, cluster):
    """True for the task that writes a cluster's files: "chief", else worker 0.

    Args:
        task_type: "chief", "worker", ... (None or "" outside a cluster).
        task_id: the task's index.
        cluster: ``{job name: [addresses]}`` (TF_CONFIG's ``cluster``).
    """
    if not task_type:
        return True
    return task_type == "chief" or (
        task_type == "worker" and int(task_id or 0) == 0 and "chief" not in (cluster or {}))


def is_chief_from_tf_config(tf_config=None):
    """:func:`is_chief_task` for ``TF_CONFIG`` (a JSON string; default the environment's).

    Without ``TF_CONFIG`` (or without a ``task``) the process is its own chief.
    """
    text = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    config = json.loads(text) if text.strip() else {}
    task = config.get("task") or {}
    return is_chief_task(task.get("type"), task.get("index", 0), config.get("cluster"))


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return is_chief_task(resolver.task_type, resolver.task_id,
                         resolver.cluster_spec().as_dict())


def fit_multi_worker(trainer, dataset, epochs=1, steps_per_epoch=None, callbacks=None,
                     verbose=1, initial_epoch=0, validation_data=None):
    """Trains ``trainer`` with its own ``train_step`` under its strategy.

    Runs on every worker of a ``MultiWorkerMirroredStrategy`` cluster (each
    process calls it with the same arguments); it also works under
    ``MirroredStrategy`` and without a strategy. The trainer must have been
    built and compiled under ``strategy.scope()``.

    Each step is ``strategy.run(trainer.train_step)`` on the replica's slice
    of the global batch; the logs are the trainers' running means, averaged
    over replicas (exact when replicas get equal batch sizes, e.g. a global
    batch divisible by the replica count with ``drop_remainder=True``).
    Every worker must run the same number of steps: give all workers the
    same dataset (``tf.data`` shards it per worker) or the same
    ``steps_per_epoch``.

    Args:
        trainer: a compiled :class:`~gacd_tf.methods.RobustTrainer` (any
            ``keras.Model`` whose ``train_step`` takes one batch and returns
            a dict of scalars).
        dataset: a ``tf.data.Dataset`` of *global* batches (distributed with
            ``strategy.experimental_distribute_dataset``) or an already
            distributed dataset.
        epochs: number of epochs.
        steps_per_epoch: steps per epoch, drawn from one iterator over the
            whole run (as in ``fit``); ``None`` = one pass over ``dataset``
            per epoch. Training stops early if the data run out.
        callbacks: Keras callbacks (``on_epoch_end`` etc. get the logs; only
            the chief worker should write files, e.g. checkpoints).
        verbose: 1 prints each epoch's logs on the chief worker.
        initial_epoch: the epoch to start from (as in ``fit``): epochs
            ``initial_epoch`` .. ``epochs - 1`` run.
        validation_data: a ``tf.data.Dataset`` of global batches evaluated
            with the trainer's ``test_step`` after every epoch, per replica;
            its logs join the epoch's under a ``val_`` prefix (running means
            averaged over replicas: exact when every batch splits evenly).

    Returns:
        A ``keras.callbacks.History``; ``history.history[name]`` lists the
        per-epoch values (identical on every worker).

    Example:
    >>> strategy = make_strategy("multi_worker")  # doctest: +SKIP
    >>> with strategy.scope():
    ...     trainer = AdversarialTrainer(build_model("resnet20"))
    ...     trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    >>> fit_multi_worker(trainer, make_dataset(train, 128, training=True), epochs=2)
    """
    strategy = trainer.distribute_strategy
    chief = _is_chief(strategy)
    with strategy.scope():
        # Optimizer slots must exist before the tf.function traces the step.
        if not trainer.optimizer.built:
            trainer.optimizer.build(trainer.trainable_variables)
    if isinstance(dataset, tf.data.Dataset):
        dataset = strategy.experimental_distribute_dataset(dataset)

    def replica_step(batch):
        # Give the batch the replica's device (see the module docstring).
        batch = tf.nest.map_structure(tf.identity, batch)
        return trainer.train_step(batch)

    @tf.function
    def train_function(batch):
        outputs = strategy.run(replica_step, args=(batch,))
        return tf.nest.map_structure(
            lambda v: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None), outputs)

    if isinstance(validation_data, tf.data.Dataset):
        validation_data = strategy.experimental_distribute_dataset(validation_data)

    def replica_test_step(batch):
        batch = tf.nest.map_structure(tf.identity, batch)
        return trainer.test_step(batch)

    @tf.function
    def test_function(batch):
        outputs = strategy.run(replica_test_step, args=(batch,))
        return tf.nest.map_structure(
            lambda v: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None), outputs)

    def validate():
        trainer.reset_metrics()
        outputs = None
        for batch in validation_data:
            outputs = test_function(batch)
        return {} if outputs is None else {f"val_{k}": float(v) for k, v in outputs.items()}

    history = keras.callbacks.History()
    callbacks = keras.callbacks.CallbackList(
        list(callbacks or []) + [history], model=trainer, epochs=epochs, steps=steps_per_epoch)
    iterator = iter(dataset) if steps_per_epoch is not None else None
    trainer.stop_training = False
    callbacks.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, epochs):
        trainer.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        batches = iter(dataset) if iterator is None else iterator
        step, outputs = 0, None
        while steps_per_epoch is None or step < steps_per_epoch:
            batch = next(batches, None)
            if batch is None:
                if steps_per_epoch is not None:
                    trainer.stop_training = True  # data ran out (as fit does)
                break
            callbacks.on_train_batch_begin(step)
            outputs = train_function(batch)
            callbacks.on_train_batch_end(step, {k: float(v) for k, v in outputs.items()})
            step += 1
            if trainer.stop_training:  # a callback stopped the run (e.g. a NaN loss)
                break
        if outputs is None:
            break
        logs = {k: float(v) for k, v in outputs.items()}
        if validation_data is not None and not trainer.stop_training:
            logs.update(validate())
        callbacks.on_epoch_end(epoch, logs)
        if verbose and chief:
            print(f"Epoch {epoch + 1}/{epochs} - "
                  + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()), flush=True)
        if trainer.stop_training:
            break
    callbacks.on_train_end(logs)
    return history
