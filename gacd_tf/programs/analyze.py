"""gacd-analyze: transfer, logit correlations, t-SNE maps, flag sweeps and a report.

One command per call, named first (flags may come before or after it):

    gacd-analyze transfer    --models=A.keras,B.keras --dataset=cifar10 --classes=5,6,7,8,9 \
        --output_dir=OUT    # linear head on frozen features; natural + PGD-7 accuracy
    gacd-analyze correlation --teacher=T.keras --models=S1.keras,S2.keras --output_dir=OUT
    gacd-analyze tsne        --models=T.keras,S1.keras --tsne_classes=9,2 --output_dir=OUT
    gacd-analyze sweep       --distill_flagfile=flags/quickstart_gacd.cfg --sweep_flag=nce_k \
        --sweep_values=16,256,4096 --output_dir=OUT
    gacd-analyze report      --runs=DIR1,DIR2,... --output_dir=OUT

Writes into --output_dir: flags.json (with the command), and
transfer: transfer.{json,md,csv,png} and probe_<model>/ (probe.keras, logs);
correlation: correlation.json, correlation_<student>.png / .npz;
tsne: tsne.png, tsne.json;
sweep: FLAG=VALUE/ (one gacd-distill run each, its output in sweep.log) and
sweep_FLAG.{md,csv,json,png};
report: report.md (tables, and the pictures above beside it), report.json.

transfer trains, so it takes the training programs' device flags: --strategy
(mirrored, or multi_worker from TF_CONFIG: the chief writes --output_dir and
reports, a killed cluster resumes from the chief's checkpoints), --cpu_devices,
--mixed_precision and --jit_compile; the other commands refuse them. (The mixed
policy reaches only the layers the probe adds, and its head stays float32 like the
zoo's logits layers; the loaded backbone computes in the precision it was saved with,
as gacd-distill's teacher does.)
"""

import os
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from gacd_tf.errors import ConfigError  # noqa: E402
from gacd_tf.programs import attack_flags, common, data_flags, devices, flag_core  # noqa: E402
from gacd_tf.programs.analyze_maps import correlation_command, tsne_command  # noqa: E402
from gacd_tf.programs.analyze_report import REPORT_PARTS, report_command  # noqa: E402
from gacd_tf.programs.analyze_sweep import sweep_command  # noqa: E402
from gacd_tf.programs.analyze_transfer import transfer_command  # noqa: E402
from gacd_tf.programs.flag_core import FLAGS  # noqa: E402
from gacd_tf.registry import Registry  # noqa: E402

# One module per command (analyze_transfer, analyze_maps, analyze_sweep, analyze_report;
# their shared inputs in analyze_inputs); this file holds the flags and the dispatch.
COMMANDS = Registry("gacd-analyze command")
for _name, _command in (("transfer", transfer_command), ("correlation", correlation_command),
                        ("tsne", tsne_command), ("sweep", sweep_command),
                        ("report", report_command)):
    COMMANDS.register(_name)(_command)


def define_flags():
    data_flags.define_data_flags(train=True)
    attack_flags.define_attack_flags()
    attack_flags.define_final_autoattack_flags()
    common.define_optimizer_flags(epochs=10, learning_rate=0.1)
    devices.define_distribute_flags()  # transfer only (check_device_flags)
    common.define_checkpoint_flags()
    common.define_load_flags()
    flag_core.DEFINE_string("output_dir", None, "Output folder (created if needed).")
    flag_core.DEFINE_list("models", [], "transfer / correlation / tsne: .keras model files "
                          "(correlation: the students).")
    flag_core.DEFINE_string("teacher", None, "correlation: the teacher, a .keras file; tsne: "
                            "drawn first when given.")
    flag_core.DEFINE_list("runs", [], "report: run folders written by gacd-train-teacher or "
                          "gacd-distill (flags.json, metrics.json, model.keras).")
    flag_core.DEFINE_list("classes", [], "transfer: keep only these classes of --dataset as the "
                          "target task, relabelled 0..k-1 (e.g. 5,6,7,8,9); default all.")
    flag_core.DEFINE_integer("transfer_attack_steps", 7, "transfer: PGD steps of the robust "
                             "accuracy (Table 4: PGD-7; --eps, --step_size apply).", lower_bound=0)
    flag_core.DEFINE_bool("augment", True, "transfer: pad-4 crop + flip while training the head.")
    flag_core.DEFINE_list("tsne_classes", ["9", "2"], "tsne: SOURCE,TARGET classes; adversarial "
                          "SOURCE images are crafted to be classified as TARGET (paper: truck, "
                          "bird).")
    flag_core.DEFINE_integer("tsne_examples", 100, "tsne: test images per class.", lower_bound=2)
    flag_core.DEFINE_float("tsne_perplexity", 30.0, "tsne: t-SNE perplexity.", lower_bound=1.0)
    flag_core.DEFINE_string("distill_flagfile", None, "sweep: the gacd-distill flagfile every "
                            "grid point starts from.")
    flag_core.DEFINE_string("distill_args", "", "sweep: more gacd-distill arguments for every "
                            "run, shell-quoted, e.g. \"--epochs=1 --data_dir=DIR\".")
    flag_core.DEFINE_string("sweep_flag", None, "sweep: the gacd-distill flag to vary, e.g. "
                            "nce_k or nce_t.")
    flag_core.DEFINE_list("sweep_values", [], "sweep: the grid values of --sweep_flag.")
    flag_core.DEFINE_integer("sweep_timeout", None, "sweep: seconds allowed per run (unset: no "
                             "limit).", lower_bound=1)
    flag_core.DEFINE_list("report_parts", ["correlation", "tsne"], "report: analyses to run "
                          f"besides the tables, from {', '.join(REPORT_PARTS)} (transfer uses "
                          "--dataset, --classes and the optimizer flags).")
    flag_core.DEFINE_integer("verbose", 0, "Keras progress output (0, 1 or 2).")


def main(argv):
    commands = argv[1:]
    if len(commands) != 1 or commands[0] not in COMMANDS:
        given = f" (got {' '.join(commands)!r})" if commands else ""
        raise ConfigError(f"name one command first: gacd-analyze COMMAND --flags, COMMAND one "
                          f"of {', '.join(COMMANDS.names())}{given}")
    command = commands[0]
    check_device_flags(command)
    common.prepare_output_dir(FLAGS.output_dir, "--output_dir")
    # Before any TensorFlow op; only transfer trains (on the strategy of --strategy).
    strategy = devices.strategy_from_flags() if command == "transfer" else None
    common.setup_runtime(FLAGS.seed)
    devices.setup_precision()
    output_dir = devices.this_worker_dir(FLAGS.output_dir)  # multi_worker: the chief writes
    common.write_json(os.path.join(output_dir, "flags.json"),
                      dict(flag_core.flag_values(), command=command))
    COMMANDS.get(command)(types.SimpleNamespace(output_dir=output_dir, strategy=strategy))


def check_device_flags(command):
    """Refuses the device flags (--strategy, --mixed_precision, --jit_compile) outside transfer."""
    if command == "transfer":
        return
    for name in ("strategy", "mixed_precision", "jit_compile"):
        if FLAGS[name].value != FLAGS[name].default:
            also = (" (its transfer part trains on one device; run gacd-analyze transfer "
                    "with it for the probes)" if command == "report" else "")
            raise ConfigError(f"{FLAGS[name].serialize()} applies only to gacd-analyze "
                              f"transfer, the command that trains; {command} does not take "
                              f"it{also}: drop it")


def entry_point():
    define_flags()
    flag_core.run(main)


if __name__ == "__main__":
    entry_point()
