"""RobustBench's Wide ResNets: wrn_28_10, wrn_34_15, wrn_34_20, wrn_70_16.

RobustBench's ``WideResNet`` (``robustbench/model_zoo/architectures/
wide_resnet.py``, after TRADES) has exactly the layout of the zoo's
``wrn_34_10`` (:mod:`gacd_tf.models.wide_resnet`): a 16-channel 3x3 stem
without batch norm, three stages of pre-activation blocks whose 1x1 shortcut
(when the width changes) sees the activated input, PyTorch's symmetric
``padding=1``, a final BN-ReLU, global average pooling and a biased linear
layer. This module registers the other depths and widths of RobustBench's
CIFAR zoo with the same backbone, so one checkpoint layout serves every
``wrn_D_K`` name. RobustBench's ``WideResNet`` does not normalise its input:
an imported model is built with ``IDENTITY_MEAN`` / ``IDENTITY_STD``
(:func:`gacd_tf.models.torch_import.import_torch_model` does it).

``sub_block1=True`` checkpoints hold the weights of a block that the PyTorch
forward pass never runs; the importer accepts and drops them.

Reference:
    Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016; Zhang et al.,
    "Theoretically Principled Trade-off between Robustness and Accuracy"
    (TRADES), ICML 2019; Croce et al., "RobustBench", NeurIPS 2021 D&B.
"""

from gacd_tf.models.registry import MODELS
from gacd_tf.models.wide_resnet import wide_resnet_backbone


def _register(depth, widen_factor):
    name = f"wrn_{depth}_{widen_factor}"

    def backbone(x, dropout_rate=0.0, depth=depth, widen_factor=widen_factor):
        return wide_resnet_backbone(x, depth, widen_factor, dropout_rate)

    backbone.__name__ = name
    backbone.__doc__ = (
        f"WRN-{depth}-{widen_factor}, RobustBench's WideResNet layout "
        f"({64 * widen_factor}-D features). Options: dropout_rate (default 0); "
        f"depth and widen_factor (defaults {depth}, {widen_factor}; smaller "
        f"values build the same layout in miniature, e.g. for tests)."
    )
    MODELS.register(name)(backbone)
    return backbone


wrn_28_10 = _register(28, 10)
wrn_34_15 = _register(34, 15)
wrn_34_20 = _register(34, 20)
wrn_70_16 = _register(70, 16)
