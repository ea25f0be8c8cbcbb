"""Reading a PyTorch state_dict safely, from ``.pt``/``.pth`` or ``.safetensors``.

A ``.pt`` file is a Python pickle: loading it with plain ``torch.load`` can
run any code its author put in it. :func:`read_state_dict` reads ``.pt`` and
``.pth`` files only with ``torch.load(path, map_location="cpu",
weights_only=True)``, PyTorch's restricted unpickler, which refuses any
object other than tensors and plain containers *before* creating it, so a
checkpoint never runs code; ``.safetensors`` files hold no code at all and
are read with ``safetensors.numpy`` (no torch needed).

torch and safetensors are optional (``pip install "gacd_tf[torch]"``) and
imported here lazily: nothing else in gacd_tf imports them.
"""

import collections
import os

import numpy as np

from gacd_tf.errors import ModelError

WRAPPERS = ("state_dict", "model_state_dict")
PREFIXES = ("module.", "model.")
SUFFIXES = (".pt", ".pth", ".safetensors")
EXTRA = 'pip install "gacd_tf[torch]"'


def _require(module, what):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise ModelError(
            f"reading {what} needs the optional package {module.split('.')[0]!r} ({err}); "
            f"install it with: {EXTRA}") from None


def _to_numpy(value):
    if isinstance(value, np.ndarray):
        return value
    # A torch.Tensor: detach, to CPU, float32 for half/bfloat16 (numpy lacks bfloat16).
    if hasattr(value, "detach"):
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(value)


def unwrap_state_dict(checkpoint, source="the checkpoint"):
    """The flat ``{key: array}`` state_dict inside ``checkpoint``.

    Accepts the habits of RobustBench and ``torch.nn.DataParallel``: a
    ``{"state_dict": ...}`` or ``{"model_state_dict": ...}`` wrapper (other
    entries, e.g. ``epoch`` or ``optimizer``, are ignored), and ``module.``
    or ``model.`` prefixes on keys (removed, repeatedly: ``module.model.``).

    Args:
        checkpoint: a mapping of parameter names to tensors or arrays, or a
            wrapper holding one.
        source: how messages name the checkpoint (e.g. its path).

    Returns:
        ``collections.OrderedDict`` of key -> ``numpy.ndarray`` (floating
        tensors as float32), in the checkpoint's order.

    Raises:
        ModelError: not a mapping, an empty one, or a value that is not a
            tensor.

    Example:
    >>> import numpy as np
    >>> from gacd_tf.models.torch_checkpoint import unwrap_state_dict
    >>> list(unwrap_state_dict({"state_dict": {"module.fc.bias": np.zeros(2)}}))
    ['fc.bias']

    Reference:
        PyTorch, "Saving and loading models" (state_dict, DataParallel).
    """
    for wrapper in WRAPPERS:
        if isinstance(checkpoint, collections.abc.Mapping) and isinstance(
                checkpoint.get(wrapper), collections.abc.Mapping):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, collections.abc.Mapping) or not checkpoint:
        raise ModelError(
            f"{source} holds a {type(checkpoint).__name__}, not a state_dict (a non-empty "
            f"mapping of parameter names to tensors, possibly under "
            f"{' or '.join(repr(w) for w in WRAPPERS)}); save one with "
            f"torch.save(model.state_dict(), PATH)")
    result = collections.OrderedDict()
    for original, value in checkpoint.items():
        key = str(original)
        while key.startswith(PREFIXES):
            key = key[len(next(p for p in PREFIXES if key.startswith(p))):]
        if key in result:
            raise ModelError(f"{source}: keys {original!r} and {key!r} name the same "
                             f"parameter once the {' / '.join(PREFIXES)} prefixes are removed")
        if not (hasattr(value, "detach") or isinstance(value, np.ndarray)):
            raise ModelError(
                f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; a "
                f"state_dict maps parameter names to tensors")
        result[key] = _to_numpy(value)
    return result


def read_state_dict(path):
    """Reads the state_dict of a PyTorch checkpoint without running any code in it.

    Args:
        path: a ``.pt`` / ``.pth`` file (``torch.save``; read with
            ``torch.load(path, map_location="cpu", weights_only=True)``) or a
            ``.safetensors`` file.

    Returns:
        The unwrapped state_dict (:func:`unwrap_state_dict`): key -> array.

    Raises:
        ModelError: missing file, unknown suffix, a missing optional package,
            a pickle that holds anything but tensors (refused before it runs),
            or a corrupt file; each message names the path.

    Example:
    >>> from gacd_tf.models.torch_checkpoint import read_state_dict
    >>> # state = read_state_dict("Zhang2019Theoretically.pt")

    Reference:
        PyTorch ``torch.load(weights_only=True)``; Hugging Face safetensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelError(f"checkpoint={path} does not exist; pass a .pt, .pth or "
                         f".safetensors file").on("checkpoint")
    if not path.endswith(SUFFIXES):
        raise ModelError(f"checkpoint={path} must end in {', '.join(SUFFIXES)} (a PyTorch "
                         f"state_dict saved with torch.save or safetensors)").on("checkpoint")
    if path.endswith(".safetensors"):
        numpy_reader = _require("safetensors.numpy", f"{path}")
        try:
            checkpoint = numpy_reader.load_file(path)
        except Exception as err:  # noqa: BLE001 (safetensors raises its own error types)
            raise ModelError(f"could not read checkpoint={path} as safetensors "
                             f"({_first_line(err)}); the file is corrupt: download it again"
                             ).on("checkpoint") from None
        return unwrap_state_dict(checkpoint, f"checkpoint={path}")
    torch = _require("torch", f"{path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (UnpicklingError, RuntimeError, EOFError, ...)
        message = _first_line(err)
        if "weights_only" in str(err) or "unsupported global" in str(err).lower():
            raise ModelError(
                f"checkpoint={path} holds Python objects other than tensors "
                f"({_unsupported(err)}), which "
                f"torch.load(weights_only=True) refused without running them: loading it "
                f"fully would run its code; save the state_dict alone with "
                f"torch.save(model.state_dict(), PATH) where you trust the source"
            ).on("checkpoint") from None
        raise ModelError(f"could not read checkpoint={path} as a PyTorch checkpoint "
                         f"({message}); the file is corrupt or not a torch.save file: "
                         f"download it again").on("checkpoint") from None
    return unwrap_state_dict(checkpoint, f"checkpoint={path}")


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _unsupported(err):
    for line in str(err).splitlines():
        if "unsupported global" in line.lower() or "unsupported operand" in line.lower():
            return line.strip().rstrip(".")
    return _first_line(err)
