"""gacd-analyze transfer: linear evaluation of frozen models on a target task (paper
Table 4), one resumable linear probe per model; also the transfer part of the report.

The probes train under --strategy like the training programs' networks: mirrored, or
multi_worker (every worker runs the same command; the chief writes --output_dir and
reports, the others write to a temporary folder; a killed cluster started again resumes
from the chief's last committed checkpoint of the probe).
"""

import glob
import hashlib
import json
import os
import types

import keras
import tensorflow as tf
from absl import logging

from gacd_tf.analysis import linear_transfer, write_transfer
from gacd_tf.analysis.tables import model_names
from gacd_tf.attacks import PGD
from gacd_tf.data import load_split
from gacd_tf.errors import ConfigError
from gacd_tf.programs import attack_flags, common, devices
from gacd_tf.programs.analyze_inputs import int_list, require
from gacd_tf.programs.flag_core import FLAGS, arguments_as_flags

# What a linear probe's training depends on (besides the model file and --classes).
PROBE_FLAGS = ("dataset", "train_examples", "batch_size", "seed", "epochs", "learning_rate",
               "momentum", "weight_decay", "lr_schedule", "lr_decay_epochs", "lr_decay_factor",
               "augment")
# ... and how it runs: a probe is resumed only under the same ones, as a training run is.
# (A probe.json written before they existed holds none: it has the defaults.)
DEVICE_FLAGS = ("strategy", "cpu_devices", "mixed_precision", "jit_compile")


def transfer(paths, names, output_dir, data_dir=None, strategy=None):
    """Linear transfer of each model to --dataset [--classes] read from ``data_dir``
    (default --data_dir), each probe trained under ``strategy`` (default: the current
    one); returns (rows, task, attack name).

    ``output_dir`` is this worker's: under --strategy=multi_worker a non-chief
    worker's temporary folder (``devices.this_worker_dir``)."""

    classes = int_list("classes", FLAGS.classes) if FLAGS.classes else None
    data_dir = data_dir or FLAGS.data_dir
    with arguments_as_flags(examples="train_examples"):
        train = load_split(FLAGS.dataset, "train", data_dir, FLAGS.train_examples,
                           classes=classes)
    with arguments_as_flags(examples="test_examples"):
        test = load_split(FLAGS.dataset, "test", data_dir, FLAGS.test_examples, classes=classes)
    task = FLAGS.dataset + (f" classes {','.join(map(str, classes))}" if classes else "")
    attack = PGD(eps=FLAGS.eps, step_size=FLAGS.step_size, steps=FLAGS.transfer_attack_steps,
                 norm=FLAGS.norm, seed=FLAGS.seed)
    data = types.SimpleNamespace(train=train, val_ds=None,
                                 steps_per_epoch=max(1, len(train) // FLAGS.batch_size))
    strategy = strategy or tf.distribute.get_strategy()
    rows = []
    for name, path in zip(names, paths):
        logging.info("linear transfer of %s to %s (%d train, %d test examples)", path, task,
                     len(train), len(test))
        keras.utils.set_random_seed(FLAGS.seed)  # the same head initialisation for every model
        probe_dir = os.path.join(output_dir, f"probe_{name}")
        check_probe_resume(probe_dir, path, classes)

        def fit(probe, probe_dir=probe_dir):
            common.fit_phase(probe, data, probe_dir, "probe", FLAGS.epochs,
                             last_path=os.path.join(probe_dir, "probe.keras"))

        with strategy.scope():  # the backbone and the optimizer's variables too
            backbone = common.load_model_from_flags(path, "--models")
            optimizer = common.optimizer_from_flags(data.steps_per_epoch)
        result, probe = linear_transfer(
            backbone, train, test, FLAGS.epochs, optimizer=optimizer,
            batch_size=FLAGS.batch_size, attack=attack, weight_decay=FLAGS.weight_decay,
            seed=FLAGS.seed, augment=FLAGS.augment, fit=fit, verbose=FLAGS.verbose,
            strategy=strategy)
        result.update(model=name, source=path)
        chief = devices.is_chief()  # several workers: the chief reports
        autoattack = attack_flags.final_autoattack(probe.model, FLAGS.dataset, data_dir,
                                                   FLAGS.batch_size, classes=classes,
                                                   verbose=None if chief else 0)
        if autoattack:
            result.update(autoattack=autoattack,
                          autoattack_robust_accuracy=autoattack["robust_accuracy"])
        if chief:
            print(f"transfer {name}: natural_accuracy={result['natural_accuracy']:.4f} "
                  f"robust_accuracy={result['robust_accuracy']:.4f} ({len(test)} test "
                  "examples)")
        rows.append(result)
    write_transfer(rows, output_dir, task)
    return rows, task, f"PGD-{FLAGS.transfer_attack_steps}"


def check_probe_resume(probe_dir, model_path, classes):
    """Lets a probe resume its checkpoints only under the same settings (probe.json).

    Under --strategy=multi_worker every worker checks the chief's probe
    folder (the one all resume from) and writes probe.json into its own.
    """

    with open(model_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    settings = {name: FLAGS[name].value for name in PROBE_FLAGS + DEVICE_FLAGS}
    settings = json.loads(json.dumps(dict(settings, classes=classes, model_sha256=digest)))
    chief_dir = devices.chief_dir(probe_dir)
    old_path = os.path.join(chief_dir, "probe.json")
    if glob.glob(os.path.join(chief_dir, "checkpoints", "*", "state.json")):
        old = json.load(open(old_path)) if os.path.isfile(old_path) else {}
        old = dict({name: FLAGS[name].default for name in DEVICE_FLAGS}, **old)
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise ConfigError(
                f"{chief_dir} holds a linear probe trained with other settings "
                f"({', '.join(changed[:4])} differ); use the same flags to resume it, or a new "
                "--output_dir")
        logging.info("%s holds checkpoints of this probe: resuming", chief_dir)
    os.makedirs(probe_dir, exist_ok=True)
    common.write_json(os.path.join(probe_dir, "probe.json"), settings)


def transfer_command(run):

    paths = require("models", "transfer")
    rows, task, _ = transfer(paths, model_names(paths), run.output_dir, strategy=run.strategy)
    return {"task": task, "models": rows}
