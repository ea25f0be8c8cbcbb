"""gacd-export: write a .keras classifier as a versioned SavedModel for TF Serving, or ONNX.

Writes ``EXPORT_DIR/N/`` (``saved_model.pb`` + ``variables/``; with
``--format=onnx``: ``model.onnx``), N = ``--version`` or the next free
integer, atomically; prints the path.

Example:
    gacd-export --model=runs/quickstart/model.keras --export_dir=exports/quickstart
    gacd-export --model=runs/quickstart/model.keras --export_dir=onnx/quickstart --format=onnx
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from gacd_tf.programs import common, flag_core  # noqa: E402
from gacd_tf.programs.flag_core import FLAGS  # noqa: E402
from gacd_tf.errors import ConfigError  # noqa: E402
from gacd_tf.serving import export_onnx, export_saved_model  # noqa: E402


ONNX_MISSING = "ONNX export needs "  # gacd_tf.serving.export_onnx, without the onnx extra


def define_flags():
    flag_core.DEFINE_string("model", None, "The .keras model file to export.")
    common.define_load_flags()
    flag_core.DEFINE_string("export_dir", None, "Model base path BASE/NAME (TF Serving's "
                         "--model_base_path); the version folder N is written inside.")
    flag_core.DEFINE_integer("version", None, "Version number N (default: highest existing + 1, "
                          "or 1).", lower_bound=0)
    flag_core.DEFINE_bool("overwrite", False, "Replace an existing version N.")
    flag_core.DEFINE_enum("format", "saved_model", ["saved_model", "onnx"],
                       "saved_model (TF Serving) or onnx (model.onnx; needs the onnx extra).")
    flags.mark_flag_as_required("model")
    flags.mark_flag_as_required("export_dir")


def main(argv):
    del argv

    model = common.load_model_from_flags(FLAGS.model, "--model")
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


def entry_point():
    define_flags()
    flag_core.run(main)


if __name__ == "__main__":
    entry_point()
