"""Seconds per training step of every trainer, and what the extra work costs.

Table 1 (teacher training): natural step vs PGD-K adversarial step, and the
ratio PGD-AT / ((K + 1) x natural) (a PGD-K step makes K attack passes plus
one training pass, so ~1.0 means no overhead beyond those passes).

Table 2 (distillation, same student/teacher/batch): KD, ARD (PGD-K), GACD
with its default 1-step OT attack and GACD with a K-step OT attack, plus the
ratios GACD/ARD at equal attack steps (target <= 1.05) and
GACD / (sum of its network passes) where the passes are timed alone:
student inference forward, K student attack passes (forward + input
gradient), teacher forward, one student training step.

Table 3 (--compare, the default): GACD (K OT steps) and ARD (PGD-K) timed
step by step in alternating order (even rounds ARD first, odd rounds GACD
first), the median of each and their ratio per order and over all rounds, then
where GACD's extra time goes: each piece of its step timed alone (clean
forward pass, OT attack vs PGD attack, sampler, two-sided NCE forward and
backward, bank updates).

Example:
    python benchmarks/step_time.py --arch=resnet20 --teacher_arch=resnet20 \
        --batch_size=128 --attack_steps=10 --nce_k=16384 --num_data=50000
    # only Table 3:
    python benchmarks/step_time.py --tables=compare --repeats=7
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("arch", "resnet20", "Architecture of the trained network / student.")
flags.DEFINE_string("teacher_arch", "resnet20", "Teacher architecture (distillation rows).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("attack_steps", 10, "K: PGD steps of the adversarial/ARD step.")
flags.DEFINE_integer("num_classes", 10, "Classes.")
flags.DEFINE_integer("image_size", 32, "Input size.")
flags.DEFINE_integer("nce_k", 16384, "GACD negatives.")
flags.DEFINE_integer("num_data", 50000, "GACD memory-bank size M.")
flags.DEFINE_bool("distill", True, "Also time the distillers.")
flags.DEFINE_integer("warmup", 2, "Untimed steps (tracing).")
flags.DEFINE_integer("repeats", 5, "Timed steps (median); in Table 3, rounds of each order.")
flags.DEFINE_enum("tables", "all", ["all", "compare"],
                  "all: Tables 1-3; compare: only Table 3 (GACD vs ARD, both orders).")
FLAGS = flags.FLAGS


def median_seconds(fn):
    for _ in range(FLAGS.warmup):
        fn()
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def fit_step_seconds(trainer, batch):
    """Median time of ``trainer.train_step`` compiled as fit would."""
    import keras

    trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    trainer.make_train_function()
    iterator = iter([batch] * (FLAGS.warmup + FLAGS.repeats))
    return median_seconds(lambda: trainer.train_function(iterator))


def interleaved_seconds(fns, rounds):
    """Time each of ``fns`` (name -> callable) once per round, alternating the order.

    Returns ``{order: {name: [seconds]}}`` with order ``"A first"`` for the
    rounds run in the dict's order and ``"B first"`` for the reversed ones.
    """
    names = list(fns)
    for name in names:
        for _ in range(FLAGS.warmup):
            fns[name]()
    result = {"A first": {n: [] for n in names}, "B first": {n: [] for n in names}}
    for r in range(2 * rounds):
        order, run = (("A first", names) if r % 2 == 0 else ("B first", names[::-1]))
        for name in run:
            start = time.perf_counter()
            fns[name]()
            result[order][name].append(time.perf_counter() - start)
    return result


def print_table(title, rows):
    print(f"\n{title}")
    print(f"{'step':<28}{'s/step':>10}{'images/s':>12}")
    for label, seconds in rows:
        print(f"{label:<28}{seconds:>10.3f}{FLAGS.batch_size / seconds:>12.1f}")


def main(argv):
    del argv
    import keras
    import tensorflow as tf

    logging.set_verbosity(logging.ERROR)  # each trainer traces its own step: no retrace warnings

    from gacd_tf.attacks import PGD
    from gacd_tf.methods.gacd import OptimalTransport
    from gacd_tf.models import build_model, features_and_logits
    from gacd_tf.methods import AdversarialTrainer, ARDDistiller, GACDDistiller, KDDistiller

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    size, b, k = FLAGS.image_size, FLAGS.batch_size, FLAGS.attack_steps
    shape = (size, size, 3)
    x = tf.constant(rng.uniform(0, 1, (b,) + shape).astype("float32"))
    y = tf.constant(rng.integers(0, FLAGS.num_classes, b).astype("int32"))
    idx = tf.constant(rng.choice(FLAGS.num_data, b, replace=False).astype("int32"))
    batch = (x, y, idx)

    def student():
        return build_model(FLAGS.arch, num_classes=FLAGS.num_classes, input_shape=shape)

    if FLAGS.tables == "compare":
        return compare(batch, student, rng)
    rows = [(label, fit_step_seconds(AdversarialTrainer(student(), attack=attack), batch))
            for label, attack in [("natural", PGD(steps=0, random_start=False)),
                                  (f"PGD-{k} AT", PGD(steps=k, seed=0))]]
    print_table(f"Teacher training: arch={FLAGS.arch} batch={b} image={size} K={k} "
                f"(median of {FLAGS.repeats})", rows)
    natural, adversarial = rows[0][1], rows[1][1]
    print(f"ratio PGD-{k} AT / (({k}+1) x natural) = {adversarial / ((k + 1) * natural):.3f}")
    if not FLAGS.distill:
        return

    teacher = build_model(FLAGS.teacher_arch, num_classes=FLAGS.num_classes, input_shape=shape)
    labels = rng.integers(0, FLAGS.num_classes, FLAGS.num_data).astype("int32")

    def gacd(steps):
        attack = PGD(eps=8 / 255, step_size=8 / 255, steps=steps, seed=0,
                     objective=OptimalTransport("features"))
        return GACDDistiller(student(), teacher, labels, nce_k=FLAGS.nce_k, attack=attack, seed=0)

    rows = [
        ("KD", fit_step_seconds(KDDistiller(student(), teacher), batch)),
        (f"ARD (PGD-{k})", fit_step_seconds(
            ARDDistiller(student(), teacher, attack=PGD(steps=k, seed=0)), batch)),
        ("GACD (OT, 1 step)", fit_step_seconds(gacd(1), batch)),
        (f"GACD (OT, {k} steps)", fit_step_seconds(gacd(k), batch)),
    ]

    # The network passes of a GACD step, each timed alone.
    s_fl, t_fl = features_and_logits(student()), features_and_logits(teacher)
    forward_s = median_seconds(tf.function(lambda: s_fl(x, training=False)))
    forward_t = median_seconds(tf.function(lambda: t_fl(x, training=False)))
    one_pass = PGD(steps=1, random_start=False)
    attack_pass = median_seconds(tf.function(lambda: one_pass(s_fl, x, y)))
    passes = {s: forward_s + s * attack_pass + forward_t + natural for s in (1, k)}
    rows += [("passes of GACD (1 step)", passes[1]), (f"passes of GACD ({k} steps)", passes[k])]
    print_table(f"Distillation: student={FLAGS.arch} teacher={FLAGS.teacher_arch} batch={b} "
                f"nce_k={FLAGS.nce_k} M={FLAGS.num_data} (median of {FLAGS.repeats})", rows)
    times = dict(rows)
    print(f"ratio GACD ({k} OT steps) / ARD (PGD-{k})      = "
          f"{times[f'GACD (OT, {k} steps)'] / times[f'ARD (PGD-{k})']:.3f}   (target <= 1.05)")
    print(f"ratio GACD (1 step) / its network passes  = "
          f"{times['GACD (OT, 1 step)'] / passes[1]:.3f}")
    print(f"ratio GACD ({k} steps) / its network passes = "
          f"{times[f'GACD (OT, {k} steps)'] / passes[k]:.3f}")
    compare(batch, student, rng)


def compare(batch, student, rng):
    """Table 3: GACD (K OT steps) vs ARD (PGD-K) in both orders, and GACD's pieces."""
    import keras
    import tensorflow as tf

    from gacd_tf.attacks import PGD
    from gacd_tf.methods.gacd import OptimalTransport
    from gacd_tf.models import build_model
    from gacd_tf.methods import ARDDistiller, GACDDistiller

    x, y, idx = batch
    b, k = FLAGS.batch_size, FLAGS.attack_steps
    shape = tuple(x.shape[1:])
    teacher = build_model(FLAGS.teacher_arch, num_classes=FLAGS.num_classes, input_shape=shape)
    labels = rng.integers(0, FLAGS.num_classes, FLAGS.num_data).astype("int32")
    ard = ARDDistiller(student(), teacher, attack=PGD(steps=k, seed=0))
    gacd = GACDDistiller(student(), teacher, labels, nce_k=FLAGS.nce_k, seed=0,
                         attack=PGD(eps=8 / 255, step_size=8 / 255, steps=k, seed=0,
                                    objective=OptimalTransport("features")))
    steps = {}
    for name, trainer in ((f"ARD (PGD-{k})", ard), (f"GACD (OT, {k} steps)", gacd)):
        trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        trainer.make_train_function()
        iterator = iter([batch] * (FLAGS.warmup + 2 * FLAGS.repeats))
        steps[name] = (lambda t=trainer, it=iterator: t.train_function(it))
    timed = interleaved_seconds(steps, FLAGS.repeats)
    a_name, g_name = list(steps)
    print(f"\nGACD vs ARD at equal attack steps, alternating order: student={FLAGS.arch} "
          f"teacher={FLAGS.teacher_arch} batch={b} K={k} nce_k={FLAGS.nce_k} "
          f"M={FLAGS.num_data} ({FLAGS.repeats} rounds per order, median)")
    print(f"{'order':<14}{'ARD s/step':>12}{'GACD s/step':>13}{'GACD/ARD':>10}")
    everything = {n: [] for n in steps}
    for order, label in (("A first", "ARD first"), ("B first", "GACD first")):
        ard_s = float(np.median(timed[order][a_name]))
        gacd_s = float(np.median(timed[order][g_name]))
        for n in steps:
            everything[n] += timed[order][n]
        print(f"{label:<14}{ard_s:>12.3f}{gacd_s:>13.3f}{gacd_s / ard_s:>10.3f}")
    ard_s, gacd_s = (float(np.median(everything[n])) for n in (a_name, g_name))
    print(f"{'both':<14}{ard_s:>12.3f}{gacd_s:>13.3f}{gacd_s / ard_s:>10.3f}   "
          "(target <= 1.05)")

    # Where GACD's extra time goes: the pieces of its step, each timed alone.
    y_all = tf.constant(rng.integers(0, FLAGS.num_classes, b).astype("int32"))
    clean = gacd.attack.objective.target_from(gacd.student_fl(x, training=False))
    negatives = gacd.sampler(y_all, gacd.nce_k)
    feats_s, _ = gacd.student_fl(x, training=False)
    feats_t, _ = gacd.teacher_fl(x, training=False)
    e_s0 = tf.math.l2_normalize(gacd.student_embed(feats_s), axis=-1)
    e_t0 = tf.math.l2_normalize(gacd.teacher_embed(feats_t), axis=-1)
    weight = tf.ones([b])

    def nce_and_grad():
        with tf.GradientTape() as tape:
            tape.watch([e_s0, e_t0])
            loss = gacd.nce_loss(e_t0, e_s0, negatives, weight)
        return tape.gradient(loss, [e_s0, e_t0])

    def banks():
        gacd.student_bank.update(idx, e_s0)
        gacd.teacher_bank.update(idx, e_t0)

    pieces = [
        ("clean student forward", tf.function(lambda: gacd.student_fl(x, training=False))),
        (f"OT attack ({k} steps)", tf.function(lambda: gacd.attack(gacd.student_fl, x, clean))),
        (f"PGD attack ({k} steps, ARD)", tf.function(lambda: ard.attack(ard.student, x, y))),
        (f"sampler (k={FLAGS.nce_k})", tf.function(lambda: gacd.sampler(y_all, gacd.nce_k))),
        ("NCE fwd+bwd (" + gacd.nce_form + ")", tf.function(nce_and_grad)),
        ("bank updates", tf.function(banks)),
    ]
    rows = [(label, median_seconds(fn)) for label, fn in pieces]
    print(f"\nPieces of the GACD step, each alone (median of {FLAGS.repeats})")
    print(f"{'piece':<30}{'s':>9}{'% of ARD step':>15}")
    for label, seconds in rows:
        print(f"{label:<30}{seconds:>9.3f}{100 * seconds / ard_s:>14.1f}%")


if __name__ == "__main__":
    app.run(main)
