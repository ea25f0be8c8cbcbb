"""Export a classifier as ONNX (``BASE/NAME/N/model.onnx``) with tf2onnx."""

import os

import tensorflow as tf

from gacd_tf.errors import ConfigError
from gacd_tf.serving.serving_module import ServingModule
from gacd_tf.serving.write_version import write_version

ONNX_FILE = "model.onnx"
OPSET = 17


def _converter():
    try:
        import onnx  # noqa: F401
        import tf2onnx
    except ImportError as err:
        raise ConfigError(
            f"ONNX export needs tf2onnx and onnx ({err.name} is not installed); "
            "pip install 'gacd_tf[onnx]'") from None
    return tf2onnx


def _rename(graph, old, new):
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new


def export_onnx(model, export_dir, version=None, overwrite=False, opset=OPSET):
    """Writes ``model`` to ``export_dir/N/model.onnx`` (the Triton layout).

    The ONNX graph has the input and outputs of the SavedModel's
    ``serving_default`` signature: ``images`` float32 ``[batch, H, W, 3]`` in
    [0, 1] -> ``probabilities``, ``logits``, ``class_ids`` (int64). The
    function is frozen (variables and captured constants become
    initializers) and converted with ``tf2onnx.convert.from_graph_def``.
    The write is atomic like :func:`export_saved_model`.

    Args:
        model: a Keras classifier following the gacd_tf interface, fixed H x W.
        export_dir: the model base path ``BASE/NAME``.
        version: integer version ``N``; ``None`` takes the next free one.
        overwrite: replace an existing version ``N``.
        opset: ONNX opset (default 17).

    Returns:
        the path of ``model.onnx`` (str).

    Raises:
        ConfigError: tf2onnx/onnx are not installed (the ``onnx`` extra), or
            a bad folder/version.
        ModelError: the model does not follow the interface.

    Example:
    >>> export_onnx(build_model("resnet8"), "onnx/resnet8")  # doctest: +SKIP
    'onnx/resnet8/1/model.onnx'
    """
    tf2onnx = _converter()
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    module = ServingModule(model)
    spec = tf.TensorSpec([None, module.height, module.width, 3], tf.float32, name="images")

    @tf.function(input_signature=[spec])
    def predict(images):
        _, logits = module.network(images, training=False)
        return module._outputs(logits)

    concrete = predict.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    output_keys = sorted(concrete.structured_outputs)  # tf.nest flattens dicts by key
    input_names = [tensor.name for tensor in frozen.inputs]
    output_names = [tensor.name for tensor in frozen.outputs]
    proto, _ = tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(), input_names=input_names, output_names=output_names,
        opset=opset)
    _rename(proto.graph, input_names[0], "images")
    for old, new in zip(output_names, output_keys):
        _rename(proto.graph, old, new)

    def write(folder):
        with open(os.path.join(folder, ONNX_FILE), "wb") as f:
            f.write(proto.SerializeToString())

    folder = write_version(export_dir, write, version=version, overwrite=overwrite)
    return os.path.join(folder, ONNX_FILE)
