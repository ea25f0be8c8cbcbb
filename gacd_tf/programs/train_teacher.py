"""gacd-train-teacher: adversarially train a robust teacher (Madry PGD-AT or TRADES).

Writes into --model_dir: flags.json, model.keras (last epoch), best.keras
(best validation robust accuracy, when --val_examples > 0), metrics.json
(natural and PGD robust accuracy of model.keras on the test split; with
--final_autoattack_examples=N also its AutoAttack figures under "autoattack"),
train_log.csv, TensorBoard logs in logs/train/, and checkpoints/train/ (the
full training state, after every epoch and every --checkpoint_every_steps):
started again with the same flags, a killed run resumes from it.

Example:
    gacd-train-teacher --flagfile=flags/quickstart.cfg --model_dir=runs/quickstart
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from absl import flags, logging  # noqa: E402

from gacd_tf.attacks import PGD  # noqa: E402
from gacd_tf.evaluation import evaluate_robustness  # noqa: E402
from gacd_tf.methods import AdversarialTrainer  # noqa: E402
from gacd_tf.methods.adversarial import TRADES_STARTS  # noqa: E402
from gacd_tf.programs import attack_flags, common, data_flags, devices, flag_core  # noqa: E402
from gacd_tf.programs.flag_core import FLAGS  # noqa: E402


def define_flags():
    data_flags.define_data_flags(train=True)
    attack_flags.define_attack_flags()
    attack_flags.define_final_autoattack_flags()
    devices.define_distribute_flags()
    flag_core.DEFINE_string("model_dir", None, "Output folder (created if needed).")
    flag_core.DEFINE_string("arch", "resnet20", "Architecture name from the model zoo.")
    common.register_arch_validator()
    common.define_optimizer_flags(epochs=100, learning_rate=0.1)
    flag_core.DEFINE_integer("train_attack_steps", 10, "PGD steps of the training attack.",
                             lower_bound=1)
    flag_core.DEFINE_float("train_step_size", None, "PGD step size of the training attack "
                           "(default: --step_size).", lower_bound=0.0)
    flag_core.DEFINE_float("trades_beta", None, "TRADES beta; unset trains Madry PGD-AT.",
                           lower_bound=0.0)
    flag_core.DEFINE_enum("trades_start", "gaussian", list(TRADES_STARTS),
                          "TRADES' attack start: gaussian (the official code's x + 0.001 "
                          "N(0, 1), unclipped, and its passes x, x_adv, x) or attack (the "
                          "training attack's own start, as before this flag).")
    flag_core.DEFINE_bool("attack_training_mode", False, "Make the training attack with the "
                          "network in training mode (batch norm on the batch's statistics, "
                          "its running averages moving at every attack step), as Madry et "
                          "al.'s TensorFlow code does; default: inference mode.")
    data_flags.define_validation_flags(500, "attacked after each epoch to pick best.keras")
    flag_core.DEFINE_bool("augment", True, "Pad-4 random crop + horizontal flip.")
    flag_core.DEFINE_integer("verbose", 1, "Keras fit verbosity (0, 1 or 2).")
    common.define_checkpoint_flags()
    attack_flags.check_one_step_fits("train_step_size", "train_attack_steps", "step_size")
    flags.mark_flag_as_required("model_dir")


def main(argv):
    del argv

    run = common.start_training_run()
    if run is None:
        return
    model_dir, metrics_path, strategy = run
    common.write_json(os.path.join(model_dir, "flags.json"), flag_core.flag_values())

    data = data_flags.load_data_from_flags()
    with strategy.scope():
        model = common.build_model_from_flags(data.info)
        attack = PGD(eps=FLAGS.eps, step_size=FLAGS.train_step_size or FLAGS.step_size,
                     steps=FLAGS.train_attack_steps, norm=FLAGS.norm, seed=FLAGS.seed)
        trainer = AdversarialTrainer(model, attack=attack, trades_beta=FLAGS.trades_beta,
                                     weight_decay=FLAGS.weight_decay,
                                     trades_start=FLAGS.trades_start,
                                     attack_training_mode=FLAGS.attack_training_mode)
        trainer.compile(optimizer=common.optimizer_from_flags(data.steps_per_epoch))

    model_path = os.path.join(model_dir, "model.keras")
    resume = common.fit_phase(trainer, data, model_dir, "train", FLAGS.epochs, model_path,
                              os.path.join(model_dir, "best.keras") if data.val_ds else None)

    logging.info("evaluating %s on %d test examples", model_path, len(data.test.labels))
    result = evaluate_robustness(model, data.test_ds, attack_flags.attack_from_flags(),
                                 verbose=FLAGS.verbose, strategy=strategy)
    result.update(dataset=data.info.name, split="test", arch=FLAGS.arch, model="model.keras",
                  train_seconds=resume["train_seconds"], resumed_from=resume["resumed_from"],
                  train_attack=attack.get_config(), trades_beta=FLAGS.trades_beta,
                  trades_start=trainer.trades_start if FLAGS.trades_beta is not None else None,
                  attack_training_mode=trainer.attack_training_mode)
    autoattack = attack_flags.final_autoattack(
        model, data.info.name, FLAGS.data_dir, FLAGS.batch_size,
        progress_file=os.path.join(common.checkpoint_dir(model_dir, "train"), "autoattack.npz"),
        strategy=strategy)
    if autoattack:
        result["autoattack"] = autoattack
    common.write_json(metrics_path, result)
    common.print_result(result)


def entry_point():
    define_flags()
    flag_core.run(main)


if __name__ == "__main__":
    entry_point()
