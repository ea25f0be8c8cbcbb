"""The programs' device flags: strategy, precision, XLA, and several workers.

``--strategy`` (one device, mirrored, or several workers from ``TF_CONFIG``),
``--mixed_precision`` and ``--jit_compile``; under ``--strategy=multi_worker``
only the chief writes into ``--model_dir`` (:func:`is_chief`,
:func:`worker_output_dir`).
"""

import atexit
import os
import shutil
import tempfile

import keras
import tensorflow as tf
from absl import flags, logging

from gacd_tf.errors import ConfigError
from gacd_tf.programs.flag_core import FLAGS, DEFINE_bool, DEFINE_enum, DEFINE_integer
from gacd_tf.training import STRATEGIES, is_chief_from_tf_config, make_strategy


def define_distribute_flags():
    define_strategy_flags()
    define_precision_flags()


def define_strategy_flags():
    """``--strategy`` and ``--cpu_devices``."""
    DEFINE_enum("strategy", "default", list(STRATEGIES),
                "tf.distribute strategy: one device, all local GPUs (or --cpu_devices "
                "logical CPUs) mirrored, or several workers (TF_CONFIG).")
    DEFINE_integer("cpu_devices", None, "Split the CPU into this many logical devices "
                   "(runs --strategy=mirrored without GPUs, e.g. in tests).", lower_bound=1)


def define_precision_flags():
    """``--mixed_precision`` and ``--jit_compile`` (GPU speed switches)."""
    DEFINE_enum("mixed_precision", "off", list(PRECISION_POLICIES),
                "Compute in float16 (with loss scaling) or bfloat16, keeping variables, "
                "logits, losses, NCE scores, the memory bank and Sinkhorn in float32; "
                "'off' = float32 everywhere.")
    DEFINE_bool("jit_compile", None, "Compile the training step with XLA (unset: Keras' "
                "'auto', i.e. XLA on a single GPU, off on CPUs and under tf.distribute).")
    if "strategy" in FLAGS:
        flags.register_multi_flags_validator(
            ["strategy", "jit_compile"],
            lambda v: not (v["strategy"] == "multi_worker" and v["jit_compile"]),
            message="--jit_compile is not supported with --strategy=multi_worker (the "
                    "multi-worker loop does not compile with XLA); drop --jit_compile")


# --mixed_precision -> the Keras dtype policy.
PRECISION_POLICIES = {"off": "float32", "float16": "mixed_float16",
                      "bfloat16": "mixed_bfloat16"}


def setup_precision():
    """Sets the global Keras dtype policy of ``--mixed_precision`` (before building models)."""
    if "mixed_precision" in FLAGS:
        keras.mixed_precision.set_global_policy(PRECISION_POLICIES[FLAGS.mixed_precision])


def strategy_from_flags(divisible_batch=True):
    """The strategy of ``--strategy``; call before any TensorFlow op.

    ``divisible_batch``: refuse a ``--batch_size`` that the replicas do not
    divide (training; the evaluation pads a batch's last share instead).
    """
    # --strategy=multi_worker: TF_CONFIG names the cluster; fit_phase trains with
    # the library's multi-worker loop (Keras 3's fit cannot run there).
    strategy = make_strategy(FLAGS.strategy, FLAGS.cpu_devices)  # cpu_devices: its flag's name
    replicas = strategy.num_replicas_in_sync
    if divisible_batch and FLAGS.batch_size % replicas:
        raise ConfigError(
            f"--batch_size={FLAGS.batch_size} is not divisible by the {replicas} replicas of "
            f"--strategy={FLAGS.strategy}; use a multiple of {replicas}")
    logging.info("strategy %s with %d replica(s)", FLAGS.strategy, replicas)
    return strategy


# -- several workers (--strategy=multi_worker) --------------------------------------
_CHIEF_DIRS = {}  # a non-chief worker's temporary output folder -> the run's --model_dir


def is_multi_worker(strategy):
    """True for a ``MultiWorkerMirroredStrategy``."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief():
    """True unless this process is a non-chief worker of ``--strategy=multi_worker``.

    The chief (TF_CONFIG's "chief" task, else worker 0) writes the run's
    files; the others write theirs to a temporary folder
    (:func:`worker_output_dir`), as Keras' ``BackupAndRestore`` does.
    """
    if "strategy" not in FLAGS or FLAGS.strategy != "multi_worker":
        return True
    return is_chief_from_tf_config()


def worker_output_dir(model_dir):
    """A temporary folder standing in for ``model_dir`` on a non-chief worker.

    The program writes there what the chief writes into ``model_dir``
    (model.keras, metrics.json, logs, checkpoints); it is deleted when the
    process ends. :func:`chief_dir` maps it back (checkpoints are resumed from
    the chief's).
    """
    temporary = tempfile.mkdtemp(prefix="gacd-worker-")
    atexit.register(shutil.rmtree, temporary, ignore_errors=True)
    _CHIEF_DIRS[temporary] = model_dir
    return temporary


def this_worker_dir(model_dir):
    """``model_dir`` on the chief; on another worker a :func:`worker_output_dir`.

    Call after :func:`gacd_tf.programs.common.setup_runtime`: a non-chief
    worker's logs drop to warnings and Keras' progress output stops (the
    chief writes the run's files and reports).
    """
    if is_chief():
        return model_dir
    quiet_worker()
    return worker_output_dir(model_dir)


def quiet_worker():
    """A non-chief worker's logs drop to warnings and Keras' progress output stops
    (progress and logs come from the chief)."""
    logging.set_verbosity(logging.WARNING)
    keras.utils.disable_interactive_logging()


def chief_dir(model_dir):
    """The run's --model_dir for a folder of :func:`worker_output_dir` (else ``model_dir``)."""
    for temporary, real in _CHIEF_DIRS.items():
        if model_dir == temporary or model_dir.startswith(temporary + os.sep):
            return real + model_dir[len(temporary):]
    return model_dir
