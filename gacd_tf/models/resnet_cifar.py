"""CIFAR ResNets of depth 6n+2 (resnet8, resnet20, resnet32, resnet56, resnet110).

3x3 stem convolution with 16 channels, then three stages of ``n`` BasicBlocks
with widths 16, 32, 64 (strides 1, 2, 2), as in RepDistiller
``models/resnet.py`` (``resnet20 = ResNet(20, [16, 16, 32, 64], 'basicblock')``).
Shortcuts that change shape are 1x1 convolution + BN (RepDistiller's
``downsample``; He et al.'s CIFAR experiments used zero-padding "option A",
which differs by a few thousand parameters).

Reference:
    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
"""

from gacd_tf.models import _blocks
from gacd_tf.models.registry import MODELS

WIDTHS = (16, 32, 64)


def cifar_resnet_backbone(x, depth):
    """Backbone of a CIFAR ResNet of the given depth.

    Args:
        x: normalised images ``[B, H, W, 3]``.
        depth: ``6n + 2`` (8, 20, 32, 44, 56, 110, ...).

    Returns:
        The last stage's feature map ``[B, H/4, W/4, 64]``.

    Example:
    >>> from gacd_tf.models import build_model
    >>> build_model("resnet56").count_params() > 0
    True

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 >= 8, got {depth}")
    n = (depth - 2) // 6
    x = _blocks.conv_bn(x, WIDTHS[0], 3, 1, name="stem")
    return _blocks.resnet_stages(x, WIDTHS, (n, n, n), (1, 2, 2))


def _register(depth):
    name = f"resnet{depth}"

    def backbone(x):
        return cifar_resnet_backbone(x, depth)

    backbone.__name__ = name
    backbone.__doc__ = (
        f"ResNet-{depth} for CIFAR (He et al. 2016): {(depth - 2) // 6} BasicBlocks "
        "per stage, widths 16/32/64, 64-D features."
    )
    MODELS.register(name)(backbone)
    return backbone


resnet8 = _register(8)
resnet20 = _register(20)
resnet32 = _register(32)
resnet56 = _register(56)
resnet110 = _register(110)
