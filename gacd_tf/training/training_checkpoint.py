"""The callback that makes a run resumable: full training state, atomically."""

import glob
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from gacd_tf.training.atomic_files import atomic_write, save_model_atomic, write_json_atomic

STATE_FILE = "state.json"
SEED_GENERATOR = keras.random.SeedGenerator


def seed_generators_of(obj, path=""):
    """The ``keras.random.SeedGenerator`` s that ``obj`` declares, by attribute path.

    ``obj`` declares them explicitly: a generator is itself; an object with a
    ``seed_generators()`` method returns ``{name: generator or part}``
    (parts are followed recursively, so a trainer lists its attacks and
    sampler, and an attack its generators); as a fallback for objects that
    declare nothing, a ``seed_generator`` attribute holding a generator
    counts. This is how a user's own attack or method gets checkpointed:
    give it ``seed_generators()``.
    """
    if obj is None:
        return {}
    if isinstance(obj, SEED_GENERATOR):
        return {path: obj}
    declare = getattr(obj, "seed_generators", None)
    if callable(declare):
        parts = declare()
    elif isinstance(getattr(obj, "seed_generator", None), SEED_GENERATOR):
        parts = {"seed_generator": obj.seed_generator}
    else:
        return {}
    found = {}
    for name, part in parts.items():
        for sub, generator in seed_generators_of(part, f"{path}.{name}" if path else name).items():
            found.setdefault(sub, generator)
    return found


def find_seed_generators(trainer):
    """Every ``keras.random.SeedGenerator`` a trainer draws from, by attribute path.

    Reads the trainer's explicit declaration (``trainer.seed_generators()``,
    see :func:`seed_generators_of`). A generator reached twice (e.g. the
    training attack doubling as the validation attack) is listed once, under
    its first path in sorted order.

    Returns:
        dict ``{"attack.seed_generator": generator, ...}`` in sorted order.
    """
    found, seen = {}, set()
    for path, generator in sorted(seed_generators_of(trainer).items()):
        if id(generator) not in seen:
            seen.add(id(generator))
            found[path] = generator
    return found


def all_finite(variables):
    """True when every value of ``variables`` is finite (no NaN / Inf)."""
    checks = [tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v)))
              for v in variables if tf.as_dtype(v.dtype).is_floating]
    return bool(tf.reduce_all(tf.stack(checks)).numpy()) if checks else True


def read_state(directory):
    """The committed ``state.json`` of a checkpoint folder, or None."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves everything a run needs to resume, and the network as ``.keras``.

    A checkpoint is the trainer's ``save_weights`` file (network, embedding
    heads, GACD memory banks and Z, the optimizer's slots and iteration
    count, hence the learning-rate schedule position) plus ``state.json``:
    epoch and step reached, the state of every random generator the trainer
    draws from (attack starts, negative sampling), the best monitored value,
    and the training wall time up to this checkpoint, summed over every
    invocation that trained the run (``train_seconds``; time lost to a kill
    after the last checkpoint is not in it).
    The weights go to a new file ``ckpt-<step>.weights.h5`` (written to a
    temporary name, then renamed); ``state.json``, rewritten atomically after
    it, is the commit point; older weight files are deleted only then. A
    kill at any moment therefore leaves the previous checkpoint usable.

    Checkpoints are written at the end of every epoch and, with
    ``every_steps``, every that many optimizer steps within an epoch. At
    the end of an epoch the network is also saved to ``last_path`` and, when
    ``monitor`` improved, to ``best_path``.

    A NaN or Inf training loss (or non-finite weights about to be saved)
    stops training at once, saves nothing more, and records the fault in
    ``failure``; :func:`gacd_tf.training.fit_resumable` turns it into an
    error naming the last good checkpoint.

    Steps are counted by the optimizer's ``iterations``, so the optimizer
    must be fresh at the start of the run (one per training phase).

    Args:
        directory: folder of this run's (phase's) checkpoints.
        steps_per_epoch: optimizer steps in one epoch.
        every_steps: also checkpoint every this many steps (0: epochs only).
        last_path: ``.keras`` path of the network after each epoch, or None.
        best_path: ``.keras`` path of the best network so far, or None.
        monitor: log key deciding "best", e.g. ``val_adv_accuracy``.
        mode: "max" or "min".

    Example:
    >>> ckpt = TrainingCheckpoint("runs/x/checkpoints/train", steps_per_epoch=390,
    ...                           every_steps=100, last_path="runs/x/model.keras")
    >>> trainer.fit(ds, epochs=10, steps_per_epoch=390, callbacks=[ckpt])  # doctest: +SKIP
    """

    def __init__(self, directory, steps_per_epoch, every_steps=0, last_path=None, best_path=None,
                 monitor="val_adv_accuracy", mode="max"):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.directory = directory
        self.steps_per_epoch = int(steps_per_epoch)
        self.every_steps = int(every_steps or 0)
        self.last_path, self.best_path = last_path, best_path
        self.monitor, self.mode = monitor, mode
        self.best = -math.inf if mode == "max" else math.inf
        self.best_epoch = None
        self.failure = None
        self._epoch = 0
        self._saved_step = None
        self._seconds_before = 0.0  # committed by the invocations before this one
        self._clock = None
        os.makedirs(directory, exist_ok=True)
        for leftover in glob.glob(os.path.join(directory, ".tmp-*")):  # from a killed write
            os.remove(leftover)

    # -- state -----------------------------------------------------------------
    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def last_good(self):
        """``state.json`` of the last committed checkpoint (None before the first)."""
        return read_state(self.directory)

    def restore_from(self, state):
        """Takes the best-so-far bookkeeping and training time from a loaded ``state``."""
        if state.get("best") is not None:
            self.best, self.best_epoch = state["best"], state.get("best_epoch")
        self._saved_step = state["global_step"]
        self._seconds_before = float(state.get("train_seconds") or 0.0)

    def start_clock(self):
        """Starts timing this invocation's training (``fit_resumable`` calls it
        once before its ``fit`` calls; otherwise the first ``fit`` does)."""
        self._clock = time.monotonic()

    def train_seconds(self):
        """Training wall time so far: the restored checkpoint's plus this invocation's."""
        now = 0.0 if self._clock is None else time.monotonic() - self._clock
        return self._seconds_before + now

    def save(self, epoch, step_in_epoch, completed=False, checked=False):
        """Commits one checkpoint at ``(epoch, step_in_epoch)`` steps done.

        Returns False (and records a failure) instead when a weight is NaN or
        Inf; ``checked=True`` skips that scan when the caller just did it.
        """
        if not checked and not all_finite(self.model.weights):
            self._fail("non-finite weights", epoch, step_in_epoch)
            return False
        global_step = self._step()
        if step_in_epoch == self.steps_per_epoch:
            epoch, step_in_epoch = epoch + 1, 0
        name = f"ckpt-{global_step:09d}.weights.h5"
        path = os.path.join(self.directory, name)
        if global_step != self._saved_step or not os.path.isfile(path):
            atomic_write(self.model.save_weights, path)
        write_json_atomic(os.path.join(self.directory, STATE_FILE), {
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
            "steps_per_epoch": self.steps_per_epoch, "weights": name, "completed": completed,
            "best": None if math.isinf(self.best) else self.best, "best_epoch": self.best_epoch,
            "monitor": self.monitor, "train_seconds": round(self.train_seconds(), 1),
            "seed_generators": {path_: np.asarray(g.state.numpy()).tolist()
                                for path_, g in find_seed_generators(self.model).items()},
        })  # the commit point: older weight files may go now
        for old in glob.glob(os.path.join(self.directory, "ckpt-*.weights.h5")):
            if os.path.basename(old) != name:
                os.remove(old)
        self._saved_step = global_step
        return True

    def _fail(self, what, epoch, step_in_epoch):
        self.failure = {"what": what, "epoch": epoch, "step_in_epoch": step_in_epoch,
                        "global_step": self._step()}
        self.model.stop_training = True

    # -- callback hooks ----------------------------------------------------------
    def on_train_begin(self, logs=None):
        if self._clock is None:  # a plain callback of fit: time from here
            self.start_clock()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.failure:
            return
        loss = (logs or {}).get("loss")
        step_in_epoch = self._step() - self._epoch * self.steps_per_epoch
        if loss is not None and not math.isfinite(float(loss)):
            self._fail(f"loss {float(loss)}", self._epoch, step_in_epoch)
            return
        if (self.every_steps and self._step() % self.every_steps == 0
                and step_in_epoch < self.steps_per_epoch):
            self.save(self._epoch, step_in_epoch)

    def on_epoch_end(self, epoch, logs=None):
        if self.failure:
            return
        network = getattr(self.model, "model", self.model)
        if not all_finite(self.model.weights):
            self._fail("non-finite weights", epoch, self.steps_per_epoch)
            return
        if self.last_path:
            save_model_atomic(network, self.last_path)
        value = (logs or {}).get(self.monitor)
        if value is not None:
            value = float(value)
            improved = value > self.best if self.mode == "max" else value < self.best
            if improved:
                self.best, self.best_epoch = value, epoch + 1
                if self.best_path:
                    save_model_atomic(network, self.best_path)
        self.save(epoch, self.steps_per_epoch, checked=True)
