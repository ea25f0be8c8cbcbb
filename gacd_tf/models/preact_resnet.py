"""Pre-activation ResNet-18 as in RobustBench (``preact_resnet18``).

RobustBench's ``PreActResNet(PreActBlock, [2, 2, 2, 2])``
(``robustbench/model_zoo/architectures/resnet.py``, after kuangliu's
pytorch-cifar): a 64-channel 3x3 stem without batch norm, four stages of
pre-activation blocks (widths 64, 128, 256, 512; strides 1, 2, 2, 2), and
*no* batch norm after the last block unless ``bn_before_fc``. Each block
computes ``conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut`` where the
shortcut is ``x`` or a bias-free 1x1 convolution of the *raw* input ``x``
(of the activated input with ``out_shortcut=True``). RobustBench's
``PreActResNet`` does not normalise its input: an imported model is built
with ``IDENTITY_MEAN`` / ``IDENTITY_STD``.

Reference:
    He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016;
    Croce et al., "RobustBench", NeurIPS 2021 D&B.
"""

import keras

from gacd_tf.errors import ConfigError
from gacd_tf.models import _blocks
from gacd_tf.models.registry import MODELS

WIDTHS = (64, 128, 256, 512)
STRIDES = (1, 2, 2, 2)


def _block(x, filters, strides, out_shortcut, name):
    act = _blocks.batch_norm(x, name=f"{name}_bn1")
    act = _blocks.relu(act, name=f"{name}_relu1")
    if strides != 1 or x.shape[-1] != filters:
        source = act if out_shortcut else x
        shortcut = _blocks.conv(source, filters, 1, strides, name=f"{name}_shortcut_conv")
    else:
        shortcut = x
    out = _blocks.conv(act, filters, 3, strides, name=f"{name}_conv1")
    out = _blocks.batch_norm(out, name=f"{name}_bn2")
    out = _blocks.relu(out, name=f"{name}_relu2")
    out = _blocks.conv(out, filters, 3, 1, name=f"{name}_conv2")
    return keras.layers.Add(name=f"{name}_add")([out, shortcut])


@MODELS.register("preact_resnet18")
def preact_resnet18(x, blocks_per_stage=(2, 2, 2, 2), bn_before_fc=False, out_shortcut=False):
    """Pre-activation ResNet-18 (RobustBench ``PreActResNet``), 512-D features.

    Args:
        x: normalised images ``[B, H, W, 3]``.
        blocks_per_stage: four block counts (``(2, 2, 2, 2)``: ResNet-18).
        bn_before_fc: RobustBench's option of that name: a BN-ReLU after the
            last block (default False, as in ``PreActResNet18()``).
        out_shortcut: RobustBench's option of that name: the 1x1 shortcut
            sees the activated input instead of the raw one.

    Returns:
        The last stage's feature map ``[B, H/8, W/8, 512]``.

    Example:
    >>> from gacd_tf.models import build_model, IDENTITY_MEAN, IDENTITY_STD
    >>> build_model("preact_resnet18", mean=IDENTITY_MEAN, std=IDENTITY_STD).output_shape
    (None, 10)

    Reference:
        He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016.
    """
    blocks_per_stage = tuple(blocks_per_stage)
    if len(blocks_per_stage) != 4 or not all(isinstance(n, int) and n >= 1
                                             for n in blocks_per_stage):
        raise ConfigError(
            f"blocks_per_stage must be four integers >= 1, got {blocks_per_stage!r}")
    x = _blocks.conv(x, WIDTHS[0], 3, 1, name="stem_conv")
    for stage, (width, stride, blocks) in enumerate(
            zip(WIDTHS, STRIDES, blocks_per_stage), start=1):
        for block in range(1, blocks + 1):
            x = _block(x, width, stride if block == 1 else 1, bool(out_shortcut),
                       name=f"stage{stage}_block{block}")
    if bn_before_fc:
        x = _blocks.batch_norm(x, name="final_bn")
        x = _blocks.relu(x, name="final_relu")
    return x
