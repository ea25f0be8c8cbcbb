"""The programs survive a SIGKILL: started again with the same flags they resume
from the last checkpoint and end exactly where an uninterrupted run ends
(--deterministic); two --deterministic runs agree; a NaN stops a program
with the step and the last good checkpoint; other flags refuse to resume."""

import json
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from program_helpers import program_env, run_program, write_tiny_cifar10

from gacd_tf.models import build_model


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    # 104 = 96 trained on + 8 held out by the distillation runs' --val_examples=8.
    return write_tiny_cifar10(tmp_path_factory.mktemp("cifar10"), train=104, test=16)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher.keras"
    keras.utils.set_random_seed(1)
    build_model("resnet8", num_classes=10).save(path)
    return path


def distill_args(data_dir, teacher, model_dir):
    # 12 steps per epoch: 3 GACD epochs then 1 AFT epoch, checkpoints every 3 steps.
    return [f"--data_dir={data_dir}", f"--teacher={teacher}", f"--model_dir={model_dir}",
            "--method=gacd", "--arch=resnet8", "--epochs=3", "--aft_epochs=1",
            "--batch_size=8", "--nce_k=8", "--embed_dim=8", "--train_attack_steps=1",
            "--attack_steps=1", "--val_examples=8", "--checkpoint_every_steps=3",
            "--lr_schedule=cosine", "--deterministic", "--verbose=0"]


def weights(path):
    return keras.saving.load_model(path, compile=False).get_weights()


def start_program(module, args):
    # Unbuffered, so what it printed before a SIGKILL reaches the pipe.
    return subprocess.Popen([sys.executable, "-m", f"gacd_tf.programs.{module}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=program_env(PYTHONUNBUFFERED="1"))


def kill_after(args, state_file):
    """Starts gacd-distill, SIGKILLs it as soon as ``state_file`` appears; returns the state
    and what the program printed."""
    process = start_program("distill", args)
    deadline = time.time() + 240
    while not state_file.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    stdout, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr[-3000:]
    return json.loads(state_file.read_text()), stdout


def test_distill_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tiny_data, teacher_file,
                                                                       tmp_path):
    reference = tmp_path / "reference"
    result = run_program("distill", *distill_args(tiny_data, teacher_file, reference))
    assert result.returncode == 0, result.stderr[-3000:]

    killed = tmp_path / "killed"
    args = distill_args(tiny_data, teacher_file, killed)
    distill_state = killed / "checkpoints" / "distill" / "state.json"
    aft_state = killed / "checkpoints" / "aft" / "state.json"

    # Killed right after the first GACD checkpoint (step 3 of 12) ...
    state, _ = kill_after(args, distill_state)
    assert not state["completed"] and state["step_in_epoch"] > 0  # mid-epoch
    assert not (killed / "metrics.json").exists()
    # ... started again (from that checkpoint, not from scratch: a restart would give the
    # same weights), killed again right after the first AFT checkpoint ...
    aft, printed = kill_after(args, aft_state)
    assert (f"distill: resumed after {state['epoch']} epochs and {state['step_in_epoch']} steps"
            in printed), printed[-3000:]
    assert not aft["completed"] and aft["step_in_epoch"] > 0
    assert json.loads(distill_state.read_text())["completed"]
    assert (killed / "checkpoints" / "aft" / "before_aft.json").is_file()
    # ... and started once more, it finishes.
    result = run_program("distill", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "aft: resumed after" in result.stdout
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["resumed_from"]["aft"]["global_step"] == aft["global_step"]
    assert json.loads(distill_state.read_text())["global_step"] == 36
    assert json.loads(aft_state.read_text())["completed"]
    assert json.loads(aft_state.read_text())["global_step"] == 12

    for name in ("model.keras", "distilled.keras"):
        for a, b in zip(weights(killed / name), weights(reference / name)):
            np.testing.assert_array_equal(a, b)
    want = json.loads((reference / "metrics.json").read_text())
    for key in ("natural_accuracy", "robust_accuracy"):
        assert metrics[key] == want[key] and metrics["before_aft"][key] == want["before_aft"][key]
    # The CSV logs hold every epoch once, in order, across the kills.
    log = (killed / "distill_log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["0", "1", "2"]
    log = (killed / "aft_log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["0"]
    # Started again once complete: nothing to do.
    result = run_program("distill", *args)
    assert result.returncode == 0 and "complete (metrics.json); nothing to do" in result.stdout


def teacher_args(data_dir, model_dir, *extra):
    return [f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--arch=resnet8",
            "--epochs=1", "--batch_size=16", "--train_attack_steps=1", "--attack_steps=1",
            "--val_examples=0", "--test_examples=16", "--verbose=0", *extra]


@pytest.fixture(scope="module")
def deterministic_teachers(tiny_data, tmp_path_factory):
    """Two complete --deterministic teacher runs with the same flags (model dirs a, b)."""
    root = tmp_path_factory.mktemp("deterministic")
    for name in ("a", "b"):
        result = run_program("train_teacher", *teacher_args(tiny_data, root / name,
                                                             "--deterministic"))
        assert result.returncode == 0, result.stderr[-3000:]
    return root / "a", root / "b"


def test_two_deterministic_runs_give_identical_weights(deterministic_teachers):
    a, b = deterministic_teachers
    pairs = list(zip(weights(a / "model.keras"), weights(b / "model.keras")))
    assert pairs and all(np.array_equal(x, y) for x, y in pairs)
    # ... and the training moved them (the comparison can fail): the logits' bias starts
    # at 0 whatever the seed, and only an optimizer step moves it.
    bias = keras.saving.load_model(a / "model.keras", compile=False).get_layer("logits").bias
    assert np.abs(bias.numpy()).max() > 0


def test_resuming_with_other_flags_is_refused(tiny_data, deterministic_teachers):
    run = deterministic_teachers[1]  # its weights stay as they are (compared above)
    result = run_program("train_teacher", *teacher_args(tiny_data, run, "--deterministic",
                                                         "--seed=3"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --model_dir={run} holds checkpoints of a run with other flags (--seed=0 "
        "there, 3 now); start it again with the same flags to resume it, or choose a new "
        "--model_dir")
    # The same flags again: already complete, nothing trained, metrics rewritten.
    result = run_program("train_teacher", *teacher_args(tiny_data, run, "--deterministic"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "complete (metrics.json); nothing to do" in result.stdout


def test_a_nan_loss_stops_the_program_naming_the_step_and_last_checkpoint(tiny_data, tmp_path):
    result = run_program("train_teacher", *teacher_args(
        tiny_data, tmp_path, "--learning_rate=1e30", "--epochs=2", "--checkpoint_every_steps=1"))
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    # Step 1 is finite (and checkpointed); its huge update makes step 2's loss NaN.
    checkpoint = tmp_path / "checkpoints" / "train" / "ckpt-000000001.weights.h5"
    assert line == (
        "error: training stopped: loss nan at epoch 1, step 2 (global step 2); the last good "
        f"checkpoint is {checkpoint} (after 0 epochs and 1 steps, global step 1), left "
        "untouched. Lower --learning_rate or check the inputs, and start again in a new "
        "--model_dir")
    state = json.loads((checkpoint.parent / "state.json").read_text())
    assert state["global_step"] == 1 and checkpoint.is_file()
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "model.keras").exists()


def test_the_deterministic_flag_turns_on_op_determinism(monkeypatch):
    from tensorflow.python.framework import config

    from gacd_tf.programs import common

    class Flags:
        deterministic = True

        def __contains__(self, name):
            return name == "deterministic"

    monkeypatch.setattr(common, "FLAGS", Flags())
    assert not config.is_op_determinism_enabled()
    try:
        common.setup_runtime(0)
        assert config.is_op_determinism_enabled()
    finally:
        config.disable_op_determinism()


def test_a_run_started_before_a_flag_existed_resumes_under_its_old_value(tmp_path, monkeypatch):
    """flags.json of a run from before --sgd_form: it ran Keras' SGD, so it resumes only
    with --sgd_form=keras (PyTorch's form would read its momentum slot wrongly)."""
    from gacd_tf.errors import ConfigError
    from gacd_tf.programs import common

    (tmp_path / "checkpoints" / "train").mkdir(parents=True)
    (tmp_path / "checkpoints" / "train" / "state.json").write_text("{}")
    (tmp_path / "flags.json").write_text(json.dumps({"epochs": 2, "nce_normaliser": "crd"}))
    monkeypatch.setattr(common, "flag_values", lambda: {"epochs": 2, "sgd_form": "keras",
                                                        "nce_normaliser": "crd"})
    assert common.check_resume(str(tmp_path)) is True
    monkeypatch.setattr(common, "flag_values", lambda: {"epochs": 2, "sgd_form": "pytorch",
                                                        "nce_normaliser": "crd"})
    with pytest.raises(ConfigError, match="--sgd_form=keras there, pytorch now"):
        common.check_resume(str(tmp_path))
