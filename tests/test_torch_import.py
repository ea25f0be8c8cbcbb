"""PyTorch / RobustBench checkpoints imported as exact Keras models (issue 25).

Every PyTorch model here is built from RobustBench's own architecture files
(``robustbench/model_zoo/architectures/*.py``, loaded by file path: the
package itself cannot be imported without autoattack), given random weights
and random batch-norm statistics, and put in eval mode; its Keras import must
agree with it to max |logit difference| <= 1e-4 x max |logit| on random
[0, 1] images, and on CIFAR-10 test images when they are found (conftest).

Needs the ``[torch]`` extra (torch, safetensors, robustbench): the module
skips, with the reason, without it. Run:
``python -m pytest -q -n 0 tests/test_torch_import.py`` (``-m slow`` adds the
full-size models).
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason='torch is not installed: the import tests need pip install "gacd_tf[torch]"')

from gacd_tf.errors import ConfigError, ModelError  # noqa: E402
from gacd_tf.models import features_and_logits  # noqa: E402
from gacd_tf.models.robustbench_zoo import (  # noqa: E402
    resolve_robustbench_model,
    robustbench_source_dir,
)
from gacd_tf.models.torch_import import import_torch_model  # noqa: E402
from torch_inputs import Payload, randomized, robustbench_module  # noqa: E402

TOLERANCE = 1e-4
RB_DIR = robustbench_source_dir()
pytestmark = pytest.mark.skipif(
    RB_DIR is None, reason="robustbench is not installed (pip install --no-deps "
    "robustbench==1.1.1, or the [torch] extra): its architecture files build the references")

_MODULES = {}


def rb(name):
    """RobustBench's architecture file ``name``.py, loaded by path (it imports torch alone)."""
    if name not in _MODULES:
        _MODULES[name] = robustbench_module(name)
    return _MODULES[name]


def state_of(net):
    return {key: value.clone() for key, value in net.state_dict().items()}


def torch_logits(net, images):
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()


def relative_difference(net, model, images):
    reference = torch_logits(net, images)
    ours = np.asarray(model(images, training=False))
    assert ours.shape == reference.shape
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def random_images(count=6, size=32, seed=1):
    return np.random.default_rng(seed).random((count, size, size, 3), dtype=np.float32)


def cifar10_images(count=64):
    from conftest import _find_cifar10

    folder = _find_cifar10()
    if folder is None:
        return None
    from gacd_tf.data import load_split

    split = load_split("cifar10", "test", str(folder))
    return split.images[:count].astype(np.float32) / 255.0


# (id, PyTorch constructor from RobustBench's files, gacd_tf arch, build options)
CASES = [
    ("wrn_28_10-depth10-width2",
     lambda: rb("wide_resnet").WideResNet(depth=10, widen_factor=2, num_classes=10),
     "wrn_28_10", dict(depth=10, widen_factor=2)),
    ("wrn_34_15-depth16-width1",
     lambda: rb("wide_resnet").WideResNet(depth=16, widen_factor=1, sub_block1=True),
     "wrn_34_15", dict(depth=16, widen_factor=1)),
    ("wrn_34_20-depth10-width2-7classes",
     lambda: rb("wide_resnet").WideResNet(depth=10, widen_factor=2, num_classes=7),
     "wrn_34_20", dict(depth=10, widen_factor=2)),
    ("wrn_70_16-depth10-width1-100classes-sub_block1",
     lambda: rb("wide_resnet").WideResNet(depth=10, widen_factor=1, num_classes=100,
                                          sub_block1=True),
     "wrn_70_16", dict(depth=10, widen_factor=1)),
    ("dm_wrn_28_10-depth10-width2-swish",
     lambda: rb("dm_wide_resnet").DMWideResNet(num_classes=10, depth=10, width=2,
                                               activation_fn=rb("dm_wide_resnet").Swish),
     "dm_wrn_28_10", dict(depth=10, widen_factor=2)),
    ("dm_wrn_34_20-depth16-width1-silu",
     lambda: rb("dm_wide_resnet").DMWideResNet(num_classes=10, depth=16, width=1,
                                               activation_fn=torch.nn.SiLU),
     "dm_wrn_34_20", dict(depth=16, widen_factor=1)),
    ("dm_wrn_70_16-depth10-width1-relu-cifar100",
     lambda: rb("dm_wide_resnet").DMWideResNet(
         num_classes=100, depth=10, width=1, mean=rb("dm_wide_resnet").CIFAR100_MEAN,
         std=rb("dm_wide_resnet").CIFAR100_STD),
     "dm_wrn_70_16", dict(depth=10, widen_factor=1, activation="relu")),
    ("dm_preact_resnet18",
     lambda: rb("dm_wide_resnet").DMPreActResNet(num_classes=10, depth=18,
                                                 activation_fn=rb("dm_wide_resnet").Swish),
     "dm_preact_resnet18", {}),
    ("preact_resnet18",
     lambda: rb("resnet").PreActResNet18(), "preact_resnet18", {}),
    ("preact_resnet18-v2-bn_before_fc-100classes",
     lambda: rb("resnet").PreActResNet(rb("resnet").PreActBlockV2, [2, 2, 2, 2],
                                       num_classes=100, bn_before_fc=True),
     "preact_resnet18", dict(bn_before_fc=True, out_shortcut=True)),
    ("resnet18", lambda: rb("resnet").ResNet18(), "resnet18", {}),
    ("resnet18-100classes",
     lambda: rb("resnet").ResNet(rb("resnet").BasicBlock, [2, 2, 2, 2], num_classes=100),
     "resnet18", {}),
]


@pytest.mark.parametrize("case, make, arch, options", CASES, ids=[c[0] for c in CASES])
def test_import_matches_robustbench_logits(case, make, arch, options):
    torch.manual_seed(0)
    net = randomized(make())
    model = import_torch_model(state_of(net), arch, **options)
    difference = relative_difference(net, model, random_images())
    assert difference <= TOLERANCE, (case, difference)
    cifar = cifar10_images()
    if cifar is not None:
        difference = relative_difference(net, model, cifar)
        assert difference <= TOLERANCE, (case, "cifar10", difference)
    features, logits = features_and_logits(model)(random_images(2))
    assert features.shape[0] == 2 and logits.shape == (2, model.output_shape[-1])


FULL_SIZE = [
    ("wrn_28_10", lambda: rb("wide_resnet").WideResNet(depth=28, widen_factor=10)),
    ("wrn_34_10", lambda: rb("wide_resnet").WideResNet(depth=34, widen_factor=10,
                                                       sub_block1=True)),
    ("wrn_34_15", lambda: rb("wide_resnet").WideResNet(depth=34, widen_factor=15)),
    ("wrn_34_20", lambda: rb("wide_resnet").WideResNet(depth=34, widen_factor=20)),
    ("wrn_70_16", lambda: rb("wide_resnet").WideResNet(depth=70, widen_factor=16)),
    ("dm_wrn_28_10", lambda: rb("dm_wide_resnet").DMWideResNet(
        depth=28, width=10, activation_fn=rb("dm_wide_resnet").Swish)),
    ("dm_wrn_34_20", lambda: rb("dm_wide_resnet").DMWideResNet(
        depth=34, width=20, activation_fn=rb("dm_wide_resnet").Swish)),
    ("dm_wrn_70_16", lambda: rb("dm_wide_resnet").DMWideResNet(
        depth=70, width=16, activation_fn=rb("dm_wide_resnet").Swish)),
]


@pytest.mark.slow
@pytest.mark.parametrize("arch, make", FULL_SIZE, ids=[c[0] for c in FULL_SIZE])
def test_full_size_import_matches_robustbench_logits(arch, make):
    torch.manual_seed(0)
    net = randomized(make())
    model = import_torch_model(state_of(net), arch)
    images = cifar10_images(8)
    images = random_images(4) if images is None else np.concatenate([random_images(4), images])
    difference = relative_difference(net, model, images)
    print(f"\n| {arch} | {model.count_params():,} | {difference:.2e} |")
    assert difference <= TOLERANCE, (arch, difference)


# --- checkpoint files ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """A tiny RobustBench WRN (sub_block1=True, random statistics) and its state_dict."""
    torch.manual_seed(0)
    net = randomized(rb("wide_resnet").WideResNet(depth=10, widen_factor=1,
                                                  sub_block1=True))
    return net, state_of(net)


TINY = dict(depth=10, widen_factor=1)


def test_pt_file_with_wrappers_and_prefixes(tmp_path, tiny):
    net, state = tiny
    for i, (wrapper, prefix) in enumerate([(None, ""), ("state_dict", "module."),
                                           ("model_state_dict", "module.model.")]):
        checkpoint = {prefix + key: value for key, value in state.items()}
        if wrapper:
            checkpoint = {wrapper: checkpoint, "epoch": 99}
        path = tmp_path / f"checkpoint{i}.pth"
        torch.save(checkpoint, path)
        model = import_torch_model(path, "wrn_28_10", **TINY)
        assert relative_difference(net, model, random_images()) <= TOLERANCE


def test_safetensors_file(tmp_path, tiny):
    from safetensors.torch import save_file

    net, state = tiny
    path = tmp_path / "checkpoint.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    model = import_torch_model(path, "wrn_28_10", **TINY)
    assert relative_difference(net, model, random_images()) <= TOLERANCE


@pytest.mark.parametrize("arch", ["wrn_28_10", "dm_wrn_28_10"])
def test_keras_round_trip_keeps_the_function(tmp_path, tiny, arch):
    """A .keras file of an import loads with safe_mode=True and computes the same function."""
    import keras

    net, state = tiny
    if arch.startswith("dm_"):
        torch.manual_seed(0)
        dm = rb("dm_wide_resnet")
        net = randomized(dm.DMWideResNet(depth=10, width=1, activation_fn=dm.Swish))
        state = state_of(net)
    model = import_torch_model(state, arch, **TINY)
    model.save(tmp_path / "teacher.keras")
    loaded = keras.saving.load_model(tmp_path / "teacher.keras", safe_mode=True)
    assert relative_difference(net, loaded, random_images()) <= TOLERANCE


def write_malicious_checkpoint(path, marker, state):
    """A .pt file whose pickle would create the folder ``marker`` when loaded unsafely."""
    torch.save({"state_dict": state, "extra": Payload(marker)}, path)
    return path


def test_a_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path, tiny):
    marker = tmp_path / "pwned"
    path = write_malicious_checkpoint(tmp_path / "evil.pt", marker, tiny[1])
    with pytest.raises(ModelError, match="holds Python objects other than tensors") as error:
        import_torch_model(path, "wrn_28_10", **TINY)
    assert "refused without running them" in str(error.value)
    assert "mkdir" in str(error.value)
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_unexpected_and_misshaped_keys_are_named(tiny):
    _, state = tiny
    missing = {k: v for k, v in state.items() if k != "block2.layer.0.bn2.running_var"}
    with pytest.raises(ModelError, match=r"key 'block2.layer.0.bn2.running_var' is missing "
                                         r"\(1 missing in all\); does arch=wrn_28_10 match"):
        import_torch_model(missing, "wrn_28_10", **TINY)
    unexpected = dict(state, **{"block4.conv.weight": torch.zeros(1)})
    with pytest.raises(ModelError, match=r"unexpected key 'block4.conv.weight' \(1 unexpected"):
        import_torch_model(unexpected, "wrn_28_10", **TINY)
    misshaped = dict(state, **{"conv1.weight": state["conv1.weight"].permute(1, 0, 2, 3)})
    with pytest.raises(ModelError, match=r"key 'conv1.weight' has shape \(3, 16, 3, 3\), but "
                                         r"wrn_28_10 needs \(16, 3, 3, 3\)"):
        import_torch_model(misshaped, "wrn_28_10", **TINY)
    with pytest.raises(ModelError, match=r"key 'block1.layer.0.convShortcut.weight' is missing"):
        import_torch_model(state, "wrn_28_10")  # a deeper, wider WRN than the checkpoint
    with pytest.raises(ModelError, match=r"num_classes=100, but the checkpoint has 10 classes "
                                         r"\(key 'fc.weight' has shape \(10, 64\)\)") as error:
        import_torch_model(state, "wrn_28_10", num_classes=100, **TINY)
    assert error.value.argument == "num_classes"
    with pytest.raises(ModelError, match=r"key 'init_conv.weight' \(the last layer|"
                                         r"key 'logits.weight' \(the last layer"):
        import_torch_model(state, "dm_wrn_28_10", **TINY)
    with pytest.raises(ConfigError, match="arch=resnet20: no PyTorch"):
        import_torch_model(state, "resnet20")


@pytest.mark.parametrize("keys", [("mu", "sigma"), ("mean", "std")])
def test_normalisation_buffers_in_the_checkpoint_are_used(tiny, keys):
    """Rice2020Overfitting-style mu/sigma (or mean/std) buffers become the model's
    normalisation: values of no dataset, so no built-in statistics can stand in."""
    net, state = tiny
    mu, sigma = (0.3, 0.5, 0.7), (0.2, 0.3, 0.4)
    model = import_torch_model(dict(state, **{keys[0]: torch.tensor(mu).view(1, 3, 1, 1),
                                              keys[1]: torch.tensor(sigma).view(1, 3, 1, 1)}),
                               "wrn_28_10", **TINY)
    images = random_images()
    normalised = (images - np.array(mu, np.float32)) / np.array(sigma, np.float32)
    reference = torch_logits(net, normalised)
    ours = np.asarray(model(images, training=False))
    assert np.max(np.abs(ours - reference)) <= TOLERANCE * np.max(np.abs(reference))


def test_robustbench_names_resolve_to_the_papers_teachers():
    expected = {"Zhang2019Theoretically": "wrn_34_10", "Chen2021LTD_WRN34_10": "wrn_34_10",
                "Chen2021LTD_WRN34_20": "wrn_34_20", "Gowal2020Uncovering_70_16": "dm_wrn_70_16",
                "Rebuffi2021Fixing_R18_ddpm": "dm_preact_resnet18"}
    for name, arch in expected.items():
        found = resolve_robustbench_model(name)
        assert found["arch"] == arch, (name, found)
        assert found["relative_path"] == os.path.join("cifar10", "Linf", f"{name}.pt")
        assert found["url"].startswith("https://drive.google.com/uc?id=")
    deep = resolve_robustbench_model("Rebuffi2021Fixing_106_16_cutmix_ddpm")
    assert deep["options"] == {"activation": "swish", "depth": 106, "widen_factor": 16,
                               "model_name": "dm_wrn_106_16"}
    with pytest.raises(ModelError, match="Rice2020OverfittingNet.*no exact Keras counterpart"):
        resolve_robustbench_model("Rice2020Overfitting")
    with pytest.raises(ModelError, match="model_name=Nobody2099: not in RobustBench's cifar10"):
        resolve_robustbench_model("Nobody2099")


def test_every_method_distils_from_an_imported_teacher(tiny):
    import dataclasses

    import keras
    import tensorflow as tf

    import gacd_tf
    from gacd_tf.methods import METHODS, MethodContext
    from gacd_tf.models import build_model

    teacher = import_torch_model(tiny[1], "wrn_28_10", **TINY)
    rng = np.random.default_rng(0)
    x = rng.random((8, 32, 32, 3), dtype=np.float32)
    y = (np.arange(8) % 10).astype(np.int32)
    # (image, label, index): GACD's memory bank reads the index.
    batches = tf.data.Dataset.from_tensor_slices((x, y, np.arange(8))).batch(4)
    before = [w.copy() for w in teacher.get_weights()]
    known = {field.name for field in dataclasses.fields(MethodContext)}
    context = MethodContext(**{key: value for key, value in dict(
        seed=0, train_attack_steps=1, epochs=1, steps_per_epoch=2).items() if key in known})
    for name in METHODS.names():
        if not METHODS.get(name).NEEDS_TEACHER:
            continue
        student = build_model("resnet8", num_classes=10, model_name=f"student_{name}")
        settings = {"nce_k": 4, "embed_dim": 8} if name == "gacd" else {}
        trainer = gacd_tf.methods.build(name, student, teacher, train_labels=y,
                                        context=context, **settings)
        trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        history = trainer.fit(batches, epochs=1, verbose=0)
        losses = [v[-1] for k, v in history.history.items() if "loss" in k]
        assert losses and all(np.isfinite(losses)), (name, history.history)
    for old, new in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)


# --- gacd-import, the program ----------------------------------------------------------


@pytest.fixture(scope="module")
def program_inputs(tmp_path_factory):
    from program_helpers import write_tiny_cifar10
    from torch_inputs import write_torch_inputs

    root = tmp_path_factory.mktemp("import")
    write_tiny_cifar10(root / "data", train=10, test=20)
    return root, write_torch_inputs(root / "torch")


@pytest.mark.parametrize("checkpoint", ["good.pt", "good.safetensors"])
def test_gacd_import_writes_an_exact_teacher(program_inputs, tmp_path, checkpoint):
    import keras
    from program_helpers import run_program

    root, net = program_inputs
    output = tmp_path / "teachers" / "teacher.keras"
    result = run_program("import_model", f"--checkpoint={root}/torch/{checkpoint}",
                         "--arch=wrn_16_2", f"--data_dir={root}/data", f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imported wrn_16_2 (" in result.stdout and f"-> {output}" in result.stdout
    assert "10 classes" in result.stdout
    assert "natural_accuracy=" in result.stdout
    assert "(the first 20 cifar10 test images)" in result.stdout
    loaded = keras.saving.load_model(output, safe_mode=True)
    assert relative_difference(net, loaded, random_images()) <= TOLERANCE


def test_gacd_import_by_robustbench_name(program_inputs, tmp_path):
    """--robustbench_model finds the architecture and RobustBench's file layout offline."""
    import keras
    from program_helpers import run_program

    root, _ = program_inputs
    torch.manual_seed(0)
    net = randomized(rb("resnet").ResNet18())
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
               folder / "Sehwag2021Proxy_R18.pt")
    output = tmp_path / "teacher.keras"
    result = run_program("import_model", "--robustbench_model=Sehwag2021Proxy_R18",
                         f"--model_dir={tmp_path}/models", f"--data_dir={root}/data",
                         f"--output={output}", "--accuracy_examples=8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imported resnet18 (" in result.stdout
    assert "(the first 8 cifar10 test images)" in result.stdout
    loaded = keras.saving.load_model(output, safe_mode=True)
    assert relative_difference(net, loaded, random_images()) <= TOLERANCE


def test_no_gacd_tf_module_imports_torch_at_import_time():
    """torch is optional: importing every gacd_tf module (the importer and gacd-import
    included) must not load it; only reading a .pt file does."""
    import subprocess
    import sys

    code = ("import pkgutil, importlib, sys, gacd_tf\n"
            "for m in pkgutil.walk_packages(gacd_tf.__path__, 'gacd_tf.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in "
            "('torch', 'safetensors', 'robustbench')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
