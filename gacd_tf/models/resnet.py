"""ImageNet-style ResNets adapted to CIFAR (resnet18, resnet34).

3x3 stem convolution with stride 1 and no max-pool, then four stages of
BasicBlocks with widths 64, 128, 256, 512 (strides 1, 2, 2, 2): the CIFAR
variant used by the ARD reference code (``models/resnet.py``, after
kuangliu/pytorch-cifar) and RepDistiller ``models/resnetv2.py``.

Reference:
    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
"""

from gacd_tf.models import _blocks
from gacd_tf.models.registry import MODELS

WIDTHS = (64, 128, 256, 512)
STRIDES = (1, 2, 2, 2)


def resnet_backbone(x, blocks_per_stage):
    """Backbone of a CIFAR ResNet-18/34-style network.

    Args:
        x: normalised images ``[B, H, W, 3]``.
        blocks_per_stage: four BasicBlock counts, e.g. ``(2, 2, 2, 2)``.

    Returns:
        The last stage's feature map ``[B, H/8, W/8, 512]``.

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """
    x = _blocks.conv_bn(x, WIDTHS[0], 3, 1, name="stem")
    return _blocks.resnet_stages(x, WIDTHS, blocks_per_stage, STRIDES)


@MODELS.register("resnet18")
def resnet18(x):
    """ResNet-18 for CIFAR: BasicBlocks [2, 2, 2, 2], 512-D features, ~11.2M params.

    Example:
    >>> from gacd_tf.models import build_model
    >>> build_model("resnet18").output_shape
    (None, 10)

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """
    return resnet_backbone(x, (2, 2, 2, 2))


@MODELS.register("resnet34")
def resnet34(x):
    """ResNet-34 for CIFAR: BasicBlocks [3, 4, 6, 3], 512-D features, ~21.3M params.

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """
    return resnet_backbone(x, (3, 4, 6, 3))
