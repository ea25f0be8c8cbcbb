"""The bad-input catalogue: each bad flag, file or folder given to a program ends it
with exit code 1 and ONE line ``error: ...`` on stderr that names the input and
says what to do, and leaves no output that looks complete (no model.keras,
metrics.json, evaluation JSON or export version).

Each case runs the real program in a subprocess on tiny data. Flag errors
(absl validators, bounds, enums, unknown or missing flags) are printed the same
way as the library's ConfigError/DataError/ModelError, by
``gacd_tf.programs.common.run``.
"""

import json
import shutil
import zipfile

import numpy as np
import pytest
from program_helpers import run_program, write_tiny_cifar10

from gacd_tf.data import write_stl10

LAMBDA_REFUSED = ["holds Python code (e.g. a Lambda layer) that safe_mode refuses to load",
                  "only if you trust the file's source, pass --unsafe_load"]


def _patch(path, offset, value):
    data = bytearray(path.read_bytes())
    data[offset] = value
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every input file the catalogue needs, good and bad, in one folder."""
    import keras

    from gacd_tf.models import build_model

    root = tmp_path_factory.mktemp("inputs")
    data = write_tiny_cifar10(root / "data", train=20, test=10)
    # Truncated test file: one byte short.
    truncated = root / "truncated"
    shutil.copytree(data, truncated)
    path = truncated / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-1])
    # An empty training file.
    empty = root / "empty"
    shutil.copytree(data, empty)
    (empty / "data_batch_1.bin").write_bytes(b"")
    # A label byte out of range (record 1 of the training file says class 10).
    bad_labels = root / "bad_labels"
    shutil.copytree(data, bad_labels)
    _patch(bad_labels / "data_batch_1.bin", 3073, 10)
    # STL-10 test split (96x96 images).
    rng = np.random.default_rng(0)
    write_stl10(root / "stl10", "test", rng.integers(0, 256, (10, 96, 96, 3), np.uint8),
                np.arange(10))

    # A CIFAR-10 teacher (32x32 inputs, 10 classes); its weights do not matter here.
    teacher = root / "teacher.keras"
    build_model("resnet8", num_classes=10).save(teacher)
    # The same teacher wrapped with a final softmax: it outputs probabilities.
    net = build_model("resnet8", num_classes=10)
    keras.Model(net.input, keras.layers.Softmax()(net.output)).save(root / "softmax.keras")
    # A model whose file holds a Python lambda: safe_mode refuses it.
    images = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0 - 1.0)(images)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(images, keras.layers.Dense(10)(x)).save(root / "lambda.keras")
    # Files named .keras that are no model.
    with zipfile.ZipFile(root / "no_model.keras", "w") as archive:
        archive.writestr("notes.txt", "not a model")
    whole = teacher.read_bytes()
    (root / "truncated.keras").write_bytes(whole[: len(whole) // 2])
    # A folder with a corrupt saved_model.pb.
    (root / "bad_saved_model").mkdir()
    (root / "bad_saved_model" / "saved_model.pb").write_bytes(b"\x00garbage\xff" * 10)
    # A file where a folder is needed.
    (root / "blocker").write_text("a file, not a folder")
    # An export base path whose version 1 exists.
    (root / "versions" / "1").mkdir(parents=True)
    return root


# A run that got past the bad input would train / evaluate briefly with these.
TRAIN = ["--data_dir={root}/data", "--arch=resnet8", "--epochs=1", "--batch_size=8",
         "--train_attack_steps=1", "--attack_steps=1", "--val_examples=0", "--verbose=0",
         "--model_dir={out}"]
DISTILL = TRAIN + ["--teacher={root}/teacher.keras", "--nce_k=8", "--embed_dim=8"]
EVALUATE = ["--model={root}/teacher.keras", "--data_dir={root}/data", "--attack_steps=1",
            "--batch_size=10", "--verbose=0", "--output={out}/eval.json"]
EXPORT = ["--model={root}/teacher.keras", "--export_dir={out}/export"]
BASE = {"train_teacher": TRAIN, "distill": DISTILL, "evaluate": EVALUATE, "export": EXPORT}

EPS = "--eps=0.0313725"  # 8/255 as the messages print it

# (id, program, flags replacing or adding to BASE[program], [fragments of the message])
CATALOGUE = [
    # --- flags out of range or contradictory
    ("eps_negative", "evaluate", ["--eps=-1"],
     ["flag --eps=-1: -1.0 is not a non-negative number", "fix the flag"]),
    ("eps_nan", "evaluate", ["--eps=nan"], ["flag --eps=nan: must be a finite number"]),
    ("autoattack_l2_with_linf_only_attacks", "evaluate", ["--attack=autoattack", "--norm=l2"],
     ["--norm=l2: AutoAttack's fab-t, square are implemented for l_inf only; with "
      "--norm=l2 pass --aa_attacks=apgd-ce,apgd-t"]),
    ("eval_step_larger_than_eps_in_one_step", "evaluate",
     ["--attack_steps=1", "--step_size=0.1"],
     [f"--step_size=0.1 is larger than {EPS} with --attack_steps=1",
      "use a step size <= --eps, or more --attack_steps"]),
    ("train_step_larger_than_eps_in_one_step", "train_teacher",
     ["--train_attack_steps=1", "--train_step_size=0.05"],
     [f"--train_step_size=0.05 is larger than {EPS} with --train_attack_steps=1",
      "or more --train_attack_steps"]),
    ("train_step_defaults_to_step_size", "distill",
     ["--train_attack_steps=1", "--step_size=0.05", "--attack_steps=20"],
     [f"--train_step_size (unset, so --step_size)=0.05 is larger than {EPS}"]),
    ("ot_step_larger_than_eps_in_one_step", "distill", ["--ot_step_size=0.1"],
     [f"--ot_step_size=0.1 is larger than {EPS} with --ot_steps=1",
      "use a step size <= --eps, or more --ot_steps"]),
    ("nce_k_zero", "distill", ["--nce_k=0"], ["flag --nce_k=0: 0 is not a positive integer"]),
    ("kd_temperature_zero", "distill", ["--method=kd", "--kd_temperature=0"],
     ["flag --kd_temperature=0.0: must be > 0"]),
    ("nce_t_negative", "distill", ["--nce_t=-0.1"], ["flag --nce_t=-0.1: must be > 0"]),
    ("batch_size_not_divisible_by_replicas", "train_teacher",
     ["--batch_size=7", "--strategy=mirrored", "--cpu_devices=2"],
     ["--batch_size=7 is not divisible by the 2 replicas of --strategy=mirrored; "
      "use a multiple of 2"]),
    ("unknown_arch", "train_teacher", ["--arch=resnet9"],
     ["flag --arch=resnet9: unknown architecture; choose one of: dm_preact_resnet18, ",
      "mobilenetv2, preact_resnet18, ", "resnet8, wrn_16_2"]),
    ("unknown_dataset", "evaluate", ["--dataset=mnist"],
     ["flag --dataset=mnist: value should be one of <cifar10|cifar100|stl10>"]),
    ("unknown_flag", "evaluate", ["--epz=0.1"],
     ["Unknown command line flag 'epz'. Did you mean: eps ?"]),
    ("missing_required_flag", "distill", ["--teacher="],
     ["flag --teacher=None: Flag --teacher must have a value other than None"]),
    # --- library errors about an argument, re-worded by the program in its flag's name
    ("lr_decay_epochs_not_a_number", "train_teacher", ["--lr_decay_epochs=50%,x"],
     ["error: --lr_decay_epochs=50%,x: entry 'x' is not a number or N%"]),
    ("lr_decay_epochs_decreasing", "train_teacher", ["--lr_decay_epochs=75%,50%"],
     ["error: --lr_decay_epochs=75%,50%: must increase"]),
    ("missing_data_folder", "evaluate", ["--data_dir={root}/nowhere"],
     ["CIFAR-10 data folder {root}/nowhere does not exist; pass --data_dir=DIR naming the "
      "folder"]),
    ("val_examples_too_many", "train_teacher", ["--val_examples=20"],
     ["error: --val_examples=20 leaves no training examples: the train split holds 20"]),
    ("test_examples_too_many", "evaluate", ["--test_examples=11"],
     ["error: --test_examples=11 is out of range: the test split holds 10 examples"]),
    ("train_examples_beyond_the_holdout", "train_teacher",
     ["--val_examples=10", "--train_examples=15"],
     ["error: --train_examples=15 is out of range: the train split holds 20 examples, 10 of "
      "them held out by --val_examples=10; ask for 1 to 10"]),
    ("batch_larger_than_the_split", "train_teacher", ["--batch_size=32"],
     ["the train split holds 20 examples, fewer than one batch of --batch_size=32"]),
    ("export_version_exists", "export", ["--export_dir={root}/versions", "--version=1"],
     ["version folder {root}/versions/1 already exists; pass another --version, leave "
      "--version out for the next free one, or pass --overwrite to replace it"]),
    # --- TFLite (docs/edge.md): quantisation masks gradients; --quantize is TFLite's alone
    ("tflite_gradient_attack", "evaluate", ["--model={root}/student.tflite", "--attack=pgd"],
     ["--attack=pgd needs the model's gradients, but --model={root}/student.tflite is a "
      "TFLite model: quantisation masks gradients",
      "use --attack=square (score-based, no gradients) or --transfer_from=MODEL"]),
    ("tflite_autoattack", "evaluate", ["--model={root}/student.tflite", "--attack=autoattack"],
     ["--attack=autoattack needs the model's gradients", "--transfer_from=MODEL"]),
    ("tflite_strategy", "evaluate", ["--model={root}/student.tflite", "--attack=square",
                                     "--strategy=mirrored", "--cpu_devices=2"],
     ["error: --strategy=mirrored evaluates a Keras model or SavedModel itself; a TFLite "
      "model or --transfer_from runs on one device: drop --strategy"]),
    ("quantize_without_tflite", "export", ["--quantize=int8"],
     ["--quantize=int8 applies only to --format=tflite, not --format=saved_model"]),
    ("calibration_examples_too_many", "export",
     ["--format=tflite", "--quantize=int8", "--data_dir={root}/data",
      "--calibration_examples=21"],
     ["error: --calibration_examples=21 is out of range: the train split holds 20 examples"]),
    # --- teacher / model / dataset mismatch
    ("teacher_class_count", "distill", ["--dataset=cifar100"],
     ["teacher ({root}/teacher.keras) has 10 classes but cifar100 has 100; "
      "use a teacher trained on cifar100"]),
    ("teacher_input_size", "distill", ["--dataset=stl10"],
     ["teacher ({root}/teacher.keras) takes images of shape (32, 32, 3) but stl10 has "
      "(96, 96, 3); use a teacher built for stl10"]),
    ("model_input_size", "evaluate", ["--dataset=stl10", "--data_dir={root}/stl10"],
     ["model ({root}/teacher.keras) takes images of shape (32, 32, 3) but stl10 has "
      "(96, 96, 3); use a model built for stl10"]),
    # --- corrupt or truncated data files
    ("truncated_data_file", "evaluate", ["--data_dir={root}/truncated"],
     ["{root}/truncated/test_batch.bin is 30729 bytes, not a whole (non-zero) number of "
      "3073-byte CIFAR-10 records (the official file is 30730000 bytes: 10000 records)",
      "download it again"]),
    ("empty_data_file", "train_teacher", ["--data_dir={root}/empty"],
     ["{root}/empty/data_batch_1.bin is 0 bytes", "download it again"]),
    ("label_out_of_range", "distill", ["--data_dir={root}/bad_labels"],
     ["{root}/bad_labels/data_batch_1.bin: label 10 (record 1, 1 bad in all) is out of "
      "range; valid labels are 0..9; the file is corrupt"]),
    # --- output folders that cannot be written
    ("unwritable_model_dir", "train_teacher", ["--model_dir={root}/blocker/run"],
     ["--model_dir={root}/blocker/run is not a writable folder (Not a directory); "
      "choose another folder"]),
    ("unwritable_output", "evaluate", ["--output={root}/blocker/eval.json"],
     ["the folder of --output={root}/blocker is a file, not a folder; choose another folder"]),
    ("unwritable_export_dir", "export", ["--export_dir={root}/blocker/export"],
     ["--export_dir={root}/blocker/export cannot be created"]),
    # --- files that are not a model
    ("teacher_missing", "distill", ["--teacher={root}/nothing.keras"],
     ["model file {root}/nothing.keras does not exist; pass the .keras file a run wrote"]),
    ("teacher_not_a_keras_file", "distill", ["--teacher={root}/data/test_batch.bin"],
     ["{root}/data/test_batch.bin is not a Keras v3 model file (.keras zip archive); "
      "save models with model.save('NAME.keras')"]),
    ("truncated_keras", "export", ["--model={root}/truncated.keras"],
     ["{root}/truncated.keras is not a Keras v3 model file"]),
    ("zip_without_model", "evaluate", ["--model={root}/no_model.keras"],
     ["could not load a model from {root}/no_model.keras (\"There is no item named "
      "'config.json' in the archive\"); the file is corrupt or was not written by "
      "model.save('NAME.keras'): save or download it again"]),
    ("corrupt_saved_model", "evaluate", ["--model={root}/bad_saved_model"],
     ["could not load a SavedModel from {root}/bad_saved_model", "gacd-export"]),
    # --- safe loading: a Python lambda in the file is refused without --unsafe_load
    ("lambda_refused", "distill", ["--teacher={root}/lambda.keras"],
     ["{root}/lambda.keras "] + LAMBDA_REFUSED),
    ("lambda_refused", "evaluate", ["--model={root}/lambda.keras"], LAMBDA_REFUSED),
    ("lambda_refused", "export", ["--model={root}/lambda.keras"], LAMBDA_REFUSED),
]


def _args(program, extra, root, out):
    """BASE[program] with ``extra`` replacing flags of the same name (``--x=`` drops --x)."""
    args = {}
    for arg in BASE[program] + extra:
        name, equals, value = arg.partition("=")
        args[name] = equals + value
    return [name + value.format(root=root, out=out) for name, value in args.items()
            if value != "="]


def _assert_one_error_line(result, fragments):
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert "Traceback" not in result.stderr
    return errors[0]


def _assert_nothing_complete(out):
    """No output that looks like a finished run (flags.json alone is allowed)."""
    if not out.exists():
        return
    done = {"model.keras", "best.keras", "distilled.keras", "metrics.json", "eval.json",
            "distiller.weights.h5"}
    assert not done & {p.name for p in out.rglob("*")}, sorted(out.rglob("*"))
    export = out / "export"
    if export.exists():
        assert not [p for p in export.iterdir() if p.name.isdigit()], sorted(export.iterdir())


# Rows whose mechanism another row already exercises in CI: run with `-m slow` (each row
# is a program start, about 8 s on 2 cores, and CI must stay under 20 minutes).
SLOW_ROWS = {"lr_decay_epochs_decreasing", "test_examples_too_many", "missing_data_folder"}


@pytest.mark.parametrize("case, program, extra, fragments", [
    pytest.param(*c, id=f"{c[1]}-{c[0]}", marks=[pytest.mark.slow] if c[0] in SLOW_ROWS else [])
    for c in CATALOGUE])
def test_bad_input_exits_with_one_clear_line(inputs, tmp_path, case, program, extra,
                                             fragments):
    out = tmp_path / "out"
    result = run_program(program, *_args(program, extra, inputs, out), timeout=120)
    _assert_one_error_line(result, [f.format(root=inputs) for f in fragments])
    _assert_nothing_complete(out)
    if case == "export_version_exists":  # its export folder is the inputs', not out
        versions = inputs / "versions"
        assert [p.name for p in versions.iterdir()] == ["1"]
        assert not list((versions / "1").iterdir())  # version 1 left as it was


def test_unsafe_load_loads_a_lambda_model_with_a_warning(inputs, tmp_path):
    out = tmp_path / "out"
    args = _args("evaluate", ["--model={root}/lambda.keras", "--unsafe_load",
                              "--test_examples=10"], inputs, out)
    result = run_program("evaluate", *args, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "--unsafe_load" in line]
    assert len(warnings) == 1 and warnings[0].startswith("W"), result.stderr[-3000:]
    assert "safe_mode=False" in warnings[0] and "arbitrary code" in warnings[0]
    assert json.loads((out / "eval.json").read_text())["num_examples"] == 10


def _methods_with_a_teacher():
    from gacd_tf.methods import METHODS

    return [name for name in METHODS.names() if METHODS.get(name).NEEDS_TEACHER]


@pytest.mark.parametrize("method", _methods_with_a_teacher())
def test_a_teacher_that_outputs_probabilities_is_refused_by_every_method(inputs, tmp_path,
                                                                          method):
    out = tmp_path / "out"
    args = _args("distill", [f"--method={method}", "--teacher={root}/softmax.keras"],
                 inputs, out)
    result = run_program("distill", *args, timeout=120)
    _assert_one_error_line(result, [
        f"teacher ({inputs}/softmax.keras) outputs probabilities (every row is >= 0 and sums "
        "to 1, e.g. a final softmax), not logits", "remove the final softmax"])
    _assert_nothing_complete(out)


# --- gacd-import: PyTorch (RobustBench) checkpoints. Writing these inputs needs the [torch]
# extra (torch, safetensors, robustbench): the rows skip, with the reason, without it.
BASE["import_model"] = ["--checkpoint={root}/torch/good.pt", "--arch=wrn_16_2",
                        "--data_dir={root}/data", "--output={out}/model.keras"]
RB_NAME = ["--checkpoint=", "--arch=", "--model_dir={root}/torch/models"]
ZHANG = "{root}/torch/models/cifar10/Linf/Zhang2019Theoretically.pt"
IMPORT_CATALOGUE = [
    ("code_in_pickle", "import_model", ["--checkpoint={root}/torch/evil.pt"],
     ["--checkpoint={root}/torch/evil.pt holds Python objects other than tensors",
      "which torch.load(weights_only=True) refused without running them"]),
    ("missing_key", "import_model", ["--checkpoint={root}/torch/missing.pt"],
     ["--checkpoint={root}/torch/missing.pt: key 'block1.layer.0.bn1.running_var' is missing "
      "(1 missing in all); does --arch=wrn_16_2 match the checkpoint?"]),
    ("unexpected_key", "import_model", ["--checkpoint={root}/torch/unexpected.pt"],
     ["--checkpoint={root}/torch/unexpected.pt: unexpected key 'head.weight' (1 unexpected "
      "in all); does --arch=wrn_16_2 match the checkpoint?"]),
    ("misshaped_key", "import_model", ["--checkpoint={root}/torch/misshaped.pt"],
     ["--checkpoint={root}/torch/misshaped.pt: key 'conv1.weight' has shape (3, 16, 3, 3), "
      "but wrn_16_2 needs (16, 3, 3, 3)"]),
    ("arch_of_another_checkpoint", "import_model", ["--arch=wrn_34_10"],
     ["key 'block1.layer.2.bn1.weight' is missing",
      "does --arch=wrn_34_10 match the checkpoint?"]),
    ("arch_without_a_pytorch_layout", "import_model", ["--arch=resnet20"],
     ["--arch=resnet20: no PyTorch (RobustBench) layout is known for it; choose one of: "
      "dm_preact_resnet18, "]),
    ("num_classes_disagrees", "import_model", ["--num_classes=100"],
     ["--num_classes=100, but --checkpoint={root}/torch/good.pt has 10 classes "
      "(key 'fc.weight' has shape (10, 128))"]),
    ("checkpoint_missing", "import_model", ["--checkpoint={root}/torch/nothing.pt"],
     ["--checkpoint={root}/torch/nothing.pt does not exist; pass a .pt, .pth or "
      ".safetensors file"]),
    ("checkpoint_not_pytorch", "import_model", ["--checkpoint={root}/teacher.keras"],
     ["--checkpoint={root}/teacher.keras must end in .pt, .pth, .safetensors"]),
    ("truncated_checkpoint", "import_model", ["--checkpoint={root}/torch/truncated.pt"],
     ["could not read --checkpoint={root}/torch/truncated.pt as a PyTorch checkpoint",
      "download it again"]),
    ("no_checkpoint", "import_model", ["--checkpoint="],
     ["give --checkpoint=FILE and --arch=NAME, or --robustbench_model=NAME"]),
    ("output_not_keras", "import_model", ["--output={root}/torch/model.h5"],
     ["--output={root}/torch/model.h5 must end in .keras"]),
    ("robustbench_checkpoint_offline", "import_model",
     RB_NAME + ["--robustbench_model=Zhang2019Theoretically"],
     [f"--robustbench_model=Zhang2019Theoretically: its checkpoint {ZHANG} is not here and "
      "could not be downloaded", "fetch https://drive.google.com/uc?id="
      f"1hPz9QQwyM7QSuWu-ANG_uXR-29xtL8t_ and save it as {ZHANG} (or pass --checkpoint=FILE)"]),
    ("robustbench_unknown_model", "import_model", RB_NAME + ["--robustbench_model=Nobody2099"],
     ["--robustbench_model=Nobody2099: not in RobustBench's cifar10 Linf list"]),
    ("robustbench_model_without_a_keras_twin", "import_model",
     RB_NAME + ["--robustbench_model=Rice2020Overfitting"],
     ["--robustbench_model=Rice2020Overfitting: its RobustBench architecture "
      "(Rice2020OverfittingNet) has no exact Keras counterpart in gacd_tf"]),
]


@pytest.fixture(scope="module")
def torch_inputs(inputs):
    """``inputs`` plus ``torch/``: good and bad PyTorch checkpoints (tests/torch_inputs.py)."""
    pytest.importorskip("torch", reason='the gacd-import rows need pip install "gacd_tf[torch]"')
    from torch_inputs import write_torch_inputs

    from gacd_tf.models.robustbench_zoo import robustbench_source_dir

    if robustbench_source_dir() is None:
        pytest.skip("the gacd-import rows need robustbench (pip install --no-deps "
                    "robustbench==1.1.1, or the [torch] extra)")
    write_torch_inputs(inputs / "torch")
    return inputs


@pytest.mark.parametrize("case, program, extra, fragments", IMPORT_CATALOGUE,
                         ids=[f"{c[1]}-{c[0]}" for c in IMPORT_CATALOGUE])
def test_bad_import_exits_with_one_clear_line(torch_inputs, tmp_path, case, program, extra,
                                              fragments):
    out = tmp_path / "out"
    result = run_program(program, *_args(program, extra, torch_inputs, out), timeout=120)
    _assert_one_error_line(result, [f.format(root=torch_inputs) for f in fragments])
    _assert_nothing_complete(out)
    assert not (torch_inputs / "torch" / "pwned").exists(), "the checkpoint's code ran"
