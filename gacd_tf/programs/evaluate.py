"""gacd-evaluate: natural and adversarial accuracy of a saved model.

Example:
    gacd-evaluate --model=runs/quickstart/model.keras --dataset=cifar10 \
        --attack=pgd --attack_steps=20 --output=eval.json
    gacd-evaluate --model=exports/quickstart/1 --dataset=cifar10  # a SavedModel
    gacd-evaluate --model=runs/quickstart/model.keras --attack=autoattack \
        --test_examples=1000 --output=aa.json --save_adversarial=aa.npz
    gacd-evaluate --model=teacher.keras --attack=autoattack --robustbench_json=entry.json

--strategy=mirrored (all local GPUs, or --cpu_devices logical CPUs) or
--strategy=multi_worker (the workers TF_CONFIG names, each started with the
same command) splits every batch between the replicas and gathers the
per-example results: the same answer, example by example, as one device
(the attacks' draws are keyed per example). Only the chief writes --output,
--save_adversarial, --robustbench_json and the progress file; every worker
resumes from the progress file:
    TF_CONFIG=... gacd-evaluate --model=teacher.keras --attack=autoattack \
        --strategy=multi_worker --output=aa.json

With --attack=autoattack it prints one line per attack ("robust accuracy after
apgd-t: 21.50 %") and the reference's sanity warnings; the --output JSON adds
robust_accuracy_by_attack (attack -> robust accuracy after it, in run order)
and warnings.

A TFLite model (a .tflite file, or a folder gacd-export --format=tflite wrote)
gives no gradients (quantisation masks them), so it is evaluated with
--attack=square (score-based), or with --transfer_from=MODEL: adversarial
examples made on MODEL (the float .keras model or SavedModel) by --attack,
counted on the TFLite model. Without --attack it reports natural accuracy;
the JSON adds size_bytes and the latency per image on --num_threads threads:
    gacd-evaluate --model=tflite/quickstart/1/model.tflite --attack=square
    gacd-evaluate --model=tflite/quickstart/2 --transfer_from=runs/quickstart/model.keras \
        --attack=pgd --attack_steps=20
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from gacd_tf.attacks.registry import AUTOATTACK, needs_gradients  # noqa: E402
from gacd_tf.data import load_split, make_dataset  # noqa: E402
from gacd_tf.errors import ConfigError  # noqa: E402
from gacd_tf.evaluation import (evaluate_robustness, evaluate_transfer,  # noqa: E402
                                 robustbench_entry)
from gacd_tf.models import model_names  # noqa: E402
from gacd_tf.models.io import check_model_fits  # noqa: E402
from gacd_tf.programs import attack_flags, common, data_flags, devices, flag_core  # noqa: E402
from gacd_tf.programs.flag_core import FLAGS  # noqa: E402
from gacd_tf.serving import load_tflite, tflite_file  # noqa: E402


def define_flags():
    data_flags.define_data_flags(train=False)
    attack_flags.define_attack_flags()
    flag_core.DEFINE_string("model", None, "A .keras model file, or a SavedModel gacd-export "
                          "wrote: a version folder BASE/NAME/N, or BASE/NAME for its "
                          "highest version; or a TFLite model: a .tflite file, or a folder "
                          "gacd-export --format=tflite wrote.")
    flag_core.DEFINE_string("transfer_from", None, "Make the adversarial examples with --attack "
                            "on this model (a .keras file or SavedModel, e.g. the float model "
                            "a TFLite model was exported from) and count them on --model: a "
                            "point is robust only if --model classifies its clean image and "
                            "its adversarial example correctly.")
    flag_core.DEFINE_integer("num_threads", 1, "TFLite models: interpreter threads (the "
                             "latency is measured with this many).", lower_bound=1)
    flag_core.DEFINE_integer("latency_runs", 100, "TFLite models: time this many single-image "
                             "runs (after 10 untimed ones); the median is reported.",
                             lower_bound=1)
    flag_core.DEFINE_integer("square_queries", 5000, "--attack=square: queries per image "
                             "(5000, as in AutoAttack).", lower_bound=1)
    common.define_load_flags()
    devices.define_strategy_flags()
    flag_core.DEFINE_string("output", None, "Write the results to this JSON file.")
    flag_core.DEFINE_string("robustbench_json", None, "--attack=autoattack: also write the "
                            "result as a RobustBench model-info entry to this JSON file "
                            "(clean_acc, autoattack_acc in percent, eps as '8/255', dataset, "
                            "threat_model, architecture when known, number_forward_passes), "
                            "with our seed, image count, seconds and per-attack figures.")
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

    is_tflite = tflite_file(FLAGS.model) is not None
    if FLAGS.strategy != "default" and (is_tflite or FLAGS.transfer_from):
        raise ConfigError(f"--strategy={FLAGS.strategy} evaluates a Keras model or SavedModel "
                          "itself; a TFLite model or --transfer_from runs on one device: drop "
                          "--strategy")
    strategy = devices.strategy_from_flags(divisible_batch=False)
    common.setup_runtime(FLAGS.seed)
    chief = devices.is_chief()
    if not chief:  # the chief prints and writes the results
        devices.quiet_worker()
    attack_given = FLAGS["attack"].present > 0 or bool(FLAGS.transfer_from)
    if is_tflite and attack_given and not FLAGS.transfer_from and needs_gradients(FLAGS.attack):
        raise ConfigError(
            f"--attack={FLAGS.attack} needs the model's gradients, but --model={FLAGS.model} is "
            "a TFLite model: quantisation masks gradients, so a white-box attack on it would "
            "overstate its robustness; use --attack=square (score-based, no gradients) or "
            "--transfer_from=MODEL (adversarial examples made on the float model)")
    if FLAGS.robustbench_json and (FLAGS.attack != AUTOATTACK or FLAGS.transfer_from
                                   or is_tflite):
        raise ConfigError(f"--robustbench_json={FLAGS.robustbench_json} reports an AutoAttack "
                          "evaluation of --model itself: give --attack=autoattack, without "
                          "--transfer_from, on a Keras model or SavedModel")
    if is_tflite:
        model = load_tflite(FLAGS.model, num_threads=FLAGS.num_threads)
    else:
        with strategy.scope():
            model = common.load_model_from_flags(FLAGS.model, "--model", saved_model=True)
    source = None
    if FLAGS.transfer_from:
        source = common.load_model_from_flags(FLAGS.transfer_from, "--transfer_from",
                                              saved_model=True)
    with flag_core.arguments_as_flags(examples="test_examples"):
        test = load_split(FLAGS.dataset, "test", FLAGS.data_dir, FLAGS.test_examples)
    check_model_fits(model, test.info, source=FLAGS.model)
    if source is not None:
        check_model_fits(source, test.info, source=FLAGS.transfer_from)
    for flag in ("output", "save_adversarial", "progress_file", "robustbench_json"):
        if FLAGS[flag].value:
            common.prepare_output_dir(os.path.dirname(os.path.abspath(FLAGS[flag].value)),
                                      f"the folder of --{flag}")
    attack = None
    if attack_given or not is_tflite:  # a TFLite model without --attack: natural accuracy
        attack = attack_flags.attack_from_flags(
            where_taken={"n_queries": FLAGS.square_queries})
    # AutoAttack prints its per-attack lines even without progress bars.
    verbose = FLAGS.verbose or (2 if FLAGS.attack == AUTOATTACK else 0)
    verbose = verbose if chief else 0
    progress_file = FLAGS.progress_file or (f"{FLAGS.output}.progress.npz" if FLAGS.output
                                            else None)
    dataset = make_dataset(test, FLAGS.batch_size, training=False)
    if source is not None:
        result = evaluate_transfer(model, source, dataset, attack, verbose=verbose,
                                   return_examples=bool(FLAGS.save_adversarial),
                                   progress_file=progress_file)
        result["transfer_from"] = FLAGS.transfer_from
    else:
        result = evaluate_robustness(model, dataset, attack, verbose=verbose,
                                     return_examples=bool(FLAGS.save_adversarial),
                                     progress_file=progress_file, strategy=strategy)
    if not chief:
        return
    if FLAGS.save_adversarial and attack is not None:
        attack_flags.save_adversarial(FLAGS.save_adversarial, result)
    result = {k: v for k, v in result.items() if k not in attack_flags.EXAMPLE_ARRAYS}
    if attack is not None:
        name = f"transfer:{FLAGS.attack}" if source is not None else FLAGS.attack
        if source is not None or "robust_accuracy_by_attack" not in result:
            result["robust_accuracy_by_attack"] = {name: result["robust_accuracy"]}
    else:
        result["robust_accuracy_by_attack"] = {}
    result.setdefault("warnings", [])
    result.update(dataset=test.info.name, split="test", model=FLAGS.model)
    if is_tflite:
        result.update(tflite_figures(model))
    if attack is None:
        print(f"natural_accuracy={result['natural_accuracy']:.4f} "
              f"({result['num_examples']} test examples; no attack: a TFLite model takes "
              "--attack=square or --transfer_from)")
    else:
        common.print_result(result)
    if is_tflite:
        print(f"size={result['size_bytes']} bytes, latency="
              f"{result['latency_ms_per_image']:.3f} ms per image on {model.num_threads} "
              f"thread(s) ({result['runtime']})")
    if FLAGS.output:
        common.write_json(FLAGS.output, result)
    if FLAGS.robustbench_json:
        architecture = getattr(model, "name", None)
        entry = robustbench_entry(result, dataset=test.info.name, eps=FLAGS.eps, norm=FLAGS.norm,
                                  architecture=architecture if architecture in model_names()
                                  else None)
        common.write_json(FLAGS.robustbench_json, entry)


def tflite_figures(model):
    """Size on disk, latency per image and the export's settings of a TFLite model."""
    figures = {"format": "tflite", "size_bytes": model.size_bytes,
               "quantize": (model.settings or {}).get("quantize")}
    figures.update(model.latency(runs=FLAGS.latency_runs))
    return figures


def entry_point():
    define_flags()
    flag_core.run(main)


if __name__ == "__main__":
    entry_point()
