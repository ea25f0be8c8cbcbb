"""--strategy=multi_worker from the command line: two worker processes on
127.0.0.1 (TF_CONFIG) run ``python -m gacd_tf.programs.distill``; one is
SIGKILLed after the first checkpoint; the survivor stops with one line; both
started again with the same command finish the run from the last committed
checkpoint, with exactly the weights of a one-process run on the same global
batches split over the same two replicas (``--strategy=mirrored
--cpu_devices=2``); only the chief wrote into --model_dir. KD, ARD and TRADES
(gacd-train-teacher --trades_beta) train under multi_worker to the same
weights as that one-process run too.
"""

import json

import keras
import numpy as np
import pytest
from program_helpers import run_program, write_tiny_cifar10
from worker_helpers import event_pids, files, finish, free_ports, kill_one_and_restart, start_worker, tf_config

from gacd_tf.models import build_model

# Observed: bitwise equal (two replicas: the gradient sum a + b is exact in any
# order, and --deterministic fixes every kernel); allowed: 1e-6 absolute.
ATOL = 1e-6


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_cifar10(tmp_path_factory.mktemp("cifar10"), train=32, test=8)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher.keras"
    keras.utils.set_random_seed(1)
    build_model("resnet8", num_classes=10).save(path)
    return path


def weights(path):
    return keras.saving.load_model(path, compile=False).get_weights()


def assert_same_weights(path, reference):
    got, want = weights(path), weights(reference)
    assert len(got) == len(want)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(got, want))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)
    # The training moved the weights, so the comparison can fail: the logits' bias
    # starts at 0 whatever the seed, and only an optimizer step moves it.
    bias = keras.saving.load_model(path, compile=False).get_layer("logits").bias
    assert np.abs(bias.numpy()).max() > 0
    return worst


def distill_args(data_dir, teacher, model_dir, method="gacd", epochs=2):
    # 32 examples, global batch 8: 4 steps an epoch, a checkpoint after every step.
    return [f"--data_dir={data_dir}", f"--teacher={teacher}", f"--model_dir={model_dir}",
            f"--method={method}", "--arch=resnet8", f"--epochs={epochs}", "--batch_size=8",
            "--nce_k=8", "--embed_dim=8", "--train_attack_steps=1", "--attack_steps=1",
            "--val_examples=8", "--test_examples=8", "--checkpoint_every_steps=1",
            "--deterministic", "--verbose=1"]


def test_chief_is_the_chief_task_else_worker_zero():
    from gacd_tf.training.multi_worker_loop import is_chief_from_tf_config, is_chief_task

    workers = {"worker": ["a:1", "b:2"]}
    assert is_chief_task("worker", 0, workers) and not is_chief_task("worker", 1, workers)
    with_chief = {"chief": ["c:0"], "worker": ["a:1"]}
    assert is_chief_task("chief", 0, with_chief) and not is_chief_task("worker", 0, with_chief)
    assert is_chief_task(None, None, None)  # no cluster: its own chief
    assert not is_chief_from_tf_config(tf_config([1, 2], 1))
    assert is_chief_from_tf_config(tf_config([1, 2], 0)) and is_chief_from_tf_config("")


@pytest.mark.slow
def test_a_killed_worker_restarted_resumes_the_cluster_to_the_one_process_weights(
        tiny_data, teacher_file, tmp_path):
    reference = tmp_path / "reference"
    result = run_program("distill", *distill_args(tiny_data, teacher_file, reference),
                         "--strategy=mirrored", "--cpu_devices=2")
    assert result.returncode == 0, result.stderr[-3000:]

    model_dir = tmp_path / "run"
    args = distill_args(tiny_data, teacher_file, model_dir)
    tmp = [tmp_path / "tmp0", tmp_path / "tmp1"]
    state_file = model_dir / "checkpoints" / "distill" / "state.json"

    def nothing_final_written():
        assert not (model_dir / "metrics.json").exists()

    state, pids, ((out0, err0), (out1, err1)) = kill_one_and_restart(
        "distill", args, tmp, state_file, nothing_final_written)
    assert not state["completed"] and state["global_step"] < 8
    resumed = json.loads((model_dir / "metrics.json").read_text())["resumed_from"]["distill"]
    assert resumed["global_step"] >= state["global_step"]
    # Progress and results from the chief only.
    assert "distill: resumed after" in out0 and "Epoch 2/2" in out0
    assert "natural_accuracy=" in out0
    assert "resumed after" not in out1 and "Epoch" not in out1 and "accuracy=" not in out1

    worst = assert_same_weights(model_dir / "model.keras", reference / "model.keras")
    print(f"max |killed+resumed 2 workers - one process| = {worst:.2e}")

    # Only the chief wrote into --model_dir: the same files as the one-process run,
    # each CSV epoch once, TensorBoard files from the chief's processes only.
    assert files(model_dir) == files(reference)
    log = (model_dir / "distill_log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["0", "1"]
    assert event_pids(model_dir / "logs") <= pids
    # Worker 1 wrote to its temporary folder, removed at exit (but not by the SIGKILLed one).
    assert len(list(tmp[1].glob("gacd-worker-*"))) == 1
    assert not list(tmp[0].glob("gacd-worker-*"))


def run_pair(module, args, tmp_path):
    ports = free_ports()
    procs = [start_worker(module, args, ports, i, tmp_path / f"tmp{i}") for i in range(2)]
    outputs = finish(procs)
    for i, proc in enumerate(procs):
        assert proc.returncode == 0, f"worker {i}:\n{outputs[i][1][-3000:]}"
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kd", "ard"])
def test_distillation_methods_under_multi_worker(method, tiny_data, teacher_file, tmp_path):
    args = distill_args(tiny_data, teacher_file, tmp_path / "run", method=method, epochs=1)
    args += ["--val_examples=0", "--checkpoint_every_steps=0"]
    run_pair("distill", args, tmp_path)
    reference = tmp_path / "reference"
    result = run_program("distill", *distill_args(tiny_data, teacher_file, reference,
                                                  method=method, epochs=1),
                         "--val_examples=0", "--checkpoint_every_steps=0",
                         "--strategy=mirrored", "--cpu_devices=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(tmp_path / "run" / "model.keras", reference / "model.keras")


@pytest.mark.slow
def test_trades_teacher_under_multi_worker(tiny_data, tmp_path):
    def args(model_dir):
        return [f"--data_dir={tiny_data}", f"--model_dir={model_dir}", "--arch=resnet8",
                "--epochs=1", "--batch_size=8", "--train_attack_steps=1", "--attack_steps=1",
                "--val_examples=0", "--test_examples=8", "--trades_beta=6",
                "--deterministic", "--verbose=0"]

    run_pair("train_teacher", args(tmp_path / "run"), tmp_path)
    result = run_program("train_teacher", *args(tmp_path / "reference"),
                         "--strategy=mirrored", "--cpu_devices=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(tmp_path / "run" / "model.keras", tmp_path / "reference" / "model.keras")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["trades_beta"] == 6
