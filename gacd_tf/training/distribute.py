"""tf.distribute plumbing: strategies, logical CPU devices, cross-replica helpers.

Every helper is the identity on one device, so trainers call them
unconditionally. Under ``MirroredStrategy`` a trainer's ``train_step`` runs
once per replica on its slice of the global batch; these helpers let it act
on the *global* batch where a single-device run would (the memory-bank
update, the NCE normaliser Z, negative sampling, random draws), so N
replicas with global batch B take the same step as one device with batch B.
"""

import numpy as np
import tensorflow as tf

from gacd_tf.errors import ConfigError

STRATEGIES = ("default", "mirrored", "multi_worker")


def configure_cpu_devices(count):
    """Splits the first physical CPU into ``count`` logical devices.

    Must run before TensorFlow initialises its devices (before any op). Lets
    ``MirroredStrategy`` run with several replicas on a CPU-only machine.
    """
    if count is None or count <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError as err:
        raise ConfigError(f"cpu_devices={count} must be set before TensorFlow starts "
                          f"({err})").on("cpu_devices") from err


def make_strategy(name="default", cpu_devices=None):
    """A ``tf.distribute.Strategy`` by name.

    Args:
        name: "default" (one device), "mirrored" (all local GPUs, else the
            logical CPUs from ``cpu_devices``) or "multi_worker"
            (``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``).
        cpu_devices: split the CPU into this many logical devices first.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    configure_cpu_devices(cpu_devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    # Logical CPUs: reduce through one device. The default collective all-reduce
    # can launch the gradient reduction and synchronized batch norm's
    # reductions in different orders on different replicas (seen here with
    # TRADES' two training-mode passes: "Shape mismatch in the collective").
    return tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")],
        cross_device_ops=tf.distribute.ReductionToOneDevice())


def num_replicas():
    """Replicas in sync of the current strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def _replica_context():
    """The replica context when several replicas run this code, else None."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def all_gather(x):
    """Concatenates ``x`` over replicas along axis 0 (identity on one device)."""
    context = _replica_context()
    return x if context is None else context.all_gather(x, axis=0)


def local_rows(global_tensor, local_size):
    """This replica's rows of a tensor built for the gathered global batch.

    ``global_tensor`` is ordered as :func:`all_gather` orders the batch;
    ``local_size`` is this replica's batch size (replicas may differ on a
    last partial batch).
    """
    context = _replica_context()
    if context is None:
        return global_tensor
    local_size = tf.cast(local_size, tf.int32)
    sizes = context.all_gather(tf.reshape(local_size, [1]), axis=0)
    offset = tf.reduce_sum(sizes[: context.replica_id_in_sync_group])
    return global_tensor[offset: offset + local_size]


def run_on_replicas(strategy, fn, *arrays):
    """``fn`` on every replica's share of a global batch; the outputs in batch order.

    The evaluation's way of spreading a batch over the devices (and workers)
    of ``strategy``: the rows of ``arrays`` (NumPy, the same first dimension
    N) are split into one contiguous share per replica, each of ``ceil(N /
    replicas)`` rows (the last shares padded with copies of the last row),
    ``fn`` runs on each share under ``strategy.run``, and its outputs are
    gathered from every replica (and worker) and cut back to N rows. The
    answer equals one call on the whole batch as long as each output row
    depends on its own input rows only (the evaluation's attacks key their
    random draws per example, so they do). Every worker of a multi-worker
    strategy must call it with the same arrays.

    Args:
        strategy: a ``tf.distribute.Strategy`` (None: one device).
        fn: ``fn(*tensors) -> tensor or tuple of tensors``, each ``[rows, ...]``.
        *arrays: NumPy arrays ``[N, ...]``, N >= 1.

    Returns:
        a tuple of NumPy arrays ``[N, ...]``, one per output of ``fn``.
    """
    n = len(arrays[0])
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    if replicas == 1:
        outputs = fn(*(tf.convert_to_tensor(a) for a in arrays))
        return tuple(np.asarray(t) for t in tf.nest.flatten(outputs))
    share = -(-n // replicas)
    padding = share * replicas - n
    padded = [np.concatenate([a, np.repeat(a[-1:], padding, axis=0)]) if padding else a
              for a in arrays]

    def distribute(array):
        return strategy.experimental_distribute_values_from_function(
            lambda context: tf.convert_to_tensor(
                array[context.replica_id_in_sync_group * share:
                      (context.replica_id_in_sync_group + 1) * share]))

    dtypes = []

    def replica_fn(*tensors):
        outputs = [tf.convert_to_tensor(t) for t in tf.nest.flatten(fn(*tensors))]
        dtypes[:] = [t.dtype for t in outputs]
        # Collective all-gather (several workers) takes no bool, int8 or uint8.
        return tuple(tf.cast(t, tf.int32) if t.dtype in _NOT_GATHERED else t for t in outputs)

    # A plain function around fn: strategy.run would hand a tf.function with an
    # input signature the per-replica values themselves.
    outputs = strategy.run(replica_fn, args=tuple(distribute(a) for a in padded))
    return tuple(np.asarray(strategy.gather(t, axis=0))[:n].astype(dtype.as_numpy_dtype)
                 for t, dtype in zip(tf.nest.flatten(outputs), dtypes))


_NOT_GATHERED = (tf.bool, tf.int8, tf.uint8, tf.int16, tf.uint16)
