"""DeepMind's pre-activation ResNet-18 as in RobustBench (``dm_preact_resnet18``).

RobustBench's ``DMPreActResNet`` (``robustbench/model_zoo/architectures/
dm_wide_resnet.py``): a 64-channel 3x3 stem without batch norm, four stages
of pre-activation blocks (widths 64, 128, 256, 512; strides 1, 2, 2, 2),
then a final BN-activation. It differs from RobustBench's ``PreActResNet``
(``preact_resnet18``) in four ways:

* DeepMind's padding (TensorFlow ``SAME``: a stride-2 3x3 convolution pads
  one pixel at the bottom and right only);
* the shortcut, where the stride or width changes, is a *3x3* convolution
  (padded the same way) of the raw block input;
* a final BN-activation before pooling;
* Swish activations and normalisation by DeepMind's CIFAR mean/std inside
  (:data:`gacd_tf.models.dm_wide_resnet.DM_CIFAR10_MEAN` ...).

Reference:
    Rebuffi et al., "Fixing Data Augmentation to Improve Adversarial
    Robustness", arXiv:2103.01946, 2021; He et al., "Identity Mappings in Deep
    Residual Networks", ECCV 2016.
"""

import keras

from gacd_tf.errors import ConfigError
from gacd_tf.models import _blocks
from gacd_tf.models.dm_wide_resnet import activation_layer, dm_conv3x3
from gacd_tf.models.registry import MODELS

WIDTHS = (64, 128, 256, 512)
STRIDES = (1, 2, 2, 2)
BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _block(x, filters, strides, activation, name):
    act = _blocks.batch_norm(x, name=f"{name}_bn0")
    act = activation_layer(activation, f"{name}_act0")(act)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = dm_conv3x3(x, filters, strides, name=f"{name}_shortcut_conv")
    else:
        shortcut = x
    out = dm_conv3x3(act, filters, strides, name=f"{name}_conv1")
    out = _blocks.batch_norm(out, name=f"{name}_bn1")
    out = activation_layer(activation, f"{name}_act1")(out)
    out = dm_conv3x3(out, filters, 1, name=f"{name}_conv2")
    return keras.layers.Add(name=f"{name}_add")([out, shortcut])


@MODELS.register("dm_preact_resnet18")
def dm_preact_resnet18(x, activation="swish", depth=18):
    """DeepMind's pre-activation ResNet (RobustBench ``DMPreActResNet``), 512-D features.

    Args:
        x: normalised images ``[B, H, W, 3]``.
        activation: ``"swish"`` (every RobustBench entry) or ``"relu"``.
        depth: 18 (blocks 2, 2, 2, 2) or 34 (3, 4, 6, 3), as DeepMind's class.

    Returns:
        The feature map after the final BN-activation, ``[B, H/8, W/8, 512]``.

    Example:
    >>> from gacd_tf.models import build_model
    >>> from gacd_tf.models.dm_wide_resnet import DM_CIFAR10_MEAN, DM_CIFAR10_STD
    >>> build_model("dm_preact_resnet18", mean=DM_CIFAR10_MEAN,
    ...             std=DM_CIFAR10_STD).output_shape
    (None, 10)

    Reference:
        Rebuffi et al., arXiv:2103.01946, 2021.
    """
    if depth not in BLOCKS:
        raise ConfigError(f"depth must be 18 or 34, got {depth!r}")
    x = keras.layers.Conv2D(WIDTHS[0], 3, padding="same", use_bias=False,
                            kernel_initializer=_blocks.conv_initializer(),
                            name="stem_conv")(x)
    for stage, (width, stride, blocks) in enumerate(
            zip(WIDTHS, STRIDES, BLOCKS[depth]), start=1):
        for block in range(1, blocks + 1):
            x = _block(x, width, stride if block == 1 else 1, activation,
                       name=f"stage{stage}_block{block}")
    x = _blocks.batch_norm(x, name="final_bn")
    return activation_layer(activation, "final_act")(x)
