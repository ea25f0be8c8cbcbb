"""Flags and plumbing shared by every gacd_tf program.

Each program defines its own flags in one function and calls the
``define_*`` helpers here for the shared groups; :func:`run` wraps ``main``
so that a :class:`gacd_tf.errors.GacdError` ends the program with one line on
stderr and exit code 1.
"""

import json
import math
import os
import sys
import tempfile

from absl import app, flags, logging

from gacd_tf.errors import ConfigError, GacdError

FLAGS = flags.FLAGS
_DEFINED = []  # names of the flags this package defines, in definition order


def _track(define):
    def wrapper(name, *args, **kwargs):
        _DEFINED.append(name)
        return define(name, *args, **kwargs)

    return wrapper


def _define_float(name, default, help, positive=False, **kwargs):
    """``flags.DEFINE_float`` that refuses nan and inf (and, if ``positive``, values <= 0)."""
    holder = flags.DEFINE_float(name, default, help, **kwargs)
    flags.register_validator(name, lambda v: v is None or math.isfinite(v),
                             message="must be a finite number")
    if positive:
        flags.register_validator(name, lambda v: v is None or v > 0, message="must be > 0")
    return holder


DEFINE_string = _track(flags.DEFINE_string)
DEFINE_integer = _track(flags.DEFINE_integer)
DEFINE_float = _track(_define_float)
DEFINE_bool = _track(flags.DEFINE_bool)
DEFINE_enum = _track(flags.DEFINE_enum)
DEFINE_list = _track(flags.DEFINE_list)


def register_arch_validator():
    """Refuses an --arch that is not in the model zoo when the flags are parsed."""

    def check(name):
        from gacd_tf.models import MODELS

        if name not in MODELS:
            raise flags.ValidationError(
                f"unknown architecture; choose one of: {', '.join(MODELS.names())}")
        return True

    flags.register_validator("arch", check)


def define_load_flags():
    DEFINE_bool("unsafe_load", False, "Load .keras files with safe_mode=False, which lets "
                "them run arbitrary Python code (e.g. Lambda layers): only for files from a "
                "source you trust.")


def load_model_from_flags(path, flag, **kwargs):
    """``gacd_tf.models.io.load_model(path)``, with safe_mode off only under --unsafe_load."""
    from gacd_tf.models.io import load_model

    if FLAGS.unsafe_load:
        logging.warning("--unsafe_load: loading %s=%s with safe_mode=False; the file may run "
                        "arbitrary code with your permissions, use it only if you trust its "
                        "source", flag, path)
    return load_model(path, safe_mode=not FLAGS.unsafe_load, **kwargs)


def define_optimizer_flags(epochs=100, learning_rate=0.1):
    """SGD with momentum, coupled L2 and a step / cosine / constant schedule."""
    DEFINE_integer("epochs", epochs, "Training epochs.", lower_bound=1)
    DEFINE_float("learning_rate", learning_rate, "Initial SGD learning rate.", lower_bound=0.0)
    DEFINE_float("momentum", 0.9, "SGD momentum.", lower_bound=0.0, upper_bound=1.0)
    DEFINE_float("weight_decay", 5e-4, "Coupled (PyTorch-style) L2 coefficient.",
                 lower_bound=0.0)
    DEFINE_enum("lr_schedule", "step", ["step", "cosine", "constant"], "Learning-rate schedule.")
    DEFINE_list("lr_decay_epochs", ["50%", "75%"],
                "Step schedule: epochs (or % of the epochs) where the lr is multiplied by "
                "--lr_decay_factor.")
    DEFINE_float("lr_decay_factor", 0.1, "Step schedule factor.", lower_bound=0.0)


def optimizer_from_flags(steps_per_epoch, epochs=None, learning_rate=None, lr_schedule=None):
    """``keras.optimizers.SGD`` with a schedule (default ``--lr_schedule``) over ``epochs``."""
    import keras

    epochs = FLAGS.epochs if epochs is None else epochs
    lr = FLAGS.learning_rate if learning_rate is None else learning_rate
    lr_schedule = lr_schedule or FLAGS.lr_schedule
    total = epochs * steps_per_epoch
    schedule = lr
    if lr_schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=total)
    elif lr_schedule == "step":
        boundaries = []
        for item in FLAGS.lr_decay_epochs:
            try:
                epoch = float(item[:-1]) / 100 * epochs if item.endswith("%") else float(item)
            except ValueError:
                raise ConfigError(f"--lr_decay_epochs entry {item!r} is not a number or N%") from None
            boundaries.append(int(round(epoch * steps_per_epoch)))
        if boundaries != sorted(boundaries):
            raise ConfigError(f"--lr_decay_epochs={','.join(FLAGS.lr_decay_epochs)} must increase")
        if boundaries:
            values = [lr * FLAGS.lr_decay_factor**i for i in range(len(boundaries) + 1)]
            schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    optimizer = keras.optimizers.SGD(schedule, momentum=FLAGS.momentum)
    if "mixed_precision" in FLAGS and FLAGS.mixed_precision == "float16":
        # Dynamic loss scaling: float16 gradients would underflow without it.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def flag_values():
    """The values of this package's flags, as a JSON-able dict."""
    return {name: FLAGS[name].value for name in _DEFINED if name in FLAGS}


def write_json(path, obj):
    """Writes ``obj`` as JSON atomically (temporary file, flushed, then renamed)."""
    from gacd_tf.trainers.checkpoint import write_json_atomic

    write_json_atomic(path, obj)


def prepare_output_dir(path, flag="--model_dir"):
    """Creates ``path`` if needed and checks it is writable."""
    if not path:
        raise ConfigError(f"{flag} is required: the folder where outputs are written")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag}={path} is a file, not a folder; choose another folder")
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-")
        probe.close()
    except OSError as err:
        raise ConfigError(f"{flag}={path} is not a writable folder ({err.strerror}); "
                          "choose another folder") from err
    return path


def build_model_from_flags(info):
    """The ``--arch`` zoo model for the dataset described by ``info``."""
    from gacd_tf.models import build_model

    return build_model(FLAGS.arch, num_classes=info.num_classes,
                       input_shape=(info.image_size, info.image_size, 3),
                       mean=info.mean, std=info.std)


def print_result(result, prefix=""):
    from gacd_tf.programs.devices import is_chief

    if not is_chief():
        return  # several workers: the chief reports
    print(f"{prefix}natural_accuracy={result['natural_accuracy']:.4f} "
          f"robust_accuracy={result['robust_accuracy']:.4f} "
          f"({result['num_examples']} test examples)")


def training_callbacks(model_dir, name):
    """TensorBoard (``logs/NAME``) and a CSV log (``NAME_log.csv``).

    NaN/Inf losses are caught by :class:`gacd_tf.trainers.TrainingCheckpoint`
    (which :func:`fit_phase` adds), so no ``TerminateOnNaN`` here.
    """
    import keras

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


def checkpoint_dir(model_dir, phase):
    return os.path.join(model_dir, "checkpoints", phase)


def check_resume(model_dir):
    """Refuses to resume the checkpoints in ``model_dir`` under other flags.

    Call before ``flags.json`` is rewritten. Returns True when ``model_dir``
    holds checkpoints of a run with the same flags (it will resume; it is
    complete when its ``metrics.json``, written last, exists too).
    """
    import glob

    states = glob.glob(os.path.join(model_dir, "checkpoints", "*", "state.json"))
    old_path = os.path.join(model_dir, "flags.json")
    if not states or not os.path.isfile(old_path):
        return False
    with open(old_path) as f:
        old = json.load(f)
    new = json.loads(json.dumps(flag_values()))  # lists/tuples compare as in the file
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
    from gacd_tf.programs.devices import setup_precision, strategy_from_flags, this_worker_dir

    model_dir = prepare_output_dir(FLAGS.model_dir)
    metrics_path = os.path.join(model_dir, "metrics.json")
    if check_resume(model_dir) and os.path.isfile(metrics_path):
        print(f"{model_dir} holds this run, complete (metrics.json); nothing to do")
        return None
    strategy = strategy_from_flags()
    setup_runtime(FLAGS.seed)
    setup_precision()
    model_dir = this_worker_dir(model_dir)  # multi-worker: only the chief writes into it
    return model_dir, os.path.join(model_dir, "metrics.json"), strategy


def fit_phase(trainer, data, model_dir, phase, epochs, last_path=None, best_path=None,
              seed_offset=0):
    """Trains one phase of a program resumably (``gacd_tf.trainers.fit_resumable``).

    Batches come from ``data.train`` as the data flags say; checkpoints go to
    ``model_dir/checkpoints/PHASE`` (every ``--checkpoint_every_steps`` and
    after every epoch), the network to ``last_path`` / ``best_path`` after
    each epoch, logs to ``PHASE_log.csv`` and ``logs/PHASE``. The data order
    and augmentation come from ``--seed + seed_offset`` (give a later phase
    its own offset, so it does not replay the first phase's batches).

    Returns:
        fit_resumable's dict (``resumed_from``, ``completed_before``, ``train_seconds``).
    """
    from gacd_tf.programs.devices import chief_dir, is_chief, is_multi_worker

    from gacd_tf.data import make_dataset
    from gacd_tf.trainers import TrainingCheckpoint, fit_resumable

    checkpoint = TrainingCheckpoint(checkpoint_dir(model_dir, phase), data.steps_per_epoch,
                                    every_steps=FLAGS.checkpoint_every_steps,
                                    last_path=last_path, best_path=best_path)

    def dataset_fn(start_epoch, start_step):
        return make_dataset(data.train, FLAGS.batch_size, training=True,
                            seed=FLAGS.seed + seed_offset, augment=FLAGS.augment,
                            epochs=epochs, start_epoch=start_epoch, start_step=start_step)

    if "jit_compile" in FLAGS and FLAGS.jit_compile is not None:
        trainer.jit_compile = FLAGS.jit_compile
    if is_multi_worker(trainer.distribute_strategy):
        from gacd_tf.trainers.fit_multi_worker_resumable import fit_multi_worker_resumable

        # A non-chief worker's model_dir is its temporary folder; all resume from the chief's.
        info = fit_multi_worker_resumable(
            trainer, dataset_fn, epochs, data.steps_per_epoch, checkpoint,
            restore_directory=checkpoint_dir(chief_dir(model_dir), phase),
            callbacks=training_callbacks(model_dir, phase), validation_data=data.val_ds,
            verbose=FLAGS.verbose)
    else:
        info = fit_resumable(trainer, dataset_fn, epochs, data.steps_per_epoch, checkpoint,
                             callbacks=training_callbacks(model_dir, phase),
                             validation_data=data.val_ds, verbose=FLAGS.verbose)
    if not is_chief():
        pass  # the chief reports
    elif info["completed_before"]:
        print(f"{phase}: already complete in {checkpoint.directory}, not trained again")
    elif info["resumed_from"]:
        where = info["resumed_from"]
        print(f"{phase}: resumed after {where['epoch']} epochs and {where['step_in_epoch']} "
              f"steps (global step {where['global_step']})")
    return info


def setup_runtime(seed):
    """Quiet TF start-up logs, seed Python, NumPy and TF/Keras, and ``--deterministic``."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if "deterministic" in FLAGS and FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    logging.set_verbosity(logging.INFO)


def run(main):
    """``app.run(main)``, turning a bad flag or a GacdError into one line on stderr and exit 1."""

    def guarded(argv):
        try:
            return main(argv)
        except GacdError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)

    app.run(guarded, flags_parser=_parse_flags)


def _parse_flags(argv):
    """absl's flag parsing, but a bad flag ends the program with one ``error:`` line."""
    try:
        return FLAGS(argv)
    except flags.Error as err:
        problems = []
        for line in str(err).splitlines():  # absl: one line per failed validator
            if line.startswith("flags ") and ": --" in line:
                line = line[line.index(": --") + 2:]  # drop "flags a=1, b=2: "
            problems.append(line.strip())
        message = "; ".join(p for p in problems if p)
        print(f"error: {message} (fix the flag; --helpshort lists them)", file=sys.stderr)
        sys.exit(1)
