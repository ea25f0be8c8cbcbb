"""gacd-evaluate: natural and adversarial accuracy of a saved model.

Example:
    gacd-evaluate --model=runs/quickstart/model.keras --dataset=cifar10 \
        --attack=pgd --attack_steps=20 --output=eval.json
    gacd-evaluate --model=exports/quickstart/1 --dataset=cifar10  # a SavedModel
    gacd-evaluate --model=runs/quickstart/model.keras --attack=autoattack \
        --test_examples=1000 --output=aa.json --save_adversarial=aa.npz

With --attack=autoattack it prints one line per attack ("robust accuracy after
apgd-t: 21.50 %") and the reference's sanity warnings; the --output JSON adds
robust_accuracy_by_attack (attack -> robust accuracy after it, in run order)
and warnings.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from gacd_tf.attacks.registry import AUTOATTACK  # noqa: E402
from gacd_tf.data import load_split, make_dataset  # noqa: E402
from gacd_tf.evaluation import evaluate_robustness  # noqa: E402
from gacd_tf.models.io import check_model_fits  # noqa: E402
from gacd_tf.programs import attack_flags, common, data_flags, flag_core  # noqa: E402
from gacd_tf.programs.flag_core import FLAGS  # noqa: E402


def define_flags():
    data_flags.define_data_flags(train=False)
    attack_flags.define_attack_flags()
    flag_core.DEFINE_string("model", None, "A .keras model file, or a SavedModel gacd-export "
                          "wrote: a version folder BASE/NAME/N, or BASE/NAME for its "
                          "highest version.")
    common.define_load_flags()
    flag_core.DEFINE_string("output", None, "Write the results to this JSON file.")
    flag_core.DEFINE_string("save_adversarial", None, "Write the adversarial examples (x_adv, "
                         "float32 in [0,1]), the per-example flags (robust, clean_correct) and "
                         "the labels to this .npz file.")
    flag_core.DEFINE_string("progress_file", None, "--attack=autoattack: save the evaluation's "
                         "progress in this .npz file (every minute and after each attack) and, "
                         "started again with the same flags, resume from it; deleted when the "
                         "evaluation ends (default: --output with .progress.npz appended, "
                         "when --output is set).")
    flag_core.DEFINE_integer("verbose", 1, "Progress bar (1) or not (0).")
    flags.mark_flag_as_required("model")


def main(argv):
    del argv

    common.setup_runtime(FLAGS.seed)
    model = common.load_model_from_flags(FLAGS.model, "--model", saved_model=True)
    with flag_core.arguments_as_flags(examples="test_examples"):
        test = load_split(FLAGS.dataset, "test", FLAGS.data_dir, FLAGS.test_examples)
    check_model_fits(model, test.info, source=FLAGS.model)
    for flag in ("output", "save_adversarial", "progress_file"):
        if FLAGS[flag].value:
            common.prepare_output_dir(os.path.dirname(os.path.abspath(FLAGS[flag].value)),
                                      f"the folder of --{flag}")
    attack = attack_flags.attack_from_flags()
    # AutoAttack prints its per-attack lines even without progress bars.
    verbose = FLAGS.verbose or (2 if FLAGS.attack == AUTOATTACK else 0)
    progress_file = FLAGS.progress_file or (f"{FLAGS.output}.progress.npz" if FLAGS.output
                                            else None)
    result = evaluate_robustness(model, make_dataset(test, FLAGS.batch_size, training=False),
                                 attack, verbose=verbose,
                                 return_examples=bool(FLAGS.save_adversarial),
                                 progress_file=progress_file)
    if FLAGS.save_adversarial:
        attack_flags.save_adversarial(FLAGS.save_adversarial, result)
    result = {k: v for k, v in result.items() if k not in attack_flags.EXAMPLE_ARRAYS}
    result.setdefault("robust_accuracy_by_attack", {FLAGS.attack: result["robust_accuracy"]})
    result.setdefault("warnings", [])
    result.update(dataset=test.info.name, split="test", model=FLAGS.model)
    common.print_result(result)
    if FLAGS.output:
        common.write_json(FLAGS.output, result)


def entry_point():
    define_flags()
    flag_core.run(main)


if __name__ == "__main__":
    entry_point()
