"""The model registry and :func:`build_model`, the one way to build a zoo model.

Every zoo model has the same outer structure, added here around a registered
*backbone* so that no architecture can break the interface::

    images [B, H, W, 3] float32 in [0, 1]        (Input, name "images")
      -> per-channel normalisation                (keras.layers.Normalization,
                                                   name "normalize")
      -> backbone                                 (registered function)
      -> global average pooling                   (name "features": [B, D])
      -> Dense(num_classes), linear               (name "logits":   [B, C])

The model's single output is the logits. Penultimate features are read with
:func:`gacd_tf.models.features_and_logits`.

Adding an architecture is one new file in ``gacd_tf/models/`` (imported by the
package ``__init__``) with one decorated function::

    from gacd_tf.models.registry import MODELS

    @MODELS.register("my_net")
    def my_net(x):
        '''x: normalised images [B, H, W, 3] -> 4-D feature map [B, h, w, D].'''
        ...
        return x

Keyword options of the backbone (e.g. ``dropout_rate`` of the wide ResNets)
are passed through from :func:`build_model`.
"""

import inspect
import math
import numbers

import keras

from gacd_tf.data.datasets import get_dataset_info
from gacd_tf.errors import ConfigError, ModelError
from gacd_tf.models import _blocks
from gacd_tf.registry import Registry

MODELS = Registry("model")

# Per-channel statistics of the training splits (population std), from the
# dataset descriptions in gacd_tf.data (their one source). Models take [0, 1]
# pixels and normalise inside, so attacks, export and serving all see [0, 1]
# images (SPEC, "Threat model").
CIFAR10_MEAN, CIFAR10_STD = get_dataset_info("cifar10").mean, get_dataset_info("cifar10").std
CIFAR100_MEAN, CIFAR100_STD = get_dataset_info("cifar100").mean, get_dataset_info("cifar100").std
# mean 0 / std 1 makes the normalisation the identity, which reproduces the
# ARD reference code (it feeds un-normalised [0, 1] images).
IDENTITY_MEAN = (0.0, 0.0, 0.0)
IDENTITY_STD = (1.0, 1.0, 1.0)

MIN_IMAGE_SIZE = 8

INPUT_NAME = "images"
NORMALIZATION_NAME = "normalize"
FEATURES_NAME = "features"
LOGITS_NAME = "logits"


def model_names():
    """Lists the registered architecture names.

    Returns:
        Sorted list of names accepted by :func:`build_model`.

    Example:
    >>> from gacd_tf.models import model_names
    >>> "resnet20" in model_names()
    True
    """
    return MODELS.names()


def _check_num_classes(num_classes):
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, numbers.Integral)
        or num_classes < 2
    ):
        raise ConfigError(
            f"num_classes must be an integer >= 2, got {num_classes!r}"
        )
    return int(num_classes)


def _check_input_shape(input_shape):
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if shape is None or len(shape) != 3:
        raise ConfigError(
            f"input_shape must be (height, width, 3) for RGB images, got {input_shape!r}"
        )
    height, width, channels = shape
    if channels != 3 or isinstance(channels, bool):
        raise ConfigError(
            f"input_shape must have 3 (RGB) channels last, got {input_shape!r}"
        )
    for what, size in (("height", height), ("width", width)):
        if size is None:
            continue
        if (
            isinstance(size, bool)
            or not isinstance(size, numbers.Integral)
            or size < MIN_IMAGE_SIZE
        ):
            raise ConfigError(
                f"input_shape {what} must be None or an integer >= {MIN_IMAGE_SIZE} "
                f"(the zoo downsamples by up to 8), got {input_shape!r}"
            )
    return tuple(None if s is None else int(s) for s in shape)


def _check_stats(values, what, positive):
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        floats = None
    if floats is None or len(floats) != 3:
        raise ConfigError(
            f"{what} must be 3 per-channel numbers (R, G, B), got {values!r}"
        )
    if not all(math.isfinite(v) for v in floats):
        raise ConfigError(f"{what} must be finite, got {values!r}")
    if positive and not all(v > 1e-6 for v in floats):
        raise ConfigError(f"{what} must be > 0 for every channel, got {values!r}")
    return floats


def _check_options(name, backbone, options):
    params = inspect.signature(backbone).parameters
    accepted = [p for p in list(params)[1:]]
    takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_var_kw:
        raise ConfigError(
            f"model {name!r} does not take option(s) {', '.join(unknown)}; "
            f"its options are: {', '.join(accepted) or '(none)'}"
        )


def build_model(
    name,
    num_classes=10,
    input_shape=(32, 32, 3),
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    model_name=None,
    **options,
):
    """Builds a zoo classifier as a functional ``keras.Model``.

    The model maps ``images`` (float32 ``[B, H, W, 3]`` in ``[0, 1]``) to
    logits ``[B, num_classes]``. Its first layer normalises per channel,
    ``(x - mean) / std`` (a built-in ``keras.layers.Normalization`` named
    ``"normalize"``, so ``.keras`` files load with ``safe_mode=True`` and no
    custom objects); its penultimate layer is the global average pooling
    named ``"features"``; its last layer is the linear ``Dense`` named
    ``"logits"``. Plain ``compile/fit/evaluate`` work on it (use
    ``from_logits=True`` losses), and
    :func:`gacd_tf.models.features_and_logits` exposes the features.

    Args:
        name: registered architecture, one of :func:`model_names`
            (``resnet8/20/32/56/110``, ``resnet18/34``,
            ``wrn_16_2/34_2/34_10/40_2``, ``mobilenetv2``).
        num_classes: number of classes (>= 2).
        input_shape: ``(height, width, 3)``; height/width are integers >= 8
            or ``None`` (any size: global pooling makes every model
            size-agnostic).
        mean: per-channel mean of the training images in [0, 1] units.
        std: per-channel standard deviation (> 0). ``IDENTITY_MEAN`` /
            ``IDENTITY_STD`` disable normalisation (ARD reference code).
        model_name: name of the Keras model; defaults to ``name``. Give two
            models distinct names to nest them in one outer model.
        **options: architecture options, e.g. ``dropout_rate`` for the wide
            ResNets.

    Returns:
        An un-compiled functional ``keras.Model`` with input ``images`` and
        output ``logits``.

    Raises:
        ConfigError: unknown name (the message lists the known names), bad
            ``num_classes``, ``input_shape``, ``mean``, ``std`` or option.

    Example:
    >>> from gacd_tf.models import build_model, features_and_logits
    >>> model = build_model("resnet20", num_classes=10)
    >>> model.output_shape
    (None, 10)
    >>> features_and_logits(model).output_shape
    [(None, 64), (None, 10)]

    Reference:
        Architectures follow the CIFAR variants of RepDistiller (Tian et al.,
        "Contrastive Representation Distillation", ICLR 2020) and ARD
        (Goldblum et al., "Adversarially Robust Distillation", AAAI 2020).
    """
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, got {name!r}")
    backbone = MODELS.get(name)
    num_classes = _check_num_classes(num_classes)
    input_shape = _check_input_shape(input_shape)
    mean = _check_stats(mean, "mean", positive=False)
    std = _check_stats(std, "std", positive=True)
    if model_name is None:
        model_name = name
    if not isinstance(model_name, str) or not model_name:
        raise ConfigError(f"model_name must be a non-empty string, got {model_name!r}")
    _check_options(name, backbone, options)

    images = keras.Input(shape=input_shape, dtype="float32", name=INPUT_NAME)
    x = keras.layers.Normalization(
        mean=list(mean), variance=[s * s for s in std], name=NORMALIZATION_NAME
    )(images)
    x = backbone(x, **options)
    if len(x.shape) != 4:
        raise ModelError(
            f"backbone of model {name!r} must return a 4-D feature map "
            f"[B, h, w, D], got shape {tuple(x.shape)}"
        )
    features = keras.layers.GlobalAveragePooling2D(name=FEATURES_NAME)(x)
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=_blocks.dense_initializer(),
        bias_initializer="zeros",
        # Logits stay float32 under a mixed-precision policy: every loss,
        # softmax and attack objective reads them.
        dtype="float32",
        name=LOGITS_NAME,
    )(features)
    return keras.Model(images, logits, name=model_name)
