"""Plumbing shared by the gacd_tf programs: model and optimizer flags, output
folders, resumable training phases, results.

Each program defines its own flags in one function and calls the
``define_*`` helpers here for the shared groups; the flag machinery itself
(``FLAGS``, ``DEFINE_*``, :func:`run`) is :mod:`gacd_tf.programs.flag_core`.
These functions translate flags into library calls; the library never reads
a flag.
"""

import glob
import json
import os

import keras
import tensorflow as tf
from absl import flags, logging

from gacd_tf.data import make_dataset
from gacd_tf.errors import ConfigError, ModelError, TrainingError
from gacd_tf.models import MODELS, build_model
from gacd_tf.models.io import load_model
from gacd_tf.programs import devices
from gacd_tf.programs.folders import prepare_output_dir  # noqa: F401 (for the programs)
from gacd_tf.serving import load_classifier
from gacd_tf.programs.flag_core import (
    FLAGS,
    DEFINE_bool,
    DEFINE_enum,
    DEFINE_float,
    DEFINE_integer,
    DEFINE_list,
    arguments_as_flags,
    flag_values,
)
from gacd_tf.training import (
    SCHEDULES,
    SGD_FORMS,
    TrainingCheckpoint,
    fit_multi_worker_resumable,
    fit_resumable,
    sgd_optimizer,
)
from gacd_tf.training.atomic_files import write_json_atomic


def register_arch_validator():
    """Refuses an --arch that is not in the model zoo when the flags are parsed."""

    def check(name):
        if name not in MODELS:
            raise flags.ValidationError(
                f"unknown architecture; choose one of: {', '.join(MODELS.names())}")
        return True

    flags.register_validator("arch", check)


def define_load_flags():
    DEFINE_bool("unsafe_load", False, "Load .keras files with safe_mode=False, which lets "
                "them run arbitrary Python code (e.g. Lambda layers): only for files from a "
                "source you trust.")


def load_model_from_flags(path, flag, saved_model=False):
    """``gacd_tf.models.io.load_model(path)`` (with ``saved_model``, also a SavedModel
    folder: ``gacd_tf.serving.load_classifier``), with safe_mode off only under
    --unsafe_load."""
    if FLAGS.unsafe_load:
        logging.warning("--unsafe_load: loading %s=%s with safe_mode=False; the file may run "
                        "arbitrary code with your permissions, use it only if you trust its "
                        "source", flag, path)
    load = load_classifier if saved_model else load_model
    try:
        return load(path, safe_mode=not FLAGS.unsafe_load)
    except ModelError as err:
        if err.argument != "safe_mode":
            raise
        raise ModelError(str(err).replace("pass safe_mode=False", "pass --unsafe_load")) from None


def define_optimizer_flags(epochs=100, learning_rate=0.1):
    """SGD with momentum, coupled L2 and a step / cosine / constant schedule."""
    DEFINE_integer("epochs", epochs, "Training epochs.", lower_bound=1)
    DEFINE_float("learning_rate", learning_rate, "Initial SGD learning rate.", lower_bound=0.0)
    DEFINE_float("momentum", 0.9, "SGD momentum.", lower_bound=0.0, upper_bound=1.0)
    DEFINE_float("weight_decay", 5e-4, "Coupled (PyTorch-style) L2 coefficient.",
                 lower_bound=0.0)
    DEFINE_enum("lr_schedule", "step", list(SCHEDULES), "Learning-rate schedule.")
    DEFINE_list("lr_decay_epochs", ["50%", "75%"],
                "Step schedule: epochs (or % of the epochs) where the lr is multiplied by "
                "--lr_decay_factor.")
    DEFINE_float("lr_decay_factor", 0.1, "Step schedule factor.", lower_bound=0.0)
    DEFINE_enum("sgd_form", "pytorch", list(SGD_FORMS), "pytorch: SGD steps as "
                "torch.optim.SGD (momentum buffer in gradient units, stepped at the current "
                "lr) and the step schedule decays at its boundary step (MultiStepLR), as the "
                "official code of every method (benchmarks/torch_parity.py); keras: "
                "keras.optimizers.SGD (its velocity keeps the old lr across a decay) and "
                "PiecewiseConstantDecay (one step later), the behaviour before.")


def optimizer_from_flags(steps_per_epoch, epochs=None, learning_rate=None, lr_schedule=None):
    """:func:`gacd_tf.training.sgd_optimizer` of the optimizer flags over ``epochs``
    (default ``--epochs``), from ``learning_rate`` (default ``--learning_rate``)
    with ``lr_schedule`` (default ``--lr_schedule``)."""
    epochs = FLAGS.epochs if epochs is None else epochs
    with arguments_as_flags(decay_epochs="lr_decay_epochs"):
        return sgd_optimizer(
            FLAGS.learning_rate if learning_rate is None else learning_rate,
            steps_per_epoch, epochs, schedule=lr_schedule or FLAGS.lr_schedule,
            decay_epochs=FLAGS.lr_decay_epochs, decay_factor=FLAGS.lr_decay_factor,
            momentum=FLAGS.momentum, sgd_form=FLAGS.sgd_form,
            # Dynamic loss scaling: float16 gradients would underflow without it.
            loss_scale="mixed_precision" in FLAGS and FLAGS.mixed_precision == "float16")


def write_json(path, obj):
    """Writes ``obj`` as JSON atomically (temporary file, flushed, then renamed)."""
    write_json_atomic(path, obj)


def build_model_from_flags(info):
    """The ``--arch`` zoo model for the dataset described by ``info``."""
    return build_model(FLAGS.arch, num_classes=info.num_classes,
                       input_shape=(info.image_size, info.image_size, 3),
                       mean=info.mean, std=info.std)


def print_result(result, prefix=""):
    if not devices.is_chief():
        return  # several workers: the chief reports
    print(f"{prefix}natural_accuracy={result['natural_accuracy']:.4f} "
          f"robust_accuracy={result['robust_accuracy']:.4f} "
          f"({result['num_examples']} test examples)")


def training_callbacks(model_dir, name):
    """TensorBoard (``logs/NAME``) and a CSV log (``NAME_log.csv``).

    NaN/Inf losses are caught by :class:`gacd_tf.training.TrainingCheckpoint`
    (which :func:`fit_phase` adds), so no ``TerminateOnNaN`` here.
    """
    return [
        keras.callbacks.TensorBoard(os.path.join(model_dir, "logs", name)),
        keras.callbacks.CSVLogger(os.path.join(model_dir, f"{name}_log.csv")),
    ]


def define_checkpoint_flags():
    """Checkpointing (resume after a kill) and op determinism."""
    DEFINE_integer("checkpoint_every_steps", 200, "Checkpoint the full training state every "
                   "this many steps, as well as after every epoch (0: after epochs only). "
                   "Started again with the same flags and --model_dir, a killed run resumes "
                   "from its last checkpoint.", lower_bound=0)
    DEFINE_bool("deterministic", False, "Enable TensorFlow op determinism: with the same "
                "--seed, two runs on the same machine give identical weights (slower).")


# Flags that may change when a run is resumed (they do not change what is trained,
# only how it is run or what the final AutoAttack report covers).
RESUME_MAY_CHANGE = ("verbose", "checkpoint_every_steps", "data_dir", "unsafe_load",
                     "final_autoattack_examples", "aa_version", "aa_attacks", "aa_seed")


# Flags added after runs were started, with the value those runs ran with: a flags.json
# without them resumes only under that value.
# (trades_start: the default since the TRADES start became the official one; a TRADES run
# started before that resumes with --trades_start=attack.)
RESUME_ADDED_FLAGS = {"sgd_form": "keras", "nce_normaliser": "crd", "trades_start": "gaussian",
                      "attack_training_mode": False}


def checkpoint_dir(model_dir, phase):
    return os.path.join(model_dir, "checkpoints", phase)


def check_resume(model_dir):
    """Refuses to resume the checkpoints in ``model_dir`` under other flags.

    Call before ``flags.json`` is rewritten. Returns True when ``model_dir``
    holds checkpoints of a run with the same flags (it will resume; it is
    complete when its ``metrics.json``, written last, exists too).
    """
    states = glob.glob(os.path.join(model_dir, "checkpoints", "*", "state.json"))
    old_path = os.path.join(model_dir, "flags.json")
    if not states or not os.path.isfile(old_path):
        return False
    with open(old_path) as f:
        old = json.load(f)
    new = json.loads(json.dumps(flag_values()))  # lists/tuples compare as in the file
    old = {**{n: v for n, v in RESUME_ADDED_FLAGS.items() if n in new}, **old}
    changed = [name for name in sorted(set(old) | set(new))
               if name not in RESUME_MAY_CHANGE and old.get(name) != new.get(name)]
    if changed:
        what = ", ".join(f"--{n}={old.get(n)} there, {new.get(n)} now" for n in changed[:4])
        raise ConfigError(
            f"--model_dir={model_dir} holds checkpoints of a run with other flags ({what}); "
            "start it again with the same flags to resume it, or choose a new --model_dir")
    logging.info("%s holds checkpoints of this run: resuming", model_dir)
    return True


def start_training_run():
    """The start of a training program: output folder, resume check, strategy, seeds.

    Returns ``(model_dir, metrics_path, strategy)``, or None when
    ``--model_dir`` already holds this run complete (its ``metrics.json``,
    written last, exists), after saying so.
    """
    model_dir = prepare_output_dir(FLAGS.model_dir)
    metrics_path = os.path.join(model_dir, "metrics.json")
    if check_resume(model_dir) and os.path.isfile(metrics_path):
        print(f"{model_dir} holds this run, complete (metrics.json); nothing to do")
        return None
    strategy = devices.strategy_from_flags()
    setup_runtime(FLAGS.seed)
    devices.setup_precision()
    model_dir = devices.this_worker_dir(model_dir)  # multi-worker: only the chief writes into it
    return model_dir, os.path.join(model_dir, "metrics.json"), strategy


def fit_phase(trainer, data, model_dir, phase, epochs, last_path=None, best_path=None,
              seed_offset=0):
    """Trains one phase of a program resumably (``gacd_tf.training.fit_resumable``).

    Batches come from ``data.train`` as the data flags say; checkpoints go to
    ``model_dir/checkpoints/PHASE`` (every ``--checkpoint_every_steps`` and
    after every epoch), the network to ``last_path`` / ``best_path`` after
    each epoch, logs to ``PHASE_log.csv`` and ``logs/PHASE``. The data order
    and augmentation come from ``--seed + seed_offset`` (give a later phase
    its own offset, so it does not replay the first phase's batches).

    Returns:
        fit_resumable's dict (``resumed_from``, ``completed_before``, ``train_seconds``).
    """
    checkpoint = TrainingCheckpoint(checkpoint_dir(model_dir, phase), data.steps_per_epoch,
                                    every_steps=FLAGS.checkpoint_every_steps,
                                    last_path=last_path, best_path=best_path)

    def dataset_fn(start_epoch, start_step):
        return make_dataset(data.train, FLAGS.batch_size, training=True,
                            seed=FLAGS.seed + seed_offset, augment=FLAGS.augment,
                            epochs=epochs, start_epoch=start_epoch, start_step=start_step)

    if "jit_compile" in FLAGS and FLAGS.jit_compile is not None:
        trainer.jit_compile = FLAGS.jit_compile
    try:
        info = _fit(trainer, data, model_dir, phase, epochs, checkpoint, dataset_fn)
    except TrainingError as err:
        raise TrainingError(training_error_in_flags(str(err))) from None
    if not devices.is_chief():
        pass  # the chief reports
    elif info["completed_before"]:
        print(f"{phase}: already complete in {checkpoint.directory}, not trained again")
    elif info["resumed_from"]:
        where = info["resumed_from"]
        print(f"{phase}: resumed after {where['epoch']} epochs and {where['step_in_epoch']} "
              f"steps (global step {where['global_step']})")
    return info


# gacd_tf.training's advice in its words -> the same advice in the programs' flags.
TRAINING_ADVICE_IN_FLAGS = (
    ("Lower the learning rate or check the inputs, and start again with a new checkpoint "
     "folder", "Lower --learning_rate or check the inputs, and start again in a new "
     "--model_dir"),
    ("with the data and settings that started the run, or use a new checkpoint folder",
     "with the data and flags that started the run, or use a new --model_dir"),
    ("the settings that started the run, or use a new checkpoint folder",
     "the flags that started the run, or use a new --model_dir"),
    ("so the checkpoint folder must be on a file system that every worker mounts",
     "so --model_dir must be one folder on a file system that every worker mounts"),
)


def training_error_in_flags(message):
    """A :class:`gacd_tf.errors.TrainingError` message with its advice in flag names."""
    for library, program in TRAINING_ADVICE_IN_FLAGS:
        message = message.replace(library, program)
    return message


def _fit(trainer, data, model_dir, phase, epochs, checkpoint, dataset_fn):
    if devices.is_multi_worker(trainer.distribute_strategy):
        # A non-chief worker's model_dir is its temporary folder; all resume from the chief's.
        info = fit_multi_worker_resumable(
            trainer, dataset_fn, epochs, data.steps_per_epoch, checkpoint,
            restore_directory=checkpoint_dir(devices.chief_dir(model_dir), phase),
            callbacks=training_callbacks(model_dir, phase), validation_data=data.val_ds,
            verbose=FLAGS.verbose)
    else:
        info = fit_resumable(trainer, dataset_fn, epochs, data.steps_per_epoch, checkpoint,
                             callbacks=training_callbacks(model_dir, phase),
                             validation_data=data.val_ds, verbose=FLAGS.verbose)
    return info


def setup_runtime(seed):
    """Quiet TF start-up logs, seed Python, NumPy and TF/Keras, and ``--deterministic``."""
    keras.utils.set_random_seed(seed)
    if "deterministic" in FLAGS and FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    logging.set_verbosity(logging.INFO)
