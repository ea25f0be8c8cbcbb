"""PyTorch checkpoints, good and bad, for the gacd-import tests (needs torch and robustbench).

``write_torch_inputs(folder)`` writes a RobustBench ``WideResNet(depth=16,
widen_factor=2)`` (the zoo's ``wrn_16_2`` layout) with random weights and
batch-norm statistics, and broken variants of it.
"""

import importlib.util
import os


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: the code a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def robustbench_module(name):
    """RobustBench's architecture file ``name``.py, loaded by path, or None without it."""
    from gacd_tf.models.robustbench_zoo import robustbench_source_dir

    folder = robustbench_source_dir()
    if folder is None:
        return None
    path = os.path.join(folder, "model_zoo", "architectures", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"robustbench_arch_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomized(net, seed=0):
    """``net`` with random weights, biases and batch-norm statistics, in eval mode."""
    import torch

    generator = torch.Generator().manual_seed(seed)

    def draw(shape, low, high):
        return torch.rand(shape, generator=generator) * (high - low) + low

    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(draw(module.weight.shape, 0.5, 1.5))
                module.bias.copy_(draw(module.bias.shape, -0.2, 0.2))
                module.running_mean.copy_(draw(module.running_mean.shape, -0.2, 0.2))
                module.running_var.copy_(draw(module.running_var.shape, 0.5, 2.0))
            elif isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                    * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, torch.nn.Linear):
                module.weight.copy_(draw(module.weight.shape, -0.1, 0.1))
                if module.bias is not None:
                    module.bias.copy_(draw(module.bias.shape, -0.5, 0.5))
    return net.eval()


def write_torch_inputs(folder):
    """Writes good.pt, evil.pt (marker: pwned), missing.pt, unexpected.pt, misshaped.pt,
    truncated.pt and good.safetensors into ``folder``; returns the PyTorch net of good.pt."""
    import torch
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(0)
    net = randomized(robustbench_module("wide_resnet").WideResNet(depth=16, widen_factor=2))
    state = {key: value.clone() for key, value in net.state_dict().items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}},
               os.path.join(folder, "good.pt"))
    save_file({k: v.contiguous() for k, v in state.items()},
              os.path.join(folder, "good.safetensors"))
    torch.save({"state_dict": state, "extra": Payload(os.path.join(folder, "pwned"))},
               os.path.join(folder, "evil.pt"))
    torch.save({k: v for k, v in state.items() if k != "block1.layer.0.bn1.running_var"},
               os.path.join(folder, "missing.pt"))
    torch.save(dict(state, **{"head.weight": torch.zeros(2, 2)}),
               os.path.join(folder, "unexpected.pt"))
    torch.save(dict(state, **{"conv1.weight": state["conv1.weight"].permute(1, 0, 2, 3)}),
               os.path.join(folder, "misshaped.pt"))
    whole = open(os.path.join(folder, "good.pt"), "rb").read()
    with open(os.path.join(folder, "truncated.pt"), "wb") as file:
        file.write(whole[: len(whole) // 2])
    return net
