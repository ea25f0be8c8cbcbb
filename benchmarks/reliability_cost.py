"""What resumability and determinism cost: op determinism per step, and one checkpoint.

Table 1: seconds per training step (median, compiled as ``fit`` runs it) of
PGD-K adversarial training and of GACD, each measured in a fresh subprocess
without and with ``tf.config.experimental.enable_op_determinism()`` (it
cannot be switched off inside one process), and the ratio.

Table 2: seconds to write one full checkpoint of a GACD distiller
(``TrainingCheckpoint.save``: network, heads, M x d memory bank, optimizer
slots, random generators), to restore it, and its size, with the equivalent
number of GACD steps, so ``--checkpoint_every_steps`` can be chosen.

Example:
    python benchmarks/reliability_cost.py --arch=resnet20 --batch_size=128 \
        --attack_steps=10 --nce_k=16384 --num_data=50000
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_time  # noqa: E402  (its flags: --arch, --batch_size, --warmup, --repeats, ...)

FLAGS = flags.FLAGS
flags.DEFINE_bool("child_deterministic", None, "Internal: time the steps in this process "
                  "with (True) or without (False) op determinism and print JSON.")


def build(kind):
    from gacd_tf.attacks import PGD
    from gacd_tf.methods.gacd import OptimalTransport
    from gacd_tf.models import build_model
    from gacd_tf.methods import AdversarialTrainer, GACDDistiller

    shape = (FLAGS.image_size, FLAGS.image_size, 3)

    def model():
        return build_model(FLAGS.arch, num_classes=FLAGS.num_classes, input_shape=shape)

    if kind == "adversarial":
        return AdversarialTrainer(model(), attack=PGD(steps=FLAGS.attack_steps, seed=0))
    labels = np.random.default_rng(0).integers(0, FLAGS.num_classes, FLAGS.num_data)
    teacher = build_model(FLAGS.teacher_arch, num_classes=FLAGS.num_classes, input_shape=shape)
    attack = PGD(eps=8 / 255, step_size=8 / 255, steps=1, seed=0,
                 objective=OptimalTransport("features"))
    return GACDDistiller(model(), teacher, labels.astype("int32"), nce_k=FLAGS.nce_k,
                         attack=attack, seed=0)


def batch():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    b, size = FLAGS.batch_size, FLAGS.image_size
    return (tf.constant(rng.uniform(0, 1, (b, size, size, 3)).astype("float32")),
            tf.constant(rng.integers(0, FLAGS.num_classes, b).astype("int32")),
            tf.constant(np.arange(b, dtype="int32")))


def child(deterministic):
    import tensorflow as tf

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    data = batch()
    print(json.dumps({kind: step_time.fit_step_seconds(build(kind), data)
                      for kind in ("adversarial", "gacd")}))


def step_times(deterministic):
    out = subprocess.run(
        [sys.executable, __file__, f"--child_deterministic={deterministic}",
         *[a for a in sys.argv[1:] if not a.startswith("--child")]],
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def checkpoint_costs(step_seconds):
    import keras

    from gacd_tf.training import TrainingCheckpoint
    from gacd_tf.training.fit_resumable import _restore
    from gacd_tf.training.training_checkpoint import read_state

    trainer = build("gacd")
    trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    trainer.optimizer.build(trainer.trainable_variables)
    with tempfile.TemporaryDirectory() as folder:
        ckpt = TrainingCheckpoint(folder, steps_per_epoch=10**6)
        ckpt.set_model(trainer)
        saves, restores = [], []
        for i in range(FLAGS.repeats):
            trainer.optimizer.iterations.assign(i + 1)
            start = time.perf_counter()
            ckpt.save(0, i + 1)
            saves.append(time.perf_counter() - start)
            state = read_state(folder)
            start = time.perf_counter()
            _restore(trainer, ckpt, state)
            restores.append(time.perf_counter() - start)
        size = os.path.getsize(os.path.join(folder, state["weights"])) / 2**20
    save, restore = float(np.median(saves)), float(np.median(restores))
    print(f"\nCheckpoint of GACD (student {FLAGS.arch}, teacher {FLAGS.teacher_arch}, "
          f"bank {FLAGS.num_data} x 128), median of {FLAGS.repeats}")
    print(f"{'':<10}{'seconds':>10}{'GACD steps':>12}")
    print(f"{'save':<10}{save:>10.3f}{save / step_seconds:>12.2f}")
    print(f"{'restore':<10}{restore:>10.3f}{restore / step_seconds:>12.2f}")
    print(f"size {size:.1f} MiB")


def main(argv):
    del argv
    if FLAGS.child_deterministic is not None:
        child(FLAGS.child_deterministic)
        return
    plain, deterministic = step_times(False), step_times(True)
    print(f"Step time without / with op determinism: arch={FLAGS.arch} batch={FLAGS.batch_size} "
          f"PGD-{FLAGS.attack_steps}, GACD nce_k={FLAGS.nce_k} M={FLAGS.num_data}, "
          f"median of {FLAGS.repeats}")
    print(f"{'step':<20}{'plain s':>10}{'determ. s':>11}{'ratio':>8}")
    for kind in ("adversarial", "gacd"):
        a, b = plain[kind], deterministic[kind]
        print(f"{kind:<20}{a:>10.3f}{b:>11.3f}{b / a:>8.2f}")
    checkpoint_costs(plain["gacd"])


if __name__ == "__main__":
    app.run(main)
