"""DeepMind's Wide ResNets as in RobustBench: dm_wrn_28_10, dm_wrn_34_20, dm_wrn_70_16.

RobustBench's ``DMWideResNet`` (``robustbench/model_zoo/architectures/
dm_wide_resnet.py``, from deepmind-research ``adversarial_robustness``),
which differs from RobustBench's ``WideResNet`` in three ways that change
its function:

* **padding**: DeepMind pads like TensorFlow's ``SAME``: a stride-2 3x3
  convolution pads one pixel at the bottom and right only (PyTorch's
  ``padding=1`` pads one on every side); stride-1 convolutions pad one on
  every side;
* **activation**: Swish, ``x * sigmoid(x)`` (Keras ``"silu"``), in every
  RobustBench entry (``Swish`` or ``nn.SiLU``); ReLU is an option;
* **normalisation inside**: ``(x - mean) / std`` with DeepMind's CIFAR
  statistics (:data:`DM_CIFAR10_MEAN` ...), which :func:`build_model` puts in
  its ``normalize`` layer when given them (the importer does).

Block layout (``_Block``): ``bn0 -> act -> pad -> conv0 -> bn1 -> act ->
conv1``; when the width changes, the activated input also feeds a 1x1
shortcut convolution (stride of the block, no padding); otherwise the raw
input is added. A final BN-act, global average pooling and a biased linear
layer (``logits``) end the network.

Reference:
    Gowal et al., "Uncovering the Limits of Adversarial Training against
    Norm-Bounded Adversarial Examples", arXiv:2010.03593, 2020; Rebuffi et
    al., "Fixing Data Augmentation to Improve Adversarial Robustness",
    arXiv:2103.01946, 2021.
"""

import keras

from gacd_tf.errors import ConfigError
from gacd_tf.models import _blocks
from gacd_tf.models.registry import MODELS

# DeepMind's statistics (dm_wide_resnet.py); they differ from gacd_tf's
# dataset statistics in the third decimal, so an import must use these.
DM_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
DM_CIFAR10_STD = (0.2471, 0.2435, 0.2616)
DM_CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
DM_CIFAR100_STD = (0.2673, 0.2564, 0.2762)

ACTIVATIONS = {"swish": "silu", "silu": "silu", "relu": "relu"}


def activation_layer(activation, name):
    """The Keras layer of a DeepMind activation name (``swish``/``silu`` or ``relu``)."""
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"activation must be one of {', '.join(sorted(ACTIVATIONS))}, got {activation!r}")
    return keras.layers.Activation(ACTIVATIONS[activation], name=name)


def dm_conv3x3(x, filters, strides, name):
    """Bias-free 3x3 convolution with DeepMind's (TensorFlow ``SAME``) padding."""
    if strides == 1:
        x = keras.layers.ZeroPadding2D(padding=1, name=f"{name}_pad")(x)
    elif strides == 2:
        x = keras.layers.ZeroPadding2D(padding=((0, 1), (0, 1)), name=f"{name}_pad")(x)
    else:
        raise ConfigError(f"stride must be 1 or 2, got {strides!r}")
    return keras.layers.Conv2D(filters, 3, strides=strides, padding="valid", use_bias=False,
                               kernel_initializer=_blocks.conv_initializer(), name=name)(x)


def _block(x, filters, strides, activation, name):
    act = _blocks.batch_norm(x, name=f"{name}_bn0")
    act = activation_layer(activation, f"{name}_act0")(act)
    out = dm_conv3x3(act, filters, strides, name=f"{name}_conv0")
    out = _blocks.batch_norm(out, name=f"{name}_bn1")
    out = activation_layer(activation, f"{name}_act1")(out)
    out = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                              kernel_initializer=_blocks.conv_initializer(),
                              name=f"{name}_conv1")(out)
    if x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=strides, padding="valid",
                                       use_bias=False,
                                       kernel_initializer=_blocks.conv_initializer(),
                                       name=f"{name}_shortcut_conv")(act)
    else:
        if strides != 1:
            raise ConfigError("an identity shortcut cannot change the stride")
        shortcut = x
    return keras.layers.Add(name=f"{name}_add")([shortcut, out])


def dm_wide_resnet_backbone(x, depth, widen_factor, activation="swish"):
    """Backbone of DeepMind's WRN-depth-widen_factor.

    Args:
        x: normalised images ``[B, H, W, 3]`` (normalise with
            :data:`DM_CIFAR10_MEAN` / :data:`DM_CIFAR10_STD` to match a
            DeepMind checkpoint).
        depth: ``6n + 4`` (28, 34, 70, ...).
        widen_factor: width multiplier k.
        activation: ``"swish"`` (every RobustBench entry) or ``"relu"``.

    Returns:
        The feature map after the final BN-activation, ``[B, H/4, W/4, 64k]``.

    Example:
    >>> from gacd_tf.models import build_model
    >>> from gacd_tf.models.dm_wide_resnet import DM_CIFAR10_MEAN, DM_CIFAR10_STD
    >>> model = build_model("dm_wrn_28_10", depth=10, widen_factor=1,
    ...                     mean=DM_CIFAR10_MEAN, std=DM_CIFAR10_STD)
    >>> model.output_shape
    (None, 10)

    Reference:
        Gowal et al., arXiv:2010.03593, 2020.
    """
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ConfigError(f"WRN depth must be 6n+4 >= 10, got {depth}")
    n = (depth - 4) // 6
    widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False,
                            kernel_initializer=_blocks.conv_initializer(),
                            name="stem_conv")(x)
    for stage, (width, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
        for block in range(1, n + 1):
            x = _block(x, width, stride if block == 1 else 1, activation,
                       name=f"stage{stage}_block{block}")
    x = _blocks.batch_norm(x, name="final_bn")
    return activation_layer(activation, "final_act")(x)


def _register(depth, widen_factor):
    name = f"dm_wrn_{depth}_{widen_factor}"

    def backbone(x, activation="swish", depth=depth, widen_factor=widen_factor):
        return dm_wide_resnet_backbone(x, depth, widen_factor, activation)

    backbone.__name__ = name
    backbone.__doc__ = (
        f"DeepMind's WRN-{depth}-{widen_factor} (RobustBench DMWideResNet), "
        f"{64 * widen_factor}-D features. Options: activation (swish or relu); "
        f"depth and widen_factor (defaults {depth}, {widen_factor})."
    )
    MODELS.register(name)(backbone)
    return backbone


dm_wrn_28_10 = _register(28, 10)
dm_wrn_34_20 = _register(34, 20)
dm_wrn_70_16 = _register(70, 16)
