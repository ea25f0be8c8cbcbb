"""Seconds per training step: natural vs PGD adversarial training.

Prints a table (seconds/step, images/s) and the ratio
PGD-AT / ((K + 1) x natural): a PGD-K step makes K forward/backward passes
for the attack plus one for the update, so ~1.0 means the attack costs no
more than the passes it needs.

Example:
    python benchmarks/step_time.py --arch=resnet20 --batch_size=128 --attack_steps=10
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_string("arch", "resnet20", "Architecture.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("attack_steps", 10, "K, the PGD steps of the adversarial step.")
flags.DEFINE_integer("num_classes", 10, "Classes.")
flags.DEFINE_integer("image_size", 32, "Input size.")
flags.DEFINE_integer("warmup", 2, "Untimed steps (tracing).")
flags.DEFINE_integer("repeats", 5, "Timed steps.")
FLAGS = flags.FLAGS


def time_steps(trainer, x, y):
    for _ in range(FLAGS.warmup):
        trainer.train_on_batch(x, y)
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        trainer.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv):
    del argv
    import keras

    from gacd_tf.attacks import PGD
    from gacd_tf.models import build_model
    from gacd_tf.trainers import AdversarialTrainer

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    size = FLAGS.image_size
    x = rng.uniform(0, 1, (FLAGS.batch_size, size, size, 3)).astype("float32")
    y = rng.integers(0, FLAGS.num_classes, FLAGS.batch_size).astype("int32")
    k = FLAGS.attack_steps

    rows = []
    for label, attack in [("natural", PGD(steps=0, random_start=False)),
                          (f"PGD-{k} AT", PGD(steps=k, seed=0))]:
        model = build_model(FLAGS.arch, num_classes=FLAGS.num_classes,
                            input_shape=(size, size, 3))
        trainer = AdversarialTrainer(model, attack=attack)
        trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        rows.append((label, time_steps(trainer, x, y)))

    print(f"\narch={FLAGS.arch} batch={FLAGS.batch_size} image={size} K={k} "
          f"(median of {FLAGS.repeats} steps)")
    print(f"{'step':<14}{'s/step':>10}{'images/s':>12}")
    for label, seconds in rows:
        print(f"{label:<14}{seconds:>10.3f}{FLAGS.batch_size / seconds:>12.1f}")
    natural, adversarial = rows[0][1], rows[1][1]
    print(f"ratio PGD-{k} AT / ({k}+1) x natural = {adversarial / ((k + 1) * natural):.3f}")


if __name__ == "__main__":
    app.run(main)
