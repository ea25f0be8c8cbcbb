"""gacd-import: a PyTorch (RobustBench) checkpoint as an exact Keras teacher.

Example:
    gacd-import --checkpoint=Zhang2019Theoretically.pt --arch=wrn_34_10 \
        --output=teachers/trades_wrn34.keras --data_dir=data/cifar10
    gacd-import --robustbench_model=Zhang2019Theoretically --model_dir=models \
        --output=teachers/trades_wrn34.keras --data_dir=data/cifar10

Reads the state_dict with ``torch.load(weights_only=True)`` (a checkpoint
never runs code) or safetensors, builds the zoo architecture that computes
the same function (docs/robustbench.md), saves it as a ``.keras`` file and
prints its natural accuracy on the first ``--accuracy_examples`` test images,
to compare with the accuracy the checkpoint's source reports. Needs the
``[torch]`` extra for ``.pt`` files.

``--robustbench_model=NAME`` finds the architecture in RobustBench's model
list (read from the installed robustbench package, not imported) and the
checkpoint at ``--model_dir/DATASET/THREAT_MODEL/NAME.pt``, RobustBench's own
layout; when it is not there, it is downloaded with gdown (as RobustBench
does) if gdown is installed and the network is up, and otherwise the program
ends with one line saying which file to fetch and where to put it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from gacd_tf.data import load_split  # noqa: E402
from gacd_tf.errors import ConfigError, ModelError  # noqa: E402
from gacd_tf.models.io import check_model_fits  # noqa: E402
from gacd_tf.models.robustbench_zoo import THREAT_MODELS, resolve_robustbench_model  # noqa: E402
from gacd_tf.models.torch_import import import_torch_model  # noqa: E402
from gacd_tf.programs import common, data_flags, flag_core  # noqa: E402
from gacd_tf.programs.flag_core import FLAGS  # noqa: E402


def define_flags():
    flag_core.DEFINE_string("checkpoint", None, "The PyTorch state_dict: a .pt/.pth file "
                            "(torch.save; read with weights_only=True) or a .safetensors file. "
                            "With --robustbench_model, defaults to "
                            "--model_dir/DATASET/THREAT_MODEL/NAME.pt.")
    flag_core.DEFINE_string("arch", None, "The architecture of the checkpoint (docs/models.md, "
                            "'RobustBench architectures'), e.g. wrn_34_10, dm_wrn_70_16, "
                            "preact_resnet18. With --robustbench_model, read from RobustBench's "
                            "model list.")
    flag_core.DEFINE_string("output", None, "Write the imported model to this .keras file.")
    flag_core.DEFINE_integer("num_classes", None, "The class count; unset: read from the "
                             "checkpoint's last layer (a given count must agree with it).",
                             lower_bound=2)
    flag_core.DEFINE_string("robustbench_model", None, "A RobustBench model name, e.g. "
                            "Zhang2019Theoretically: resolves --arch (needs the robustbench "
                            "package, pip install \"gacd_tf[torch]\").")
    flag_core.DEFINE_enum("threat_model", "Linf", list(THREAT_MODELS), "RobustBench's threat "
                          "model of --robustbench_model.")
    flag_core.DEFINE_string("model_dir", "models", "RobustBench's model folder: "
                            "--robustbench_model checkpoints are looked for (and downloaded to) "
                            "MODEL_DIR/DATASET/THREAT_MODEL/NAME.pt.")
    data_flags.define_dataset_flags("The checkpoint's (its test images measure the natural "
                                    "accuracy): ")
    flag_core.DEFINE_integer("accuracy_examples", 1000, "Print the natural accuracy on the "
                             "first this many test images (0: do not measure).", lower_bound=0)
    flag_core.DEFINE_integer("batch_size", 100, "Batch size of the accuracy measurement.",
                             lower_bound=1)
    flags.mark_flag_as_required("output")


def _download(url, path, gdrive_id):
    """Downloads ``url`` to ``path`` with gdown (RobustBench's way); returns why not, or None."""
    try:
        import gdown  # noqa: PLC0415 (optional: RobustBench's downloader)
    except ImportError:
        return "gdown is not installed"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        result = gdown.download(id=gdrive_id, output=path, quiet=True)
    except Exception as err:  # noqa: BLE001 (network errors of many kinds)
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
    if not result or not os.path.isfile(path):
        if os.path.exists(path):
            os.remove(path)
        return "the download failed (offline?)"
    return None


def _resolve():
    """(checkpoint path, arch, options, mean, std) from the flags."""
    if not FLAGS.robustbench_model:
        if not FLAGS.checkpoint or not FLAGS.arch:
            raise ConfigError("give --checkpoint=FILE and --arch=NAME, or "
                              "--robustbench_model=NAME")
        return FLAGS.checkpoint, FLAGS.arch, {}, None, None
    with flag_core.arguments_as_flags(model_name="robustbench_model"):
        found = resolve_robustbench_model(FLAGS.robustbench_model, FLAGS.dataset,
                                          FLAGS.threat_model)
    if FLAGS.arch and FLAGS.arch != found["arch"]:
        raise ConfigError(f"--arch={FLAGS.arch} disagrees with RobustBench's architecture of "
                          f"--robustbench_model={FLAGS.robustbench_model}, {found['arch']} "
                          f"({found['definition']}); leave --arch out")
    path = FLAGS.checkpoint or os.path.join(FLAGS.model_dir, found["relative_path"])
    if not os.path.isfile(path):
        why = _download(found["url"], path, found["gdrive_id"])
        if why is not None:
            raise ModelError(
                f"--robustbench_model={FLAGS.robustbench_model}: its checkpoint {path} is not "
                f"here and could not be downloaded ({why}); fetch {found['url']} and save it "
                f"as {path} (or pass --checkpoint=FILE), then run this again")
    return path, found["arch"], found["options"], found["mean"], found["std"]


def _natural_accuracy(model, images, labels):
    correct = 0
    for start in range(0, len(images), FLAGS.batch_size):
        batch = images[start:start + FLAGS.batch_size].astype(np.float32) / 255.0
        logits = np.asarray(model(batch, training=False))
        correct += int(np.sum(np.argmax(logits, -1) == labels[start:start + FLAGS.batch_size]))
    return correct / len(images)


def main(argv):
    del argv
    common.setup_runtime(0)
    if not FLAGS.output.endswith(".keras"):
        raise ConfigError(f"--output={FLAGS.output} must end in .keras")
    checkpoint, arch, options, mean, std = _resolve()
    test = None
    if FLAGS.accuracy_examples:
        test = load_split(FLAGS.dataset, "test", FLAGS.data_dir)
    common.prepare_output_dir(os.path.dirname(os.path.abspath(FLAGS.output)),
                              "the folder of --output")
    model = import_torch_model(checkpoint, arch, num_classes=FLAGS.num_classes, mean=mean,
                               std=std, **options)
    if test is not None:
        check_model_fits(model, test.info, role="model", source=checkpoint)
    model.save(FLAGS.output)
    print(f"imported {model.name} ({model.count_params():,} parameters, "
          f"{model.output_shape[-1]} classes) from {checkpoint} -> {FLAGS.output}")
    if test is not None:
        count = min(FLAGS.accuracy_examples, len(test.labels))
        accuracy = _natural_accuracy(model, test.images[:count], test.labels[:count])
        print(f"natural_accuracy={accuracy:.4f} (the first {count} {test.info.name} test "
              f"images)")


def entry_point():
    define_flags()
    flag_core.run(main)


if __name__ == "__main__":
    entry_point()
