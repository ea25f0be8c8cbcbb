"""PyTorch (RobustBench) checkpoints as exact Keras models.

:func:`import_torch_model` builds the zoo architecture that computes the same
function as a RobustBench PyTorch class and fills it from the class's
state_dict:

==================================  =============================================
gacd_tf name                        RobustBench PyTorch class
==================================  =============================================
``wrn_28_10``, ``wrn_34_10``,       ``WideResNet(depth, widen_factor)``
``wrn_34_15``, ``wrn_34_20``,       (``wide_resnet.py``; ``sub_block1=True``
``wrn_70_16`` (and ``wrn_16_2``...) checkpoints accepted)
``dm_wrn_28_10``, ``dm_wrn_34_20``, ``DMWideResNet(depth, width, Swish)``
``dm_wrn_70_16``                    (``dm_wide_resnet.py``)
``dm_preact_resnet18``              ``DMPreActResNet(depth=18, Swish)``
``preact_resnet18``                 ``PreActResNet(PreActBlock, [2, 2, 2, 2])``
``resnet18``, ``resnet34``          ``ResNet(BasicBlock, ...)`` / ``ResNet18()``
==================================  =============================================

Weights are converted as PyTorch stores them: convolution kernels OIHW ->
HWIO, linear weights transposed, batch norm weight/bias/running_mean/
running_var -> gamma/beta/moving_mean/moving_variance (``num_batches_tracked``
is dropped). Every model pools globally before its last layer, so no flatten
order has to be converted. The input normalisation goes in the model's
``normalize`` layer: none for RobustBench's ``WideResNet``, ``ResNet`` and
``PreActResNet`` (they take raw [0, 1] pixels), DeepMind's CIFAR mean/std for
the ``dm_*`` models, or the checkpoint's own ``mu``/``sigma`` buffers when it
has them (e.g. ``Rice2020Overfitting``).

Only this module and :mod:`gacd_tf.models.torch_checkpoint` deal with
PyTorch, and torch itself is imported lazily there, for ``.pt`` files only.
"""

import collections
import re

import numpy as np

from gacd_tf.errors import ConfigError, ModelError
from gacd_tf.models.dm_wide_resnet import (
    DM_CIFAR10_MEAN,
    DM_CIFAR10_STD,
    DM_CIFAR100_MEAN,
    DM_CIFAR100_STD,
)
from gacd_tf.models.registry import IDENTITY_MEAN, IDENTITY_STD, MODELS, build_model
from gacd_tf.models.torch_checkpoint import read_state_dict, unwrap_state_dict

_BLOCK = r"stage(\d+)_block(\d+)_"

# Keras layer name -> PyTorch module path, per family: (regex, template) pairs;
# templates see the regex groups as {s} (stage, from 1) and {b} (block, from 1).
_RULES = {
    "resnet": [
        ("stem_conv", "conv1"), ("stem_bn", "bn1"),
        (_BLOCK + r"(1|2)_(conv|bn)", "layer{s}.{b0}.{g4}{g3}"),
        (_BLOCK + "shortcut_conv", "layer{s}.{b0}.shortcut.0"),
        (_BLOCK + "shortcut_bn", "layer{s}.{b0}.shortcut.1"),
        ("logits", "linear"),
    ],
    "wide_resnet": [
        ("stem_conv", "conv1"),
        (_BLOCK + r"(bn1|conv1|bn2|conv2)", "block{s}.layer.{b0}.{g3}"),
        (_BLOCK + "shortcut_conv", "block{s}.layer.{b0}.convShortcut"),
        ("final_bn", "bn1"), ("logits", "fc"),
    ],
    "preact_resnet": [
        ("stem_conv", "conv1"),
        (_BLOCK + r"(bn1|conv1|bn2|conv2)", "layer{s}.{b0}.{g3}"),
        (_BLOCK + "shortcut_conv", "layer{s}.{b0}.shortcut.0"),
        ("final_bn", "bn"), ("logits", "linear"),
    ],
    "dm_wide_resnet": [
        ("stem_conv", "init_conv"),
        (_BLOCK + r"bn(0|1)", "layer.{s0}.block.{b0}.batchnorm_{g3}"),
        (_BLOCK + r"conv(0|1)", "layer.{s0}.block.{b0}.conv_{g3}"),
        (_BLOCK + "shortcut_conv", "layer.{s0}.block.{b0}.shortcut"),
        ("final_bn", "batchnorm"), ("logits", "logits"),
    ],
    "dm_preact_resnet": [
        ("stem_conv", "conv_2d"),
        (_BLOCK + r"bn(0|1)", "layer_{s0}.{b0}.batchnorm_{g3}"),
        (_BLOCK + r"conv(1|2)", "layer_{s0}.{b0}.conv_2d_{g3}"),
        (_BLOCK + "shortcut_conv", "layer_{s0}.{b0}.shortcut"),
        ("final_bn", "batchnorm"), ("logits", "logits"),
    ],
}

# Keys a checkpoint may hold that the Keras model has no weight for: the
# unused sub_block1 of RobustBench's WideResNet, batch-norm step counters.
_IGNORED = {"wide_resnet": (r"sub_block1\..*",)}
_ALWAYS_IGNORED = (r".*\.num_batches_tracked",)
# Normalisation buffers some checkpoints carry (Rice2020Overfitting: mu/sigma).
_NORMALIZATION_KEYS = (("mu", "sigma"), ("mean", "std"))


def family(arch):
    """The PyTorch layout family of zoo architecture ``arch``, or None.

    Args:
        arch: a registered architecture name.

    Returns:
        ``"resnet"``, ``"wide_resnet"``, ``"preact_resnet"``,
        ``"dm_wide_resnet"``, ``"dm_preact_resnet"``, or None for zoo models
        with no RobustBench counterpart (``resnet20``, ``mobilenetv2``, ...).

    Example:
    >>> from gacd_tf.models.torch_import import family
    >>> family("wrn_34_10"), family("dm_wrn_70_16"), family("resnet20")
    ('wide_resnet', 'dm_wide_resnet', None)
    """
    if arch in ("resnet18", "resnet34"):
        return "resnet"
    if arch == "preact_resnet18":
        return "preact_resnet"
    if arch == "dm_preact_resnet18":
        return "dm_preact_resnet"
    if re.fullmatch(r"dm_wrn_\d+_\d+", arch or ""):
        return "dm_wide_resnet"
    if re.fullmatch(r"wrn_\d+_\d+", arch or ""):
        return "wide_resnet"
    return None


def importable_architectures():
    """The registered architectures a PyTorch checkpoint can be imported into.

    Example:
    >>> from gacd_tf.models.torch_import import importable_architectures
    >>> "dm_wrn_70_16" in importable_architectures()
    True
    """
    return [name for name in MODELS.names() if family(name) is not None]


def _check_arch(arch):
    if not isinstance(arch, str) or arch not in MODELS.names():
        raise ConfigError(f"arch={arch}: unknown architecture; choose one of: "
                          f"{', '.join(importable_architectures())}").on("arch")
    if family(arch) is None:
        raise ConfigError(f"arch={arch}: no PyTorch (RobustBench) layout is known for it; "
                          f"choose one of: {', '.join(importable_architectures())}"
                          ).on("arch")
    return family(arch)


def torch_module_path(arch, layer_name):
    """The PyTorch module path of Keras layer ``layer_name`` of ``arch``, or None.

    Example:
    >>> from gacd_tf.models.torch_import import torch_module_path
    >>> torch_module_path("wrn_34_10", "stage2_block1_shortcut_conv")
    'block2.layer.0.convShortcut'
    >>> torch_module_path("dm_wrn_70_16", "stage1_block3_bn1")
    'layer.0.block.2.batchnorm_1'
    """
    for pattern, template in _RULES[_check_arch(arch)]:
        match = re.fullmatch(pattern, layer_name)
        if match:
            groups = match.groups()
            fields = {f"g{i}": g for i, g in enumerate(groups, start=1)}
            if len(groups) >= 2:
                stage, block = int(groups[0]), int(groups[1])
                fields.update(s=stage, s0=stage - 1, b=block, b0=block - 1)
            return template.format(**fields)
    return None


def _torch_entries(layer, path):
    """[(torch key, keras weight index, torch shape, converter)] of one Keras layer."""
    kind = type(layer).__name__
    weights = layer.get_weights()
    if kind in ("Conv2D",):
        kernel = weights[0]
        entries = [(f"{path}.weight", 0, tuple(kernel.shape[i] for i in (3, 2, 0, 1)),
                    lambda a: np.transpose(a, (2, 3, 1, 0)))]
        if layer.use_bias:
            entries.append((f"{path}.bias", 1, tuple(weights[1].shape), lambda a: a))
        return entries
    if kind == "Dense":
        entries = [(f"{path}.weight", 0, tuple(weights[0].shape[::-1]), lambda a: a.T)]
        if layer.use_bias:
            entries.append((f"{path}.bias", 1, tuple(weights[1].shape), lambda a: a))
        return entries
    if kind == "BatchNormalization":
        shape = tuple(weights[0].shape)
        return [(f"{path}.{key}", index, shape, lambda a: a) for index, key in
                enumerate(("weight", "bias", "running_mean", "running_var"))]
    raise ModelError(f"layer {layer.name!r} ({kind}) has no PyTorch conversion")


def _logits_key(fam):
    return dict(_RULES[fam])["logits"] + ".weight"


def _normalization(state, fam, num_classes, mean, std, source):
    """(mean, std, the state's normalisation keys) for the model's normalize layer."""
    for mean_key, std_key in _NORMALIZATION_KEYS:
        if mean_key in state and std_key in state:
            found = []
            for key in (mean_key, std_key):
                values = np.asarray(state[key], np.float64).reshape(-1)
                if values.size != 3:
                    raise ModelError(f"{source}: key {key!r} has shape "
                                     f"{tuple(state[key].shape)}, expected 3 per-channel "
                                     f"values (a normalisation buffer)")
                found.append(tuple(float(v) for v in values))
            if mean is None and std is None:
                mean, std = found
            return mean, std, {mean_key, std_key}
    if mean is None and std is None:
        if fam.startswith("dm_"):
            mean, std = ((DM_CIFAR100_MEAN, DM_CIFAR100_STD) if num_classes == 100
                         else (DM_CIFAR10_MEAN, DM_CIFAR10_STD))
        else:
            mean, std = IDENTITY_MEAN, IDENTITY_STD
    elif mean is None or std is None:
        raise ConfigError("give both mean and std, or neither (the architecture's own)")
    return mean, std, set()


def load_state_dict_into(model, arch, state_dict, source="the checkpoint"):
    """Copies a RobustBench state_dict into a zoo model of architecture ``arch``, exactly.

    Every weight of ``model`` must find its key, with PyTorch's shape for it;
    every key of ``state_dict`` must be used, except ``num_batches_tracked``,
    the unused ``sub_block1`` of RobustBench's ``WideResNet`` and the
    normalisation buffers (``mu``/``sigma``, ``mean``/``std``), which
    :func:`import_torch_model` puts in the ``normalize`` layer.

    Args:
        model: a model built by ``build_model(arch, ...)``.
        arch: its architecture name (:func:`importable_architectures`).
        state_dict: the checkpoint's state_dict (key -> array or tensor; a
            wrapper and ``module.``/``model.`` prefixes are accepted).
        source: how messages name the checkpoint (e.g. its path).

    Returns:
        ``model``, its weights replaced.

    Raises:
        ModelError: the first missing key (in the model's order), the first
            unexpected key (in the checkpoint's order) or the first key of the
            wrong shape, each named with what was expected.

    Example:
    >>> from gacd_tf.models import build_model
    >>> from gacd_tf.models.torch_import import load_state_dict_into
    >>> # load_state_dict_into(build_model("wrn_34_10"), "wrn_34_10", state_dict)

    Reference:
        PyTorch ``nn.Module.load_state_dict(strict=True)``, whose checks this
        reproduces.
    """
    fam = _check_arch(arch)
    state = unwrap_state_dict(state_dict, source)
    plan = collections.OrderedDict()
    for layer in model.layers:
        if not layer.weights or layer.name == "normalize":
            continue
        path = torch_module_path(arch, layer.name)
        if path is None:
            raise ModelError(f"layer {layer.name!r} of model {model.name!r} has no PyTorch "
                             f"counterpart in the {fam} layout; was the model built with "
                             f"build_model({arch!r})?")
        for key, index, shape, convert in _torch_entries(layer, path):
            plan[key] = (layer, index, shape, convert)
    hint = f"does arch={arch} match the checkpoint?"
    missing = [key for key in plan if key not in state]
    if missing:
        raise ModelError(f"{source}: key {missing[0]!r} is missing ({len(missing)} missing "
                         f"in all); {hint}").on("checkpoint", "arch")
    ignored = _IGNORED.get(fam, ()) + _ALWAYS_IGNORED
    normalization = {k for pair in _NORMALIZATION_KEYS for k in pair}
    unexpected = [key for key in state if key not in plan and key not in normalization
                  and not any(re.fullmatch(p, key) for p in ignored)]
    if unexpected:
        raise ModelError(f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} "
                         f"unexpected in all); {hint}").on("checkpoint", "arch")
    new_weights = {}
    for key, (layer, index, shape, convert) in plan.items():
        value = state[key]
        if tuple(value.shape) != shape:
            raise ModelError(f"{source}: key {key!r} has shape {tuple(value.shape)}, but "
                             f"{arch} needs {shape}; {hint}").on("checkpoint", "arch")
        new_weights.setdefault(layer.name, (layer, layer.get_weights()))[1][index] = (
            np.asarray(convert(value), np.float32))
    for layer, weights in new_weights.values():
        layer.set_weights(weights)
    return model


def import_torch_model(checkpoint, arch, num_classes=None, mean=None, std=None,
                       input_shape=(32, 32, 3), **options):
    """A Keras zoo model computing the same function as a RobustBench PyTorch checkpoint.

    Args:
        checkpoint: path of a ``.pt``/``.pth`` (read with
            ``torch.load(weights_only=True)``: no code in it runs) or
            ``.safetensors`` file, or a state_dict already in memory.
        arch: the architecture (:func:`importable_architectures`; the table
            in this module's docstring gives the PyTorch class of each).
        num_classes: the class count; None reads it from the checkpoint's
            last layer (a given count must agree with it).
        mean, std: the normalisation inside the model; None uses the
            checkpoint's ``mu``/``sigma`` buffers if it has them, else the
            architecture's own (DeepMind's CIFAR-10 statistics, CIFAR-100's
            for 100 classes, for ``dm_*``; none for the others).
        input_shape: ``(height, width, 3)``.
        **options: architecture options for :func:`build_model` (e.g.
            ``depth`` and ``widen_factor`` of the wide ResNets, ``activation``
            of the ``dm_*`` models, ``bn_before_fc`` of ``preact_resnet18``).

    Returns:
        A functional ``keras.Model`` from [0, 1] images to logits, with a
        ``features`` layer, that saves as ``.keras`` and works as a teacher or
        a student in every method.

    Raises:
        ModelError: unreadable checkpoint, missing, unexpected or misshaped
            key, or a class count that disagrees with it.
        ConfigError: unknown or non-importable ``arch``.

    Example:
    >>> from gacd_tf.models.torch_import import import_torch_model
    >>> # teacher = import_torch_model("Zhang2019Theoretically.pt", "wrn_34_10")
    >>> # teacher.save("teacher.keras")

    Reference:
        Croce et al., "RobustBench: a standardized adversarial robustness
        benchmark", NeurIPS 2021 Datasets and Benchmarks.
    """
    fam = _check_arch(arch)
    if isinstance(checkpoint, collections.abc.Mapping):
        source = "the checkpoint"
        state = unwrap_state_dict(checkpoint, source)
    else:
        source = f"checkpoint={checkpoint}"
        state = read_state_dict(checkpoint)
    logits_key = _logits_key(fam)
    if logits_key not in state:
        raise ModelError(f"{source}: key {logits_key!r} (the last layer of {arch}) is "
                         f"missing; does arch={arch} match the checkpoint?"
                         ).on("checkpoint", "arch")
    found = int(state[logits_key].shape[0])
    if num_classes is not None and num_classes != found:
        raise ModelError(f"num_classes={num_classes}, but {source} has {found} classes "
                         f"(key {logits_key!r} has shape {tuple(state[logits_key].shape)})"
                         ).on("num_classes", "checkpoint")
    mean, std, _ = _normalization(state, fam, found, mean, std, source)
    model = build_model(arch, num_classes=found, input_shape=input_shape, mean=mean, std=std,
                        **options)
    return load_state_dict_into(model, arch, state, source)
