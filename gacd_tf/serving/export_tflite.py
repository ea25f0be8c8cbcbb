"""Export a classifier as TFLite / LiteRT (``BASE/NAME/N/model.tflite`` + ``settings.json``)."""

import json
import os
import warnings

import numpy as np
import tensorflow as tf
from absl import logging

import gacd_tf
from gacd_tf.errors import ArgumentError, ConfigError, ModelError
from gacd_tf.serving.serving_module import ServingModule
from gacd_tf.serving.tflite_model import SETTINGS_FILE, TFLITE_FILE
from gacd_tf.serving.write_version import write_version

QUANTIZE = ("none", "float16", "dynamic", "int8")

# What each choice stores, for settings.json and the docs.
WEIGHTS = {"none": "float32", "float16": "float16", "dynamic": "int8", "int8": "int8"}
ACTIVATIONS = {"none": "float32", "float16": "float32", "dynamic": "float32 (int8 where the "
               "kernels quantise them on the fly)", "int8": "int8"}


def _check_quantize(quantize):
    if quantize not in QUANTIZE:
        raise ArgumentError("quantize", quantize,
                            f"unknown quantisation; choose one of {', '.join(QUANTIZE)}")


def calibration_array(images, height, width):
    """``images`` as float32 ``[N, H, W, 3]`` in [0, 1] (uint8 pixels are divided by 255).

    Raises:
        ArgumentError: on ``calibration_images``: wrong rank, size, dtype or range, or empty.
    """
    array = np.asarray(images)
    what = f"<array {array.shape} {array.dtype}>"
    if array.ndim != 4 or array.shape[1:] != (height, width, 3):
        raise ArgumentError("calibration_images", what,
                            f"need images [N, {height}, {width}, 3], the model's input size")
    if array.shape[0] == 0:
        raise ArgumentError("calibration_images", what, "holds no image; pass at least one")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255)
    if not np.issubdtype(array.dtype, np.floating):
        raise ArgumentError("calibration_images", what,
                            "need float32 pixels in [0, 1] or uint8 pixels")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
        raise ArgumentError("calibration_images", what,
                            "pixels must be finite and in [0, 1] (divide uint8 images by 255)")
    return array


def _converter(module, quantize, calibration):
    network = module.network
    spec = tf.TensorSpec([None, module.height, module.width, 3], tf.float32, name="images")

    @tf.function(input_signature=[spec])
    def logits(images):
        return network(images, training=False)[1]

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [logits.get_concrete_function()], module)
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        def representative_dataset():
            for image in calibration:
                yield [image[None]]

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # Float I/O: a QUANTIZE op at the input and a DEQUANTIZE op at the output, so the
        # file still takes float32 [0, 1] pixels and returns float32 logits.
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    return converter


def export_tflite(model, export_dir, quantize="none", calibration_images=None, version=None,
                  overwrite=False, calibration_source=None):
    """Writes ``model`` to ``export_dir/N/model.tflite`` with its ``settings.json`` beside it.

    The file maps ``images`` float32 ``[batch, H, W, 3]`` in [0, 1] to
    float32 logits ``[batch, C]`` (the batch is dynamic), converted by
    ``tf.lite.TFLiteConverter.from_concrete_functions`` from the model in
    inference mode. ``quantize``:

    * ``"none"``: float32 weights and activations;
    * ``"float16"``: float16 weights (dequantised to float32 when loaded);
    * ``"dynamic"``: int8 weights, float32 activations (dynamic range);
    * ``"int8"``: full-integer: int8 weights and activations, calibrated on
      ``calibration_images``, with a QUANTIZE op after the float32 input and
      a DEQUANTIZE op before the float32 logits (float I/O, int8 inside).

    ``settings.json`` records the quantisation, the input/output contract,
    the calibration (number of images, ``calibration_source``), the
    converter and TF versions and the file's size. The write is atomic like
    :func:`export_saved_model` (:func:`write_version`).

    Args:
        model: a Keras classifier following the gacd_tf interface, fixed H x W.
        export_dir: the model base path ``BASE/NAME``.
        quantize: ``"none"``, ``"float16"``, ``"dynamic"`` or ``"int8"``.
        calibration_images: int8 only (and required there): ``[N, H, W, 3]``
            float32 in [0, 1] or uint8, e.g. a class-balanced sample of the
            training split.
        version: integer version ``N``; ``None`` takes the next free one.
        overwrite: replace an existing version ``N``.
        calibration_source: a JSON-able description of where the calibration
            images came from, recorded in ``settings.json``.

    Returns:
        the path of ``model.tflite`` (str).

    Raises:
        ConfigError: a bad ``quantize``, ``calibration_images`` missing for
            int8 or given without it, a bad folder/version.
        ModelError: the model does not follow the interface, or conversion failed.

    Example:
    >>> export_tflite(build_model("resnet8"), "tflite/resnet8", quantize="int8",
    ...               calibration_images=train_images[:500])  # doctest: +SKIP
    'tflite/resnet8/1/model.tflite'
    """
    _check_quantize(quantize)
    if quantize == "int8" and calibration_images is None:
        raise ConfigError("quantize=int8 needs calibration_images: full-integer quantisation "
                          "takes its activation ranges from them (pass a few hundred "
                          "training images)").on("quantize", "calibration_images")
    if quantize != "int8" and calibration_images is not None:
        raise ConfigError(f"calibration_images are used only with quantize=int8, not "
                          f"quantize={quantize}; leave them out").on("quantize")
    module = ServingModule(model)
    calibration = None
    if quantize == "int8":
        calibration = calibration_array(calibration_images, module.height, module.width)
    converter = _converter(module, quantize, calibration)
    logger, verbosity = tf.get_logger(), logging.get_verbosity()
    level = logger.level
    try:
        # The converter saves a temporary SavedModel and logs each step at INFO.
        logger.setLevel("WARNING")
        logging.set_verbosity(min(verbosity, logging.WARNING))  # absl: lower is quieter
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Statistics for quantized inputs were expected"
            flatbuffer = converter.convert()
    except Exception as err:  # the converter raises ConverterError and others
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"TFLite conversion of model {model.name!r} with quantize={quantize} "
                         f"failed ({first}); try quantize=none or dynamic").on("quantize"
                                                                               ) from err
    finally:
        logger.setLevel(level)
        logging.set_verbosity(verbosity)
    settings = {
        "format": "tflite",
        "file": TFLITE_FILE,
        "quantize": quantize,
        "weights": WEIGHTS[quantize],
        "activations": ACTIVATIONS[quantize],
        "input": {"name": "images", "dtype": "float32",
                  "shape": [None, module.height, module.width, 3], "range": [0.0, 1.0]},
        "output": {"name": "logits", "dtype": "float32", "shape": [None, module.num_classes]},
        "calibration": None if calibration is None else {
            "examples": len(calibration), "source": calibration_source},
        "model_name": model.name,
        "size_bytes": len(flatbuffer),
        "converter": "tf.lite.TFLiteConverter.from_concrete_functions",
        "tensorflow_version": tf.__version__,
        "gacd_tf_version": gacd_tf.__version__,
    }

    def write(folder):
        with open(os.path.join(folder, TFLITE_FILE), "wb") as f:
            f.write(flatbuffer)
        with open(os.path.join(folder, SETTINGS_FILE), "w") as f:
            json.dump(settings, f, indent=2, sort_keys=True)
            f.write("\n")

    folder = write_version(export_dir, write, version=version, overwrite=overwrite)
    return os.path.join(folder, TFLITE_FILE)
