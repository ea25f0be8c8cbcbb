"""The features/logits interface shared by every trainer, attack and analysis.

A *classifier* in gacd_tf is any graph Keras model (functional or Sequential)
that

* takes one input: float32 images ``[B, H, W, 3]`` in ``[0, 1]`` (any
  normalisation happens inside the model);
* outputs logits ``[B, C]`` (no softmax);
* exposes its penultimate representation ``[B, D]`` (after global pooling,
  before the logit layer) either as a layer named ``"features"`` or, failing
  that, as the input of its last layer when that layer is a ``Dense``.

Every zoo model (:func:`gacd_tf.models.build_model`) satisfies this, also
after a ``.keras`` round trip with ``safe_mode=True``. Models trained
elsewhere qualify if they follow the contract.
"""

import keras

from gacd_tf.errors import ModelError
from gacd_tf.models.registry import FEATURES_NAME

_CONTRACT = (
    "a gacd_tf classifier must be a functional or Sequential Keras model with "
    "one input (images [B, H, W, 3] in [0, 1]) and one output (logits [B, C], "
    f"no softmax), whose penultimate features [B, D] are the output of a layer "
    f"named {FEATURES_NAME!r} or the input of a final Dense layer"
)

_PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid", "log_softmax")


def _describe(model):
    return f"model {getattr(model, 'name', type(model).__name__)!r}"


def _graph_io(model):
    if not isinstance(model, keras.Model):
        raise ModelError(
            f"expected a keras.Model, got {type(model).__name__}; {_CONTRACT}"
        )
    try:
        inputs = model.inputs
        outputs = model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise ModelError(
            f"{_describe(model)} has no symbolic inputs/outputs (a subclassed or "
            f"unbuilt model?); {_CONTRACT}"
        )
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(
            f"{_describe(model)} has {len(inputs)} input(s) and {len(outputs)} "
            f"output(s); {_CONTRACT}"
        )
    return inputs[0], outputs[0]


def _activation_name(layer):
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", str(activation))


def _check_outputs_are_logits(model, logits):
    last = model.layers[-1] if model.layers else None
    if isinstance(last, keras.layers.Softmax) or (
        isinstance(last, (keras.layers.Activation, keras.layers.Dense))
        and _activation_name(last) in _PROBABILITY_ACTIVATIONS
    ):
        raise ModelError(
            f"{_describe(model)} ends in a {_activation_name(last) or 'softmax'} "
            f"(layer {last.name!r}): its outputs are probabilities, not logits; "
            f"remove the activation. {_CONTRACT}"
        )
    if len(logits.shape) != 2:
        raise ModelError(
            f"{_describe(model)} outputs shape {tuple(logits.shape)}, not logits "
            f"[B, C]; {_CONTRACT}"
        )


def _locate(model):
    """Returns (images, features, logits) symbolic tensors of ``model``."""
    images, logits = _graph_io(model)
    _check_outputs_are_logits(model, logits)
    named = [layer for layer in model.layers if layer.name == FEATURES_NAME]
    if named:
        try:
            features = named[0].output
        except (AttributeError, ValueError) as error:
            raise ModelError(
                f"layer {FEATURES_NAME!r} of {_describe(model)} has no single "
                f"output ({error}); {_CONTRACT}"
            ) from None
        how = f"layer {FEATURES_NAME!r}"
    else:
        last = model.layers[-1] if model.layers else None
        if not isinstance(last, keras.layers.Dense):
            raise ModelError(
                f"{_describe(model)} has no layer named {FEATURES_NAME!r} and its "
                f"last layer ({type(last).__name__} {getattr(last, 'name', None)!r}) "
                f"is not a Dense layer, so its penultimate features cannot be "
                f"found; {_CONTRACT}"
            )
        try:
            features = last.input
        except (AttributeError, ValueError) as error:
            raise ModelError(
                f"the last Dense layer {last.name!r} of {_describe(model)} has no "
                f"single input ({error}); {_CONTRACT}"
            ) from None
        how = f"input of the last Dense layer {last.name!r}"
    if not isinstance(features, keras.KerasTensor) or len(features.shape) != 2:
        shape = getattr(features, "shape", None)
        raise ModelError(
            f"the features of {_describe(model)} ({how}) have shape "
            f"{None if shape is None else tuple(shape)}, expected [B, D] "
            f"(pool the feature map globally first); {_CONTRACT}"
        )
    return images, features, logits


def features_and_logits(model):
    """Returns a model mapping images to ``[features, logits]``, sharing weights.

    The returned ``keras.Model`` reuses the layers (and so the variables and
    batch-norm statistics) of ``model``: training it, or training ``model``,
    updates both. Build it once and reuse it (construction is not free).

    Args:
        model: a classifier following the gacd_tf interface (any zoo model,
            also after ``keras.saving.load_model(path, safe_mode=True)``).

    Returns:
        ``keras.Model`` with the same input, two outputs: features
        ``[B, D]`` (the layer named ``"features"``, else the input of the
        final ``Dense``) and logits ``[B, C]``.

    Raises:
        ModelError: the model does not follow the interface; the message
            names the model and states the contract.

    Example:
    >>> import numpy as np
    >>> from gacd_tf.models import build_model, features_and_logits
    >>> model = build_model("resnet20", num_classes=100)
    >>> features, logits = features_and_logits(model)(np.zeros((2, 32, 32, 3), "float32"))
    >>> tuple(features.shape), tuple(logits.shape)
    ((2, 64), (2, 100))

    Reference:
        Penultimate features f(.) and logits z(.) as used by CRD (Tian et al.,
        "Contrastive Representation Distillation", ICLR 2020) and GACD.
    """
    images, features, logits = _locate(model)
    return keras.Model(
        images, [features, logits], name=f"{model.name}_features_and_logits"
    )


def feature_dim(model):
    """Returns the dimension D of the model's penultimate features.

    Args:
        model: a classifier following the gacd_tf interface.

    Returns:
        ``int`` D (e.g. 64 for resnet20, 512 for resnet18, 640 for wrn_34_10).

    Raises:
        ModelError: the model does not follow the interface.

    Example:
    >>> from gacd_tf.models import build_model, feature_dim
    >>> feature_dim(build_model("wrn_40_2"))
    128

    Reference:
        Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (widths).
    """
    _, features, _ = _locate(model)
    dim = features.shape[-1]
    if dim is None:
        raise ModelError(f"the feature dimension of {_describe(model)} is unknown")
    return int(dim)


def num_classes(model):
    """Returns the number of classes C (the logits' last dimension).

    Args:
        model: a classifier following the gacd_tf interface.

    Returns:
        ``int`` C.

    Raises:
        ModelError: the model does not follow the interface.

    Example:
    >>> from gacd_tf.models import build_model, num_classes
    >>> num_classes(build_model("resnet20", num_classes=100))
    100

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """
    _, _, logits = _locate(model)
    classes = logits.shape[-1]
    if classes is None:
        raise ModelError(f"the number of classes of {_describe(model)} is unknown")
    return int(classes)
