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


def define_data_flags(train=True):
    from gacd_tf.data.datasets import DATASETS

    DEFINE_enum("dataset", "cifar10", DATASETS.names(), "Dataset name.")
    DEFINE_string(
        "data_dir", os.environ.get("GACD_DATA_DIR") or None,
        "Folder with the dataset's official binary files (offline). Unset: "
        "tensorflow-datasets downloads it. Defaults to $GACD_DATA_DIR.")
    if train:
        DEFINE_integer("train_examples", None, "Use a deterministic class-balanced subset "
                       "of this many training examples.", lower_bound=1)
    DEFINE_integer("test_examples", None, "Evaluate on a deterministic class-balanced subset "
                   "of this many test examples (default: the whole test split).", lower_bound=1)
    DEFINE_integer("batch_size", 128, "Global batch size.", lower_bound=1)
    DEFINE_integer("seed", 0, "Random seed (weights, data order, augmentation, attacks).")


def define_distribute_flags():
    from gacd_tf.distribute import STRATEGIES

    DEFINE_enum("strategy", "default", list(STRATEGIES),
                "tf.distribute strategy: one device, all local GPUs (or --cpu_devices "
                "logical CPUs) mirrored, or several workers (TF_CONFIG).")
    DEFINE_integer("cpu_devices", None, "Split the CPU into this many logical devices "
                   "(runs --strategy=mirrored without GPUs, e.g. in tests).", lower_bound=1)
    define_precision_flags()


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
    import keras

    if "mixed_precision" in FLAGS:
        keras.mixed_precision.set_global_policy(PRECISION_POLICIES[FLAGS.mixed_precision])


def strategy_from_flags():
    """The strategy of ``--strategy``; call before any TensorFlow op."""
    from gacd_tf.distribute import make_strategy

    # --strategy=multi_worker: TF_CONFIG names the cluster; fit_phase trains with
    # the library's multi-worker loop (Keras 3's fit cannot run there).
    strategy = make_strategy(FLAGS.strategy, FLAGS.cpu_devices)
    replicas = strategy.num_replicas_in_sync
    if FLAGS.batch_size % replicas:
        raise ConfigError(
            f"--batch_size={FLAGS.batch_size} is not divisible by the {replicas} replicas of "
            f"--strategy={FLAGS.strategy}; use a multiple of {replicas}")
    logging.info("strategy %s with %d replica(s)", FLAGS.strategy, replicas)
    return strategy


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


def define_validation_flags(default, use):
    """``--val_examples``: training examples held out for validation (SPEC "Model selection")."""
    DEFINE_integer("val_examples", default, "Hold out this many class-balanced examples of the "
                   f"TRAINING split (never trained on) as the validation set, {use} "
                   "(0: no validation). The test split only serves the final report.",
                   lower_bound=0)


def holdout_indices(labels, num_classes, val_examples, train_examples=None):
    """Splits a training split into disjoint training and validation indices.

    Validation (SPEC "Model selection and controls"): a deterministic,
    class-balanced set of ``val_examples`` taken from the *end* of each class
    (its last examples in file order). Training: the rest, or a class-balanced
    subset of ``train_examples`` of the rest (each class's first examples),
    so with room to spare a ``--train_examples`` subset is the same with or
    without validation.

    Args:
        labels: int labels [N] of the whole training split.
        num_classes: C.
        val_examples: validation size (0: none).
        train_examples: training size (None: everything not held out).

    Returns:
        ``(train_indices, val_indices)``: sorted, disjoint int64 arrays.

    Raises:
        DataError: naming ``--val_examples`` / ``--train_examples`` when the
            split cannot hold both.
    """
    import numpy as np

    from gacd_tf.data import balanced_subset_indices
    from gacd_tf.errors import DataError

    labels = np.asarray(labels)
    size = len(labels)
    held = np.zeros(size, dtype=bool)
    if val_examples:
        if val_examples >= size:
            raise DataError(f"--val_examples={val_examples} leaves no training examples: the "
                            f"train split holds {size}; ask for fewer")
        try:
            from_end = balanced_subset_indices(labels[::-1], val_examples, num_classes)
        except DataError as err:
            raise DataError(f"--val_examples={val_examples}: {err}") from None
        held[size - 1 - from_end] = True
    pool = np.flatnonzero(~held)
    train = pool
    if train_examples is not None:
        if train_examples > len(pool):
            held_out = f", {val_examples} of them held out by --val_examples" if val_examples else ""
            raise DataError(f"--train_examples={train_examples} is out of range: the train split "
                            f"holds {size} examples{held_out}; ask for 1 to {len(pool)}")
        try:
            train = pool[balanced_subset_indices(labels[pool], train_examples, num_classes)]
        except DataError as err:
            raise DataError(f"--train_examples={train_examples}: {err}") from None
    return np.sort(train), np.flatnonzero(held)


def load_data_from_flags():
    """Train, validation and test data and their pipelines, as the data flags ask.

    ``--val_examples`` (when the program has it) are held out of the
    *training* split (:func:`holdout_indices`): never trained on, they feed
    the per-epoch validation (``val_*`` logs, ``best.keras``); the test split
    serves only the final report.

    Returns a namespace with ``train``, ``val`` (or None), ``test``, ``info``,
    ``val_ds`` (or None), ``test_ds`` and ``steps_per_epoch`` (full batches);
    training batches come from :func:`fit_phase`. A sample's index (the GACD
    memory-bank row) is its position in ``train``.
    """
    import dataclasses
    import types

    from gacd_tf.data import load_split, make_dataset

    whole = load_split(FLAGS.dataset, "train", FLAGS.data_dir)
    val_examples = FLAGS.val_examples if "val_examples" in FLAGS else 0
    train_idx, val_idx = holdout_indices(whole.labels, whole.info.num_classes, val_examples,
                                         FLAGS.train_examples)
    train = whole
    if len(train_idx) < len(whole.labels):
        train = dataclasses.replace(whole, images=whole.images[train_idx],
                                    labels=whole.labels[train_idx])
    val = None
    if len(val_idx):
        val = dataclasses.replace(whole, images=whole.images[val_idx],
                                  labels=whole.labels[val_idx])
    del whole
    test = load_split(FLAGS.dataset, "test", FLAGS.data_dir, FLAGS.test_examples)
    logging.info("%s: %d training, %d validation (held out of the training split), %d test "
                 "examples", train.info.name, len(train.labels), len(val_idx), len(test.labels))
    return types.SimpleNamespace(
        train=train, val=val, test=test, info=train.info,
        val_ds=None if val is None else make_dataset(val, FLAGS.batch_size, training=False),
        test_ds=make_dataset(test, FLAGS.batch_size, training=False),
        steps_per_epoch=max(1, len(train.labels) // FLAGS.batch_size),  # full batches only
    )


def build_model_from_flags(info):
    """The ``--arch`` zoo model for the dataset described by ``info``."""
    from gacd_tf.models import build_model

    return build_model(FLAGS.arch, num_classes=info.num_classes,
                       input_shape=(info.image_size, info.image_size, 3),
                       mean=info.mean, std=info.std)


def print_result(result, prefix=""):
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
    model_dir = prepare_output_dir(FLAGS.model_dir)
    metrics_path = os.path.join(model_dir, "metrics.json")
    if check_resume(model_dir) and os.path.isfile(metrics_path):
        print(f"{model_dir} holds this run, complete (metrics.json); nothing to do")
        return None
    strategy = strategy_from_flags()
    setup_runtime(FLAGS.seed)
    setup_precision()
    if not is_chief():  # multi-worker: only the chief writes into --model_dir
        import keras

        model_dir = worker_output_dir(model_dir)
        metrics_path = os.path.join(model_dir, "metrics.json")
        logging.set_verbosity(logging.WARNING)  # progress and logs come from the chief
        keras.utils.disable_interactive_logging()
    return model_dir, metrics_path, strategy


# -- several workers (--strategy=multi_worker) --------------------------------------
_CHIEF_DIRS = {}  # a non-chief worker's temporary output folder -> the run's --model_dir


def is_multi_worker(strategy):
    """True for a ``MultiWorkerMirroredStrategy``."""
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief():
    """True unless this process is a non-chief worker of ``--strategy=multi_worker``.

    The chief (TF_CONFIG's "chief" task, else worker 0) writes the run's
    files; the others write theirs to a temporary folder
    (:func:`worker_output_dir`), as Keras' ``BackupAndRestore`` does.
    """
    from gacd_tf.distribute_loop import is_chief_from_tf_config

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
    import atexit
    import shutil

    temporary = tempfile.mkdtemp(prefix="gacd-worker-")
    atexit.register(shutil.rmtree, temporary, ignore_errors=True)
    _CHIEF_DIRS[temporary] = model_dir
    return temporary


def chief_dir(model_dir):
    """The run's --model_dir for a folder of :func:`worker_output_dir` (else ``model_dir``)."""
    for temporary, real in _CHIEF_DIRS.items():
        if model_dir == temporary or model_dir.startswith(temporary + os.sep):
            return real + model_dir[len(temporary):]
    return model_dir


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
        fit_resumable's dict (``resumed_from``, ``completed_before``).
    """
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
