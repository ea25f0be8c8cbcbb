"""Seconds per training step on one device vs MirroredStrategy over N logical CPUs.

On a CPU the logical devices share the same cores, so this measures the
overhead of the replicated step (cross-replica gathers, synchronized batch
norm, gradient reduction), not a speed-up; on N GPUs the same code splits
the batch.

Example:
    python benchmarks/distribute_step_time.py --arch=resnet8 --batch_size=128 --cpu_devices=2
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("arch", "resnet8", "Student / trained architecture.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("attack_steps", 3, "PGD steps of the adversarial step.")
flags.DEFINE_integer("nce_k", 4096, "GACD negatives.")
flags.DEFINE_integer("num_data", 10000, "GACD memory-bank size M.")
flags.DEFINE_integer("cpu_devices", 2, "Logical CPU devices for the mirrored run.")
flags.DEFINE_integer("warmup", 2, "Untimed steps.")
flags.DEFINE_integer("repeats", 5, "Timed steps.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from gacd_tf.training.distribute import make_strategy

    mirrored = make_strategy("mirrored", FLAGS.cpu_devices)  # before any TF op
    import keras
    import tensorflow as tf

    from gacd_tf.attacks import PGD
    from gacd_tf.models import build_model
    from gacd_tf.methods import AdversarialTrainer, GACDDistiller

    logging.set_verbosity(logging.ERROR)
    rng = np.random.default_rng(0)
    b = FLAGS.batch_size
    x = rng.uniform(0, 1, (b, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, b).astype("int32")
    idx = rng.choice(FLAGS.num_data, b, replace=False).astype("int32")
    labels = rng.integers(0, 10, FLAGS.num_data).astype("int32")
    data = tf.data.Dataset.from_tensors((x, y, idx)).repeat()

    def trainers():
        model = build_model(FLAGS.arch)
        yield f"PGD-{FLAGS.attack_steps} AT", AdversarialTrainer(
            model, attack=PGD(steps=FLAGS.attack_steps, seed=0))
        yield "GACD", GACDDistiller(build_model(FLAGS.arch), build_model(FLAGS.arch), labels,
                                    nce_k=FLAGS.nce_k, seed=0)

    def seconds_per_step(strategy, index):
        with strategy.scope():
            label, trainer = list(trainers())[index]
            trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        trainer.fit(data, epochs=1, steps_per_epoch=FLAGS.warmup, verbose=0, shuffle=False)
        start = time.perf_counter()
        trainer.fit(data, epochs=1, steps_per_epoch=FLAGS.repeats, verbose=0, shuffle=False)
        return label, (time.perf_counter() - start) / FLAGS.repeats

    print(f"\narch={FLAGS.arch} global batch={b} mirrored over {FLAGS.cpu_devices} logical "
          f"CPUs (mean of {FLAGS.repeats} steps)")
    print(f"{'step':<16}{'single s/step':>15}{'mirrored s/step':>17}{'ratio':>8}")
    for index in range(2):
        label, single = seconds_per_step(tf.distribute.get_strategy(), index)
        _, replicated = seconds_per_step(mirrored, index)
        print(f"{label:<16}{single:>15.3f}{replicated:>17.3f}{replicated / single:>8.2f}")


if __name__ == "__main__":
    app.run(main)
