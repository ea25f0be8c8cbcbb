"""Model zoo: CIFAR ResNets, ResNet-18/34, Wide ResNets and MobileNetV2.

Every model takes float32 images ``[B, H, W, 3]`` in ``[0, 1]``, normalises
them in its first layer, and outputs logits; its penultimate features are the
layer named ``"features"``. See :mod:`gacd_tf.models.interface`.

Example:
>>> from gacd_tf.models import build_model, features_and_logits, model_names
>>> model = build_model("wrn_16_2", num_classes=100)
>>> both = features_and_logits(model)  # images -> [features, logits]
"""

from gacd_tf.models.interface import feature_dim, features_and_logits, num_classes
from gacd_tf.models.registry import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    FEATURES_NAME,
    IDENTITY_MEAN,
    IDENTITY_STD,
    INPUT_NAME,
    LOGITS_NAME,
    MODELS,
    NORMALIZATION_NAME,
    build_model,
    model_names,
)

# Importing the architecture modules registers their names in MODELS.
from gacd_tf.models import mobilenetv2, resnet, resnet_cifar, wide_resnet  # noqa: E402,F401
# RobustBench's architectures (docs/models.md, docs/robustbench.md).
from gacd_tf.models import (  # noqa: E402,F401
    dm_preact_resnet, dm_wide_resnet, preact_resnet, robustbench_wide_resnet)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "FEATURES_NAME",
    "IDENTITY_MEAN",
    "IDENTITY_STD",
    "INPUT_NAME",
    "LOGITS_NAME",
    "MODELS",
    "NORMALIZATION_NAME",
    "build_model",
    "feature_dim",
    "features_and_logits",
    "model_names",
    "num_classes",
]
