"""gacd-export: write a .keras classifier as a versioned SavedModel for TF Serving, ONNX
or TFLite (LiteRT).

Writes ``EXPORT_DIR/N/`` (``saved_model.pb`` + ``variables/``; with
``--format=onnx``: ``model.onnx``; with ``--format=tflite``: ``model.tflite``
and ``settings.json``), N = ``--version`` or the next free integer,
atomically; prints the path.

Example:
    gacd-export --model=runs/quickstart/model.keras --export_dir=exports/quickstart
    gacd-export --model=runs/quickstart/model.keras --export_dir=onnx/quickstart --format=onnx
    gacd-export --model=runs/quickstart/model.keras --export_dir=tflite/quickstart \
        --format=tflite --quantize=int8 --dataset=cifar10 --calibration_examples=500
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from gacd_tf.data import load_split  # noqa: E402
from gacd_tf.errors import ConfigError  # noqa: E402
from gacd_tf.models.io import check_model_fits  # noqa: E402
from gacd_tf.programs import common, data_flags, flag_core  # noqa: E402
from gacd_tf.programs.flag_core import FLAGS  # noqa: E402
from gacd_tf.serving import export_onnx, export_saved_model, export_tflite  # noqa: E402
from gacd_tf.serving.export_tflite import QUANTIZE  # noqa: E402


ONNX_MISSING = "ONNX export needs "  # gacd_tf.serving.export_onnx, without the onnx extra


def define_flags():
    flag_core.DEFINE_string("model", None, "The .keras model file to export.")
    common.define_load_flags()
    flag_core.DEFINE_string("export_dir", None, "Model base path BASE/NAME (TF Serving's "
                            "--model_base_path); the version folder N is written inside.")
    flag_core.DEFINE_integer("version", None, "Version number N (default: highest existing + 1, "
                             "or 1).", lower_bound=0)
    flag_core.DEFINE_bool("overwrite", False, "Replace an existing version N.")
    flag_core.DEFINE_enum("format", "saved_model", ["saved_model", "onnx", "tflite"],
                          "saved_model (TF Serving), onnx (model.onnx; needs the onnx extra) or "
                          "tflite (model.tflite and settings.json, for LiteRT on devices).")
    flag_core.DEFINE_enum("quantize", None, list(QUANTIZE), "--format=tflite: none (float32, "
                          "the default), float16 (float16 weights), dynamic (int8 weights) or "
                          "int8 (full-integer, calibrated on --calibration_examples "
                          "class-balanced images of the TRAINING split of --dataset); the "
                          "model still takes float32 [0, 1] pixels and returns logits.")
    # --quantize=int8 calibrates on the dataset's training split.
    data_flags.define_dataset_flags("--quantize=int8 (calibration on its training split): ")
    flag_core.DEFINE_integer("calibration_examples", 500, "--quantize=int8: calibrate on a "
                             "deterministic class-balanced subset of this many training "
                             "examples.", lower_bound=1)
    flags.mark_flag_as_required("model")
    flags.mark_flag_as_required("export_dir")


def main(argv):
    del argv

    if FLAGS.quantize is not None and FLAGS.format != "tflite":
        raise ConfigError(f"--quantize={FLAGS.quantize} applies only to --format=tflite, not "
                          f"--format={FLAGS.format}; pass --format=tflite or leave --quantize "
                          "out")
    model = common.load_model_from_flags(FLAGS.model, "--model")
    if FLAGS.format == "tflite":
        export = tflite_export(model)
    else:
        export = export_onnx if FLAGS.format == "onnx" else export_saved_model
    try:
        path = export(model, FLAGS.export_dir, version=FLAGS.version, overwrite=FLAGS.overwrite)
    except ConfigError as err:
        if str(err).startswith(ONNX_MISSING):  # the library's words -> the flag's
            raise ConfigError("--format=onnx needs " + str(err)[len(ONNX_MISSING):]) from None
        if getattr(err, "target", None) is None:
            raise
        raise ConfigError(f"version folder {err.target} already exists; pass another "
                          "--version, leave --version out for the next free one, or pass "
                          "--overwrite to replace it") from None
    print(path)


def tflite_export(model):
    """export_tflite with --quantize; int8 calibrated on the training split's balanced sample."""
    quantize = FLAGS.quantize or "none"
    if quantize != "int8":
        return lambda *args, **kwargs: export_tflite(*args, quantize=quantize, **kwargs)
    with flag_core.arguments_as_flags(examples="calibration_examples"):
        train = load_split(FLAGS.dataset, "train", FLAGS.data_dir, FLAGS.calibration_examples)
    check_model_fits(model, train.info, source=FLAGS.model)
    source = {"dataset": train.info.name, "split": "train", "class_balanced": True,
              "examples": len(train.labels),
              "selection": "gacd_tf.data.balanced_subset_indices (the first examples of "
                           "each class in file order)"}
    return lambda *args, **kwargs: export_tflite(
        *args, quantize=quantize, calibration_images=train.images, calibration_source=source,
        **kwargs)


def entry_point():
    define_flags()
    flag_core.run(main)


if __name__ == "__main__":
    entry_point()
