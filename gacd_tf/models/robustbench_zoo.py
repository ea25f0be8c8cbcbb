"""RobustBench's model list, read without importing RobustBench.

RobustBench 1.1.1 as installed from the package index cannot be imported
(its ``__init__`` needs ``pkg_resources``, gone from setuptools 81, and
``autoattack``, which is only on GitHub). Its model lists
(``robustbench/model_zoo/cifar10.py``, ``cifar100.py``) are plain Python,
so :func:`resolve_robustbench_model` *parses* them (``ast``: nothing in them
runs) and maps an entry's ``'model': lambda: WideResNet(depth=34, ...)`` to the
zoo architecture and options that compute the same function, and its
``gdrive_id`` to the file RobustBench would download.

Only entries built by a ``lambda`` calling one of RobustBench's classes that
gacd_tf mirrors are resolved (``WideResNet``, ``DMWideResNet``,
``DMPreActResNet``, ``PreActResNet``, ``ResNet``, ``ResNet18``); entries with a
class of their own (e.g. ``Rice2020Overfitting``, which normalises in its
``forward``) are refused by name rather than imported with a wrong input
normalisation.
"""

import ast
import importlib.util
import os

from gacd_tf.errors import ConfigError, ModelError
from gacd_tf.models.dm_wide_resnet import (
    DM_CIFAR10_MEAN,
    DM_CIFAR10_STD,
    DM_CIFAR100_MEAN,
    DM_CIFAR100_STD,
)
from gacd_tf.models.registry import MODELS

DATASETS = ("cifar10", "cifar100")
THREAT_MODELS = {"Linf": "linf", "L2": "l2", "corruptions": "common_corruptions"}
GDRIVE_URL = "https://drive.google.com/uc?id={}"
_DM_STATS = {"CIFAR10_MEAN": DM_CIFAR10_MEAN, "CIFAR10_STD": DM_CIFAR10_STD,
             "CIFAR100_MEAN": DM_CIFAR100_MEAN, "CIFAR100_STD": DM_CIFAR100_STD}
_SWISH = ("Swish", "nn.SiLU", "SiLU")
_SIGNATURES = {  # positional parameters of RobustBench's constructors
    "WideResNet": ("depth", "num_classes", "widen_factor", "sub_block1", "dropRate",
                   "bias_last"),
    "DMWideResNet": ("num_classes", "depth", "width", "activation_fn", "mean", "std",
                     "padding"),
    "DMPreActResNet": ("num_classes", "depth", "width", "activation_fn", "mean", "std",
                       "padding"),
    "PreActResNet": ("block", "num_blocks", "num_classes", "bn_before_fc", "out_shortcut"),
    "ResNet": ("block", "num_blocks", "num_classes"),
    "ResNet18": (),
}


def robustbench_source_dir():
    """The folder of the installed ``robustbench`` package, found without importing it.

    Returns:
        The path, or None when robustbench is not installed (``pip install
        "gacd_tf[torch]"``, or ``pip install --no-deps robustbench``).

    Example:
    >>> from gacd_tf.models.robustbench_zoo import robustbench_source_dir
    >>> folder = robustbench_source_dir()  # None without robustbench
    """
    try:
        spec = importlib.util.find_spec("robustbench")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(spec.submodule_search_locations))


def _source(node):
    return ast.unparse(node)


def _value(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _source(node)


def _entries(path, threat_model):
    """{entry name: its dict node} of the threat model's OrderedDict in ``path``."""
    variable = THREAT_MODELS[threat_model]
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read(), filename=path)
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == variable
                and isinstance(node.value, ast.Call) and node.value.args
                and isinstance(node.value.args[0], ast.List)):
            entries = {}
            for item in node.value.args[0].elts:
                if (isinstance(item, ast.Tuple) and len(item.elts) == 2
                        and isinstance(item.elts[0], ast.Constant)
                        and isinstance(item.elts[1], ast.Dict)):
                    entries[item.elts[0].value] = item.elts[1]
            return entries
    raise ModelError(f"RobustBench has no {threat_model} model list in {path}").on("threat_model")


def _call_arguments(call, name):
    arguments = dict(zip(_SIGNATURES[name], call.args))
    arguments.update({k.arg: k.value for k in call.keywords})
    return {key: _value(node) for key, node in arguments.items()}


def _sized(prefix, depth, width, options):
    """The registered name of a wide ResNet, or a registered one given depth/width options."""
    if not (isinstance(depth, int) and isinstance(width, int)):
        return None
    name = f"{prefix}_{depth}_{width}"
    if name in MODELS.names():
        return name
    options.update(depth=depth, widen_factor=width, model_name=name)
    return f"{prefix}_28_10"


def _arch_of(call, dataset_classes):
    """(arch, num_classes, build options, mean, std) for a RobustBench constructor call."""
    name = _source(call.func).split(".")[-1]
    if name not in _SIGNATURES:
        return None
    args = _call_arguments(call, name)
    classes = int(args.get("num_classes", 10))
    options, mean, std = {}, None, None
    if name == "WideResNet":
        if args.get("bias_last", True) is not True or args.get("dropRate", 0.0) not in (0, 0.0):
            return None
        arch = _sized("wrn", args.get("depth", 28), args.get("widen_factor", 10), options)
    elif name in ("DMWideResNet", "DMPreActResNet"):
        if args.get("padding", 0) not in (0,):
            return None
        activation = args.get("activation_fn", "nn.ReLU")
        options["activation"] = "swish" if activation in _SWISH else (
            "relu" if activation in ("nn.ReLU", "ReLU") else None)
        if options["activation"] is None:
            return None
        default = "CIFAR100" if dataset_classes == 100 else "CIFAR10"
        mean = _DM_STATS.get(args.get("mean", f"{default}_MEAN"), args.get("mean"))
        std = _DM_STATS.get(args.get("std", f"{default}_STD"), args.get("std"))
        if not all(isinstance(v, tuple) for v in (mean, std)):
            return None
        if name == "DMWideResNet":
            arch = _sized("dm_wrn", args.get("depth", 28), args.get("width", 10), options)
        else:
            arch = "dm_preact_resnet18" if args.get("depth", 18) == 18 else None
    elif name == "PreActResNet":
        if args.get("num_blocks") != [2, 2, 2, 2]:
            return None
        block = args.get("block")
        if block not in ("PreActBlock", "PreActBlockV2"):
            return None
        arch = "preact_resnet18"
        options["bn_before_fc"] = bool(args.get("bn_before_fc", False))
        options["out_shortcut"] = block == "PreActBlockV2" or bool(
            args.get("out_shortcut", False))
    elif name == "ResNet":
        arch = {"[2, 2, 2, 2]": "resnet18", "[3, 4, 6, 3]": "resnet34"}.get(
            str(args.get("num_blocks")))
        if args.get("block") != "BasicBlock":
            arch = None
    else:  # ResNet18()
        arch = "resnet18"
    if arch is None or arch not in MODELS.names():
        return None
    return arch, classes, options, mean, std


def resolve_robustbench_model(name, dataset="cifar10", threat_model="Linf", source_dir=None):
    """The zoo architecture and checkpoint file of a RobustBench model.

    Args:
        name: a RobustBench model name, e.g. ``"Zhang2019Theoretically"``.
        dataset: ``"cifar10"`` or ``"cifar100"``.
        threat_model: ``"Linf"``, ``"L2"`` or ``"corruptions"``.
        source_dir: the robustbench package folder; None finds the installed
            one (:func:`robustbench_source_dir`).

    Returns:
        dict with ``arch``, ``num_classes``, ``options`` (for
        :func:`gacd_tf.models.torch_import.import_torch_model`; a depth or
        width without a registered name, e.g. DeepMind's WRN-106-16, is
        ``dm_wrn_28_10`` with ``depth``, ``widen_factor`` and ``model_name``
        options), ``mean`` and
        ``std`` (None: the architecture's own), ``definition`` (the entry's
        PyTorch constructor, as written in RobustBench), ``gdrive_id``,
        ``url`` and ``relative_path`` (``cifar10/Linf/NAME.pt``: where
        RobustBench's ``load_model`` keeps it under its ``model_dir``).

    Raises:
        ConfigError: bad ``dataset`` or ``threat_model``.
        ModelError: robustbench not installed, an unknown model name, or an
            entry whose architecture gacd_tf does not mirror.

    Example:
    >>> from gacd_tf.models.robustbench_zoo import resolve_robustbench_model
    >>> # resolve_robustbench_model("Zhang2019Theoretically")["arch"] -> 'wrn_34_10'

    Reference:
        Croce et al., "RobustBench", NeurIPS 2021 Datasets and Benchmarks.
    """
    if dataset not in DATASETS:
        raise ConfigError(f"dataset={dataset}: RobustBench models are resolved for "
                          f"{', '.join(DATASETS)}").on("dataset")
    if threat_model not in THREAT_MODELS:
        raise ConfigError(f"threat_model={threat_model}: choose one of: "
                          f"{', '.join(THREAT_MODELS)}").on("threat_model")
    source_dir = source_dir or robustbench_source_dir()
    if source_dir is None:
        raise ModelError(
            f"model_name={name}: resolving a RobustBench name needs the robustbench package "
            f'(its model lists are read, not imported): pip install "gacd_tf[torch]" or '
            f"pip install --no-deps robustbench==1.1.1; or pass the checkpoint and the "
            f"architecture yourself").on("model_name")
    path = os.path.join(source_dir, "model_zoo", f"{dataset}.py")
    if not os.path.isfile(path):
        raise ModelError(f"{path} does not exist: is robustbench 1.1 installed?")
    entries = _entries(path, threat_model)
    if name not in entries:
        raise ModelError(f"model_name={name}: not in RobustBench's {dataset} {threat_model} "
                         f"list ({len(entries)} models, e.g. "
                         f"{', '.join(list(entries)[:3])})").on("model_name")
    fields = {_value(k): v for k, v in zip(entries[name].keys, entries[name].values)}
    model = fields.get("model")
    definition = _source(model) if model is not None else "?"
    resolved = None
    if isinstance(model, ast.Lambda) and isinstance(model.body, ast.Call):
        definition = _source(model.body)
        resolved = _arch_of(model.body, 100 if dataset == "cifar100" else 10)
    elif isinstance(model, ast.Name) and model.id == "ResNet18":  # the class itself
        resolved = _arch_of(ast.Call(func=model, args=[], keywords=[]), 10)
    if resolved is None:
        raise ModelError(
            f"model_name={name}: its RobustBench architecture ({definition}) has no exact "
            f"Keras counterpart in gacd_tf; importable: WideResNet, DMWideResNet, "
            f"DMPreActResNet-18, PreActResNet-18 and ResNet-18/34 entries").on("model_name")
    gdrive_id = _value(fields["gdrive_id"]) if "gdrive_id" in fields else None
    if not isinstance(gdrive_id, str):
        raise ModelError(f"model_name={name}: RobustBench has no single checkpoint file for "
                         f"it (gdrive_id={gdrive_id!r})").on("model_name")
    arch, classes, options, mean, std = resolved
    return {"arch": arch, "num_classes": classes, "options": options, "mean": mean,
            "std": std, "definition": definition, "gdrive_id": gdrive_id,
            "url": GDRIVE_URL.format(gdrive_id),
            "relative_path": os.path.join(dataset, threat_model, f"{name}.pt")}
