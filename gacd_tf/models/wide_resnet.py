"""Wide ResNets WRN-d-k (wrn_16_2, wrn_34_2, wrn_34_10, wrn_40_2).

3x3 stem convolution (16 channels, no BN), three stages of ``(d - 4) / 6``
pre-activation BasicBlocks with widths 16k, 32k, 64k (strides 1, 2, 2), then
a final BN-ReLU. Block layout follows the TRADES/ARD ``models/wideresnet.py``
and RepDistiller ``models/wrn.py``: when a block changes width, the BN-ReLU is
applied before the split and the 1x1 shortcut convolution sees the activated
input; otherwise the shortcut is the raw input.

Reference:
    Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
"""

import keras

from gacd_tf.errors import ConfigError
from gacd_tf.models import _blocks
from gacd_tf.models.registry import MODELS


def _preact_block(x, filters, strides, dropout_rate, name):
    equal_in_out = x.shape[-1] == filters
    act = _blocks.batch_norm(x, name=f"{name}_bn1")
    act = _blocks.relu(act, name=f"{name}_relu1")
    out = _blocks.conv(act, filters, 3, strides, name=f"{name}_conv1")
    out = _blocks.batch_norm(out, name=f"{name}_bn2")
    out = _blocks.relu(out, name=f"{name}_relu2")
    if dropout_rate > 0:
        out = keras.layers.Dropout(dropout_rate, name=f"{name}_dropout")(out)
    out = _blocks.conv(out, filters, 3, 1, name=f"{name}_conv2")
    if equal_in_out:
        if strides != 1:
            raise ValueError("an identity shortcut cannot change the stride")
        shortcut = x
    else:
        shortcut = _blocks.conv(act, filters, 1, strides, name=f"{name}_shortcut_conv")
    return keras.layers.Add(name=f"{name}_add")([out, shortcut])


def wide_resnet_backbone(x, depth, widen_factor, dropout_rate=0.0):
    """Backbone of WRN-depth-widen_factor.

    Args:
        x: normalised images ``[B, H, W, 3]``.
        depth: ``6n + 4`` (16, 28, 34, 40, ...).
        widen_factor: width multiplier k.
        dropout_rate: dropout between the two convolutions of each block
            (0 in ARD/TRADES/RepDistiller).

    Returns:
        The feature map after the final BN-ReLU, ``[B, H/4, W/4, 64k]``.

    Reference:
        Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
    """
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ValueError(f"WRN depth must be 6n+4 >= 10, got {depth}")
    if not 0.0 <= float(dropout_rate) < 1.0:
        raise ConfigError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")
    n = (depth - 4) // 6
    widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    x = _blocks.conv(x, 16, 3, 1, name="stem_conv")
    for stage, (width, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
        for block in range(1, n + 1):
            x = _preact_block(
                x,
                width,
                stride if block == 1 else 1,
                float(dropout_rate),
                name=f"stage{stage}_block{block}",
            )
    x = _blocks.batch_norm(x, name="final_bn")
    return _blocks.relu(x, name="final_relu")


def _register(depth, widen_factor):
    name = f"wrn_{depth}_{widen_factor}"

    def backbone(x, dropout_rate=0.0):
        return wide_resnet_backbone(x, depth, widen_factor, dropout_rate)

    backbone.__name__ = name
    backbone.__doc__ = (
        f"WRN-{depth}-{widen_factor} (Zagoruyko & Komodakis 2016): "
        f"{(depth - 4) // 6} pre-activation blocks per stage, "
        f"{64 * widen_factor}-D features. Option: dropout_rate (default 0)."
    )
    MODELS.register(name)(backbone)
    return backbone


wrn_16_2 = _register(16, 2)
wrn_34_2 = _register(34, 2)
wrn_34_10 = _register(34, 10)
wrn_40_2 = _register(40, 2)
