"""An inference-mode view of a Keras model with its batch norms folded into the convolutions.

Evaluation calls the model thousands of times per image (AutoAttack's
standard ensemble: about 10^4 forward-backward passes per robust point), and
always in inference mode, where a ``BatchNormalization`` after a ``Conv2D`` is
a per-channel affine map: ``gamma (conv(x) + b - mean) / sqrt(var + eps) +
beta``, which is one convolution with kernel ``W * s`` and bias
``(b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``. Computed that way
the forward and the backward pass skip the batch norm's elementwise passes
over the activations; a ``ZeroPadding2D`` in front of a ``'valid'`` convolution
becomes the convolution's explicit padding, which saves a copy of the
activations. This is what an exported graph does (tf2onnx, the TFLite
converter), so the reference AutoAttack, run on the ONNX export, gets it too.

:func:`fold_batch_norm` returns a callable that runs the model's own graph
(Keras' functional graph walk) with those layers replaced. The folded kernel
and bias are computed in the graph from the model's live variables at each
call (a few elementwise operations on the small weight tensors), so the view
holds no copy of the weights, never goes stale when the model trains on,
and works under any ``tf.distribute`` strategy the model's variables live
in. The outputs are the model's up to float32 round-off (the view is checked
against the model on probe images when it is made, and the model itself is
returned when the check fails or nothing can be folded).
"""

import keras
import numpy as np
import tensorflow as tf

_TOLERANCE = 1e-4  # relative to the largest |logit| on the probe images


def _producer(layer):
    """The layer whose output is ``layer``'s only input, or None."""
    if len(layer._inbound_nodes) != 1:
        return None
    tensors = layer._inbound_nodes[0].input_tensors
    if len(tensors) != 1:
        return None
    return tensors[0]._keras_history.operation


def _sole_consumer(layer):
    """The layer that alone consumes ``layer``'s single output, or None."""
    if len(layer._inbound_nodes) != 1 or len(layer._outbound_nodes) != 1:
        return None
    return layer._outbound_nodes[0].operation


def _foldable_conv(layer):
    return (type(layer) is keras.layers.Conv2D and layer.data_format == "channels_last"
            and layer.groups == 1 and layer.get_config()["activation"] == "linear"
            and len(layer._inbound_nodes) == 1)


def _is_batch_norm(layer):
    return (type(layer) is keras.layers.BatchNormalization and layer.axis in (-1, 3)
            and len(layer._inbound_nodes) == 1)


class _FoldedConv:
    """``conv`` (after ``padding``, a ZeroPadding2D, if any) then ``norm``, as one convolution."""

    def __init__(self, conv, norm, padding):
        self.conv, self.norm, self.padding = conv, norm, padding
        if padding is not None:
            (top, bottom), (left, right) = padding.padding
            self.pad = [[0, 0], [top, bottom], [left, right], [0, 0]]
        else:
            self.pad = conv.padding.upper()

    def __call__(self, x, training=None, **kwargs):
        if training:  # batch statistics: the layers themselves
            if self.padding is not None:
                x = self.padding(x)
            y = self.conv(x)
            return self.norm(y, training=training) if self.norm is not None else y
        conv = self.conv
        kernel = conv.kernel
        bias = conv.bias if conv.use_bias else tf.zeros(kernel.shape[-1], kernel.dtype)
        norm = self.norm
        if norm is not None:
            scale = tf.math.rsqrt(norm.moving_variance + norm.epsilon)
            if norm.scale:
                scale = scale * norm.gamma
            kernel = kernel * scale
            bias = (bias - norm.moving_mean) * scale
            if norm.center:
                bias = bias + norm.beta
        dtype = conv.compute_dtype  # as the layers compute (float16 under mixed precision)
        kernel, bias, x = tf.cast(kernel, dtype), tf.cast(bias, dtype), tf.cast(x, dtype)
        y = tf.nn.conv2d(x, kernel, [1, *conv.strides, 1], self.pad,
                         dilations=[1, *conv.dilation_rate, 1])
        return tf.nn.bias_add(y, bias)


def _identity(x, *args, **kwargs):
    return x


class FoldedModel:
    """A functional model's graph with the layers in ``replaced`` called differently.

    Call it as the model: ``view(x, training=False)``. Built by
    :func:`fold_batch_norm`.
    """

    def __init__(self, functional, replaced, folded):
        self._functional = functional
        self._replaced = replaced
        self.folded = folded  # names of the convolutions folded with their batch norm

    def __call__(self, x, training=False, **kwargs):
        from keras.src.models.functional import operation_fn

        def op_fn(op):
            if id(op) in self._replaced:
                replacement = self._replaced[id(op)]
                return lambda *a, **k: replacement(*a, training=training)
            return operation_fn(op, training=training)

        from keras.src.models.functional import unpack_singleton

        inputs = self._functional._standardize_inputs(x)
        return unpack_singleton(self._functional._run_through_graph(inputs, operation_fn=op_fn))


def _functional_of(model):
    from keras.src.models.functional import Functional

    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if isinstance(model, Functional):
        return model
    return None


def _build(model):
    functional = _functional_of(model)
    if functional is None or len(functional.inputs) != 1:
        return model
    replaced, folded = {}, []
    for layer in functional.layers:
        if not _foldable_conv(layer):
            continue
        padding = _producer(layer)
        if not (layer.padding == "valid" and isinstance(padding, keras.layers.ZeroPadding2D)
                and padding.data_format == "channels_last"
                and _sole_consumer(padding) is layer):
            padding = None
        norm = _sole_consumer(layer)
        if not (norm is not None and _is_batch_norm(norm)):
            norm = None
        if norm is None and padding is None:
            continue
        replaced[id(layer)] = _FoldedConv(layer, norm, padding)
        if norm is not None:
            replaced[id(norm)] = _identity
            folded.append(layer.name)
        if padding is not None:
            replaced[id(padding)] = _identity
    if not replaced:
        return model
    view = FoldedModel(functional, replaced, folded)
    shape = tuple(functional.inputs[0].shape[1:])
    if None in shape:
        return model
    probe = np.random.default_rng(0).uniform(0, 1, (4, *shape)).astype("float32")
    want = tf.nest.flatten(model(probe, training=False))
    got = tf.nest.flatten(view(probe, training=False))
    if len(want) != len(got):
        return model
    for a, b in zip(want, got):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape or np.max(np.abs(a - b), initial=0.0) > _TOLERANCE * max(
                1.0, np.max(np.abs(a), initial=0.0)):
            return model
    return view


def fold_batch_norm(model):
    """``model`` in inference mode with each ``Conv2D -> BatchNormalization`` folded.

    Args:
        model: a functional or Sequential Keras model (anything else, e.g. a
            subclassed model or a SavedModel, is returned as it is).

    Returns:
        A callable ``view(x, training=False)`` with the model's outputs (to
        float32 round-off), or ``model`` itself when nothing can be folded
        or the view disagrees with the model on probe images (a made view
        costs two forward passes of four images; keep it to keep its
        ``tf.function`` traces). A ``Conv2D`` folds when it is channels-last, ungrouped, without
        activation, called once, and its output goes only to a
        ``BatchNormalization`` over the last axis (also called once); a
        ``ZeroPadding2D`` whose output goes only to a ``'valid'`` ``Conv2D``
        becomes that convolution's padding. With ``training=True`` the view
        calls the layers themselves.

    Example:
    >>> view = fold_batch_norm(build_model("resnet20"))  # doctest: +SKIP
    >>> AutoAttack().run(view, x, y)  # doctest: +SKIP

    Reference:
        Jacob et al., "Quantization and Training of Neural Networks for
        Efficient Integer-Arithmetic-Only Inference", CVPR 2018 (batch-norm
        folding, section 3.2).
    """
    if isinstance(model, FoldedModel):
        return model
    return _build(model)
