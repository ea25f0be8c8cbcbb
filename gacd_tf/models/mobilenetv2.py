"""MobileNetV2 for CIFAR (mobilenetv2), as in the ARD reference code.

The ARD ``models/mobilenetv2.py`` (after kuangliu/pytorch-cifar) changes the
ImageNet MobileNetV2 for 32x32 inputs: the first convolution has stride 1 and
the second bottleneck stage has stride 1 instead of 2, so the network
downsamples by 8 in total. Width multiplier 1, ReLU (not ReLU6), last 1x1
convolution to 1280 channels (the feature dimension). Inverted-residual
blocks with stride 1 always add a shortcut: the identity when the width is
unchanged, else a 1x1 convolution + BN (as in the reference code; Sandler et
al. drop the residual in that case).

Reference:
    Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
    CVPR 2018.
"""

import keras

from gacd_tf.models import _blocks
from gacd_tf.models.registry import MODELS

# (expansion, out_channels, num_blocks, first_stride); stage 2 stride 2 -> 1.
CIFAR_CONFIG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def _inverted_residual(x, out_channels, expansion, strides, name):
    in_channels = x.shape[-1]
    out = _blocks.conv_bn(x, expansion * in_channels, 1, 1, name=f"{name}_expand")
    out = _blocks.depthwise_conv(out, 3, strides, name=f"{name}_depthwise_conv")
    out = _blocks.batch_norm(out, name=f"{name}_depthwise_bn")
    out = _blocks.relu(out, name=f"{name}_depthwise_relu")
    out = _blocks.conv_bn(out, out_channels, 1, 1, name=f"{name}_project", activation=False)
    if strides != 1:
        return out
    if in_channels == out_channels:
        shortcut = x
    else:
        shortcut = _blocks.conv_bn(
            x, out_channels, 1, 1, name=f"{name}_shortcut", activation=False
        )
    return keras.layers.Add(name=f"{name}_add")([out, shortcut])


@MODELS.register("mobilenetv2")
def mobilenetv2(x):
    """MobileNetV2 backbone, CIFAR strides, 1280-D features (~2.30M params at C=10).

    Args:
        x: normalised images ``[B, H, W, 3]``.

    Returns:
        Feature map ``[B, H/8, W/8, 1280]`` after the last 1x1 conv-BN-ReLU.

    Example:
    >>> from gacd_tf.models import build_model, feature_dim
    >>> feature_dim(build_model("mobilenetv2"))
    1280

    Reference:
        Sandler et al., "MobileNetV2: Inverted Residuals and Linear
        Bottlenecks", CVPR 2018.
    """
    x = _blocks.conv_bn(x, STEM_CHANNELS, 3, 1, name="stem")
    for stage, (expansion, channels, blocks, stride) in enumerate(CIFAR_CONFIG, start=1):
        for block in range(1, blocks + 1):
            x = _inverted_residual(
                x,
                channels,
                expansion,
                stride if block == 1 else 1,
                name=f"stage{stage}_block{block}",
            )
    return _blocks.conv_bn(x, LAST_CHANNELS, 1, 1, name="head")
