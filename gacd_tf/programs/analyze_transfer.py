"""gacd-analyze transfer: linear evaluation of frozen models on a target task (paper
Table 4), one resumable linear probe per model; also the transfer part of the report."""

import json
import os
import types

from absl import logging

from gacd_tf.errors import ConfigError
from gacd_tf.programs import attack_flags, common
from gacd_tf.programs.analyze_inputs import int_list, require
from gacd_tf.programs.common import FLAGS

# What a linear probe's training depends on (besides the model file and --classes).
PROBE_FLAGS = ("dataset", "train_examples", "batch_size", "seed", "epochs", "learning_rate",
               "momentum", "weight_decay", "lr_schedule", "lr_decay_epochs", "lr_decay_factor",
               "augment")


def transfer(paths, names, output_dir, data_dir=None):
    """Linear transfer of each model to --dataset [--classes] read from ``data_dir``
    (default --data_dir); returns (rows, task, attack name)."""
    import keras

    from gacd_tf.analysis import linear_transfer, write_transfer
    from gacd_tf.attacks import PGD
    from gacd_tf.data import load_split

    classes = int_list("classes", FLAGS.classes) if FLAGS.classes else None
    data_dir = data_dir or FLAGS.data_dir
    train = load_split(FLAGS.dataset, "train", data_dir, FLAGS.train_examples, classes=classes)
    test = load_split(FLAGS.dataset, "test", data_dir, FLAGS.test_examples, classes=classes)
    task = FLAGS.dataset + (f" classes {','.join(map(str, classes))}" if classes else "")
    attack = PGD(eps=FLAGS.eps, step_size=FLAGS.step_size, steps=FLAGS.transfer_attack_steps,
                 norm=FLAGS.norm, seed=FLAGS.seed)
    data = types.SimpleNamespace(train=train, val_ds=None,
                                 steps_per_epoch=max(1, len(train) // FLAGS.batch_size))
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

        result, probe = linear_transfer(
            common.load_model_from_flags(path, "--models"), train, test, FLAGS.epochs,
            optimizer=common.optimizer_from_flags(data.steps_per_epoch),
            batch_size=FLAGS.batch_size, attack=attack, weight_decay=FLAGS.weight_decay,
            seed=FLAGS.seed, augment=FLAGS.augment, fit=fit, verbose=FLAGS.verbose)
        result.update(model=name, source=path)
        autoattack = attack_flags.final_autoattack(probe.model, FLAGS.dataset, data_dir,
                                                   FLAGS.batch_size, classes=classes)
        if autoattack:
            result.update(autoattack=autoattack,
                          autoattack_robust_accuracy=autoattack["robust_accuracy"])
        print(f"transfer {name}: natural_accuracy={result['natural_accuracy']:.4f} "
              f"robust_accuracy={result['robust_accuracy']:.4f} ({len(test)} test examples)")
        rows.append(result)
    write_transfer(rows, output_dir, task)
    return rows, task, f"PGD-{FLAGS.transfer_attack_steps}"


def check_probe_resume(probe_dir, model_path, classes):
    """Lets a probe resume its checkpoints only under the same settings (probe.json)."""
    import glob
    import hashlib

    with open(model_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    settings = {name: FLAGS[name].value for name in PROBE_FLAGS}
    settings = json.loads(json.dumps(dict(settings, classes=classes, model_sha256=digest)))
    path = os.path.join(probe_dir, "probe.json")
    if glob.glob(os.path.join(probe_dir, "checkpoints", "*", "state.json")):
        old = json.load(open(path)) if os.path.isfile(path) else {}
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise ConfigError(
                f"{probe_dir} holds a linear probe trained with other settings "
                f"({', '.join(changed[:4])} differ); use the same flags to resume it, or a new "
                "--output_dir")
        logging.info("%s holds checkpoints of this probe: resuming", probe_dir)
    os.makedirs(probe_dir, exist_ok=True)
    common.write_json(path, settings)


def transfer_command():
    from gacd_tf.analysis.tables import model_names

    paths = require("models", "transfer")
    rows, task, _ = transfer(paths, model_names(paths), FLAGS.output_dir)
    return {"task": task, "models": rows}
