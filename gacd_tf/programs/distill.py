"""gacd-distill: distil a robust teacher into a student (any method of the
``gacd_tf.methods.METHODS`` registry: KD, ARD, GACD, ...), then
optionally adversarially fine-tune it (AFT). ``--method=natural`` trains the
student by plain cross-entropy with no teacher (the natural+AFT control).

Writes into --model_dir: flags.json, model.keras (the final student),
distilled.keras (the student before AFT, when --aft_epochs > 0),
checkpoints/distill/ and checkpoints/aft/ (the full training state after every
epoch and every --checkpoint_every_steps: student, embedding heads, GACD
memory bank and Z, optimizer, random generators; started again with the same
flags, a killed run resumes from them), metrics.json (natural and PGD robust
accuracy of the final student, and of the distilled one before AFT, plus the
method's settings, its validation attack among them, and AFT's
(aft_validation_attack); with --final_autoattack_examples=N also their
AutoAttack figures under "autoattack"; GACD adds bank_cross_class_cosine,
the collapse detector of its student bank after distillation, and
bank_centred_within_class_cosine, the class structure left in it once its
rows' mean is removed; two-sided, the same of the teacher bank),
distill_log.csv / aft_log.csv and TensorBoard logs in logs/distill and
logs/aft. --val_examples holds out class-balanced training examples (never
the test split), validated after each epoch.

Example:
    gacd-distill --method=gacd --teacher=runs/quickstart/model.keras --arch=resnet8 \
        --dataset=cifar10 --epochs=5 --aft_epochs=1 --model_dir=runs/gacd
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402

from absl import flags, logging  # noqa: E402

from gacd_tf.data import get_dataset_info  # noqa: E402
from gacd_tf.evaluation import evaluate_robustness  # noqa: E402
from gacd_tf.methods import METHODS, AdversarialTrainer  # noqa: E402
from gacd_tf.models.io import check_model_fits, weights_digest  # noqa: E402
from gacd_tf.programs import (  # noqa: E402
    attack_flags, common, data_flags, devices, flag_core, method_flags,
)
from gacd_tf.programs.flag_core import FLAGS  # noqa: E402
from gacd_tf.training.atomic_files import save_model_atomic  # noqa: E402


def define_flags():
    data_flags.define_data_flags(train=True)
    attack_flags.define_attack_flags()
    attack_flags.define_final_autoattack_flags()
    common.define_optimizer_flags(epochs=100, learning_rate=0.1)
    devices.define_distribute_flags()
    flag_core.DEFINE_string("teacher", None, "The robust teacher, a .keras file (required by "
                            "every method but the teacher-free 'natural', which ignores it).")
    common.define_load_flags()
    flag_core.DEFINE_string("arch", "resnet20", "Student architecture from the model zoo.")
    common.register_arch_validator()
    flag_core.DEFINE_string("model_dir", None, "Output folder (created if needed).")
    flag_core.DEFINE_integer("train_attack_steps", 10, "ARD/AFT: PGD steps of the student "
                             "attack.", lower_bound=1)
    flag_core.DEFINE_float("train_step_size", None, "ARD/AFT: PGD step size (default "
                           "--step_size).", lower_bound=0.0)
    method_flags.define_method_flags()
    # AFT
    flag_core.DEFINE_integer("aft_epochs", 0, "Adversarial fine-tuning epochs after "
                             "distillation (PGD-AT of the whole student).", lower_bound=0)
    flag_core.DEFINE_float("aft_learning_rate", 0.01, "AFT learning rate (constant).",
                           lower_bound=0.0)
    data_flags.define_validation_flags(500, "attacked after each epoch (distillation and "
                                   "AFT) by PGD of --attack_steps steps at --step_size, "
                                   "whatever --attack is, and logged as val_*")
    flag_core.DEFINE_bool("augment", True, "Pad-4 random crop + horizontal flip.")
    flag_core.DEFINE_integer("verbose", 1, "Keras fit verbosity (0, 1 or 2).")
    common.define_checkpoint_flags()
    attack_flags.check_one_step_fits("train_step_size", "train_attack_steps", "step_size")
    flags.mark_flag_as_required("model_dir")
    register_teacher_validator()


def register_teacher_validator():
    """--teacher is required unless --method needs none (exactly absl's "required" error)."""

    def check(teacher):
        cls = METHODS.get(FLAGS["method"].value)
        return teacher is not None or not cls.NEEDS_TEACHER

    flags.register_validator("teacher", check,
                             message="Flag --teacher must have a value other than None.")


def main(argv):
    del argv

    run = common.start_training_run()
    if run is None:
        return
    model_dir, metrics_path, strategy = run
    teacher = None
    if method_flags.method_class().NEEDS_TEACHER:
        with strategy.scope():
            teacher = common.load_model_from_flags(FLAGS.teacher, "--teacher")
        # Refuse a teacher that does not fit the dataset before reading any data.
        check_model_fits(teacher, get_dataset_info(FLAGS.dataset), role="teacher",
                         source=FLAGS.teacher)
    elif FLAGS.teacher:
        logging.warning("--method=%s trains without a teacher: --teacher=%s is ignored",
                        FLAGS.method, FLAGS.teacher)
    data = data_flags.load_data_from_flags()
    info, test_ds = data.info, data.test_ds
    steps_per_epoch = data.steps_per_epoch
    common.write_json(os.path.join(model_dir, "flags.json"), flag_core.flag_values())

    teacher_digest = weights_digest(teacher) if teacher is not None else None
    with strategy.scope():
        student = common.build_model_from_flags(info)
        trainer, settings = method_flags.method_from_flags(student, teacher,
                                                           data.train.labels, steps_per_epoch)
        trainer.compile(optimizer=common.optimizer_from_flags(steps_per_epoch))
    model_path = os.path.join(model_dir, "model.keras")
    phase = common.fit_phase(trainer, data, model_dir, "distill", FLAGS.epochs, model_path)
    resumed, seconds = {"distill": phase["resumed_from"]}, {"distill": phase["train_seconds"]}
    teacher_unchanged = teacher is None or weights_digest(teacher) == teacher_digest
    if not teacher_unchanged:  # a bug (or a --teacher file replaced before resuming)
        raise RuntimeError("the teacher's weights changed during distillation; if this run "
                           "was resumed, was the --teacher file replaced?")

    result = {}
    result.update(trainer.extra_results())  # e.g. GACD: its banks after distillation
    if FLAGS.aft_epochs:
        # The distilled student's evaluation is kept, so a resumed AFT skips it.
        before_path = os.path.join(common.checkpoint_dir(model_dir, "aft"), "before_aft.json")
        if os.path.isfile(before_path):
            with open(before_path) as f:
                result["before_aft"] = json.load(f)
        else:
            save_model_atomic(student, os.path.join(model_dir, "distilled.keras"))
            logging.info("evaluating the distilled student before AFT")
            result["before_aft"] = evaluate_robustness(
                student, test_ds, attack_flags.attack_from_flags(), verbose=FLAGS.verbose,
                strategy=strategy)
            autoattack = attack_flags.final_autoattack(
                student, info.name, FLAGS.data_dir, FLAGS.batch_size,
                progress_file=os.path.join(os.path.dirname(before_path), "autoattack_before.npz"),
                strategy=strategy)
            if autoattack:
                result["before_aft"]["autoattack"] = autoattack
            os.makedirs(os.path.dirname(before_path), exist_ok=True)
            common.write_json(before_path, result["before_aft"])
        with strategy.scope():
            aft = aft_trainer(student, method_flags.context_from_flags(), FLAGS.weight_decay)
            aft.compile(optimizer=common.optimizer_from_flags(
                steps_per_epoch, epochs=FLAGS.aft_epochs,
                learning_rate=FLAGS.aft_learning_rate, lr_schedule="constant"))
        phase = common.fit_phase(aft, data, model_dir, "aft", FLAGS.aft_epochs, model_path,
                                 seed_offset=1)
        resumed["aft"], seconds["aft"] = phase["resumed_from"], phase["train_seconds"]
        result["aft_validation_attack"] = aft.eval_attack.get_config()

    logging.info("evaluating %s on %d test examples", model_path, len(data.test.labels))
    # A fresh attack (same seed) per evaluation: a run resumed after the
    # before-AFT evaluation reports exactly what an uninterrupted one does.
    result.update(evaluate_robustness(student, test_ds, attack_flags.attack_from_flags(),
                                      verbose=FLAGS.verbose, strategy=strategy))
    autoattack = attack_flags.final_autoattack(
        student, info.name, FLAGS.data_dir, FLAGS.batch_size,
        progress_file=os.path.join(common.checkpoint_dir(model_dir, "final"), "autoattack.npz"),
        strategy=strategy)
    if autoattack:
        result["autoattack"] = autoattack
    result.update(method=FLAGS.method, settings=settings, arch=FLAGS.arch,
                  teacher=FLAGS.teacher if teacher is not None else None,
                  dataset=info.name, split="test", model="model.keras",
                  aft_epochs=FLAGS.aft_epochs, train_seconds=seconds, resumed_from=resumed,
                  teacher_unchanged=teacher_unchanged)
    common.write_json(metrics_path, result)
    common.print_result(result, prefix=f"{FLAGS.method}{'+aft' if FLAGS.aft_epochs else ''}: ")


def aft_trainer(student, context, weight_decay):
    """AFT: PGD-AT of the whole student with the context's training attack, validated
    with its ``validation_attack()``.

    The validation attack draws its random starts from the training attack's
    generator, as when AFT validated with its training attack (before
    ``MethodContext.val_attack_steps``): so the trainer holds the one generator
    an AFT checkpoint of that code saved (it resumes), and the training draws are
    those of that code.
    """
    attack, eval_attack = context.attack(), context.validation_attack()
    eval_attack.seed_generator = attack.seed_generator
    return AdversarialTrainer(student, attack=attack, eval_attack=eval_attack,
                              weight_decay=weight_decay)


def entry_point():
    define_flags()
    flag_core.run(main)


if __name__ == "__main__":
    entry_point()
