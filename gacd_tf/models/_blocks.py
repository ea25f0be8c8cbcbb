"""Layer helpers shared by every architecture family of the model zoo.

Private module: the architecture files (``resnet_cifar.py``, ``resnet.py``,
``wide_resnet.py``, ``mobilenetv2.py``) build their graphs with these helpers
so that initialisation, padding and batch-norm settings are the same
everywhere and match the PyTorch reference code (RepDistiller, ARD, TRADES):

* convolutions have no bias and He-normal ("kaiming_normal_", ``mode="fan_out"``)
  kernels, with fans computed the way PyTorch computes them;
* 3x3 convolutions with stride > 1 pad explicitly by ``k // 2`` on every side,
  exactly like PyTorch's ``padding=1`` (Keras ``padding="same"`` would pad
  only bottom/right for stride 2 and shift the sampling grid by one pixel,
  which matters when porting PyTorch weights);
* batch normalisation uses PyTorch's defaults (momentum 0.1, i.e. Keras
  ``momentum=0.9``, and ``epsilon=1e-5``).
"""

import keras

BN_MOMENTUM = 0.9  # PyTorch BatchNorm2d momentum=0.1
BN_EPSILON = 1e-5  # PyTorch BatchNorm2d eps


def conv_initializer():
    """He-normal initialiser for regular convolutions (PyTorch ``fan_out``).

    Keras and PyTorch agree on ``fan_out = out_channels * kh * kw`` for a
    regular convolution kernel.
    """
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def depthwise_initializer():
    """He-normal initialiser for depthwise kernels, matching PyTorch ``fan_out``.

    PyTorch stores a depthwise kernel as ``[C, 1, kh, kw]`` so its ``fan_out``
    is ``C * kh * kw``; Keras stores it as ``[kh, kw, C, 1]`` and calls that
    quantity ``fan_in``. Hence ``mode="fan_in"`` here gives the same std.
    """
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_in", distribution="untruncated_normal"
    )


def dense_initializer():
    """PyTorch ``nn.Linear`` default kernel init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


def _pad_for_stride(x, kernel_size, strides, name):
    """Returns (x, padding) reproducing PyTorch's symmetric ``padding=k//2``."""
    if kernel_size == 1:
        return x, "valid"
    if strides == 1:
        return x, "same"
    pad = kernel_size // 2
    x = keras.layers.ZeroPadding2D(padding=pad, name=f"{name}_pad")(x)
    return x, "valid"


def conv(x, filters, kernel_size=3, strides=1, name=None):
    """Bias-free 2-D convolution with PyTorch padding and He-normal init.

    Args:
        x: 4-D input tensor ``[B, H, W, C]``.
        filters: number of output channels.
        kernel_size: odd square kernel size (1 or 3 in the zoo).
        strides: 1 or 2.
        name: layer name (required: the zoo uses stable, readable names).

    Returns:
        The output tensor.
    """
    x, padding = _pad_for_stride(x, kernel_size, strides, name)
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=conv_initializer(),
        name=name,
    )(x)


def depthwise_conv(x, kernel_size=3, strides=1, name=None):
    """Bias-free depthwise convolution (depth multiplier 1), PyTorch padding."""
    x, padding = _pad_for_stride(x, kernel_size, strides, name)
    return keras.layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        depthwise_initializer=depthwise_initializer(),
        name=name,
    )(x)


def batch_norm(x, name):
    """Batch normalisation with PyTorch defaults (gamma 1, beta 0).

    ``synchronized=True``: under ``tf.distribute`` the batch statistics are
    those of the global batch, so N replicas train exactly like one device
    (a no-op on one device).
    """
    return keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=True, name=name
    )(x)


def relu(x, name):
    """ReLU activation layer."""
    return keras.layers.ReLU(name=name)(x)


def conv_bn(x, filters, kernel_size=3, strides=1, name=None, activation=True):
    """conv -> batch norm [-> ReLU]; layers named ``{name}_conv/_bn/_relu``."""
    x = conv(x, filters, kernel_size, strides, name=f"{name}_conv")
    x = batch_norm(x, name=f"{name}_bn")
    if activation:
        x = relu(x, name=f"{name}_relu")
    return x


def basic_block(x, filters, strides, name):
    """Post-activation ResNet BasicBlock (He et al. 2016), as in RepDistiller.

    ``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))`` where the
    shortcut is the identity, or a 1x1 convolution + BN ("option B") when the
    stride or the width changes.

    Args:
        x: input tensor.
        filters: output channels.
        strides: stride of the first 3x3 convolution (1 or 2).
        name: prefix of the block's layer names.

    Returns:
        The block's output tensor.

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """
    in_channels = x.shape[-1]
    out = conv_bn(x, filters, 3, strides, name=f"{name}_1")
    out = conv_bn(out, filters, 3, 1, name=f"{name}_2", activation=False)
    if strides != 1 or in_channels != filters:
        shortcut = conv_bn(
            x, filters, 1, strides, name=f"{name}_shortcut", activation=False
        )
    else:
        shortcut = x
    out = keras.layers.Add(name=f"{name}_add")([out, shortcut])
    return relu(out, name=f"{name}_out")


def resnet_stages(x, widths, blocks_per_stage, first_strides, name="stage"):
    """Stacks BasicBlock stages; the first block of stage i uses ``first_strides[i]``.

    Args:
        x: input tensor (after the stem).
        widths: output channels of each stage.
        blocks_per_stage: number of BasicBlocks in each stage.
        first_strides: stride of the first block of each stage.
        name: layer name prefix; blocks are named ``{name}{i}_block{j}``.

    Returns:
        The last stage's output tensor.
    """
    for stage, (width, blocks, stride) in enumerate(
        zip(widths, blocks_per_stage, first_strides), start=1
    ):
        for block in range(1, blocks + 1):
            x = basic_block(
                x,
                width,
                stride if block == 1 else 1,
                name=f"{name}{stage}_block{block}",
            )
    return x
