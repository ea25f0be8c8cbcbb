"""Serving: export a zoo classifier for TF Serving (SavedModel), ONNX or TFLite, and load it back.

Layout (what TF Serving's ``--model_base_path=BASE/NAME`` expects)::

    BASE/NAME/1/saved_model.pb, variables/    <- one integer folder per version
    BASE/NAME/2/...

``gacd-export --format=tflite`` (:func:`export_tflite`) writes
``BASE/NAME/N/model.tflite`` and ``settings.json`` in the same layout;
:class:`TFLiteModel` runs one (docs/edge.md).

Signatures of an exported SavedModel (see :class:`ServingModule`):

* ``serving_default``: ``images`` float32 ``[batch, H, W, 3]`` in [0, 1] ->
  ``probabilities`` ``[batch, C]``, ``logits`` ``[batch, C]``, ``class_ids``
  int64 ``[batch]``;
* ``features``: ``images`` -> ``features`` ``[batch, D]`` (penultimate layer);
* ``encoded_images``: ``images`` tf.string ``[batch]`` of PNG/JPEG bytes,
  decoded to RGB, scaled to [0, 1] and resized to H x W in the graph -> the
  outputs of ``serving_default``.

Example:
>>> from gacd_tf.models import build_model
>>> from gacd_tf.serving import export_saved_model, load_saved_model
>>> path = export_saved_model(build_model("resnet8"), "exports/resnet8")  # doctest: +SKIP
>>> served = load_saved_model("exports/resnet8")  # highest version  # doctest: +SKIP
>>> logits = served(images, training=False)  # doctest: +SKIP
"""

from gacd_tf.serving.export_onnx import export_onnx
from gacd_tf.serving.export_saved_model import export_saved_model
from gacd_tf.serving.export_tflite import export_tflite
from gacd_tf.serving.load_saved_model import load_classifier, load_saved_model
from gacd_tf.serving.served_model import ServedModel
from gacd_tf.serving.serving_module import ServingModule
from gacd_tf.serving.tflite_model import TFLiteModel, load_tflite, tflite_file
from gacd_tf.serving.versions import existing_versions
from gacd_tf.serving.write_version import write_version

__all__ = [
    "ServedModel",
    "ServingModule",
    "TFLiteModel",
    "existing_versions",
    "export_onnx",
    "export_saved_model",
    "export_tflite",
    "load_classifier",
    "load_saved_model",
    "load_tflite",
    "tflite_file",
    "write_version",
]
