"""gacd-evaluate: natural and adversarial accuracy of a saved model.

Example:
    gacd-evaluate --model=runs/quickstart/model.keras --dataset=cifar10 \
        --attack=pgd --attack_steps=20 --output=eval.json
    gacd-evaluate --model=exports/quickstart/1 --dataset=cifar10  # a SavedModel
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from gacd_tf.programs import attack_flags, common  # noqa: E402
from gacd_tf.programs.common import FLAGS  # noqa: E402


def define_flags():
    common.define_data_flags(train=False)
    attack_flags.define_attack_flags()
    common.DEFINE_string("model", None, "A .keras model file, or a SavedModel gacd-export "
                          "wrote: a version folder BASE/NAME/N, or BASE/NAME for its "
                          "highest version.")
    common.define_load_flags()
    common.DEFINE_string("output", None, "Write the results to this JSON file.")
    common.DEFINE_integer("verbose", 1, "Progress bar (1) or not (0).")
    flags.mark_flag_as_required("model")


def main(argv):
    del argv
    from gacd_tf.data import load_split, make_dataset
    from gacd_tf.evaluation import evaluate_robustness
    from gacd_tf.models.io import check_model_fits

    common.setup_runtime(FLAGS.seed)
    model = common.load_model_from_flags(FLAGS.model, "--model", saved_model=True)
    test = load_split(FLAGS.dataset, "test", FLAGS.data_dir, FLAGS.test_examples)
    check_model_fits(model, test.info, source=FLAGS.model)
    if FLAGS.output:
        common.prepare_output_dir(os.path.dirname(os.path.abspath(FLAGS.output)),
                                  "the folder of --output")
    result = evaluate_robustness(model, make_dataset(test, FLAGS.batch_size, training=False),
                                 attack_flags.eval_attack_from_flags(), verbose=FLAGS.verbose)
    result.update(dataset=test.info.name, split="test", model=FLAGS.model)
    common.print_result(result)
    if FLAGS.output:
        common.write_json(FLAGS.output, result)


def entry_point():
    define_flags()
    common.run(main)


if __name__ == "__main__":
    entry_point()
