"""gacd-analyze transfer under the training programs' device flags.

The linear probe trained with ``--strategy=mirrored --cpu_devices=2`` ends
with the weights of a one-device run on the same global batches; two
``--strategy=multi_worker`` processes on 127.0.0.1 (worker 1 SIGKILLed after
the first checkpoint, the survivor stopping with one line, both started
again) end with the weights of that mirrored run, only the chief writing into
--output_dir and reporting. The other commands refuse the device flags.
(Helpers copied from tests/test_multi_worker_cli.py.)
"""

import json

import keras
import numpy as np
import pytest
from program_helpers import run_program, write_tiny_cifar10
from worker_helpers import event_pids, files, kill_one_and_restart

from gacd_tf.models import build_model

# Mirrored vs one device: the replicas' mean losses halved and summed vs one
# mean of the global batch, so the head's gradients differ by rounding only
# (observed max |difference| after 12 steps: printed by the test). Multi-worker
# vs mirrored on the same two replicas: exact sums (observed bitwise equal).
MIRRORED_ATOL = 1e-5
MULTI_WORKER_ATOL = 1e-6


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    # 48 training images, global batch 8: 6 steps an epoch.
    return write_tiny_cifar10(tmp_path_factory.mktemp("cifar10"), train=48, test=8)


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "student" / "model.keras"  # probe_student
    path.parent.mkdir()
    keras.utils.set_random_seed(1)
    build_model("resnet8", num_classes=10).save(path)
    return path


def transfer_args(data_dir, backbone, output_dir):
    return ["transfer", f"--models={backbone}", f"--data_dir={data_dir}",
            f"--output_dir={output_dir}", "--epochs=2", "--batch_size=8", "--test_examples=8",
            "--transfer_attack_steps=1", "--checkpoint_every_steps=1", "--deterministic",
            "--verbose=1"]


@pytest.fixture(scope="module")
def mirrored_run(tiny_data, backbone_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored")
    result = run_program("analyze", *transfer_args(tiny_data, backbone_file, out),
                         "--strategy=mirrored", "--cpu_devices=2")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def probe_weights(output_dir):
    return keras.saving.load_model(output_dir / "probe_student" / "probe.keras",
                                   compile=False).get_weights()


def max_difference(got, want, atol):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)
    return max(float(np.abs(a - b).max()) for a, b in zip(got, want))


def test_mirrored_probe_equals_the_one_device_probe(tiny_data, backbone_file, mirrored_run,
                                                    tmp_path):
    mirrored, result = mirrored_run
    assert "with 2 replica(s)" in result.stderr
    assert "transfer student: natural_accuracy=" in result.stdout
    one = run_program("analyze", *transfer_args(tiny_data, backbone_file, tmp_path))
    assert one.returncode == 0, one.stderr[-3000:]
    assert "with 1 replica(s)" in one.stderr

    worst = max_difference(probe_weights(mirrored), probe_weights(tmp_path), MIRRORED_ATOL)
    print(f"max |mirrored probe - one-device probe| = {worst:.2e}")
    for out in (mirrored, tmp_path):  # both took all 12 steps
        state = json.loads((out / "probe_student" / "checkpoints" / "probe" /
                            "state.json").read_text())
        assert state["completed"] and state["global_step"] == 12
    header = (tmp_path / "probe_student" / "probe_log.csv").read_text().splitlines()[0]
    assert header.split(",")[0] == "epoch"
    losses = [np.loadtxt(out / "probe_student" / "probe_log.csv", delimiter=",", skiprows=1,
                         usecols=header.split(",").index("loss")) for out in (mirrored, tmp_path)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    rows = [json.loads((out / "transfer.json").read_text())["models"][0]
            for out in (mirrored, tmp_path)]
    assert rows[0]["natural_accuracy"] == rows[1]["natural_accuracy"]
    assert rows[0]["backbone_unchanged"] and rows[1]["backbone_unchanged"]
    settings = json.loads((mirrored / "probe_student" / "probe.json").read_text())
    assert settings["strategy"] == "mirrored" and settings["cpu_devices"] == 2


def test_a_mirrored_probe_is_not_resumed_on_one_device(tiny_data, backbone_file, mirrored_run):
    # Its checkpoints hold the state of another strategy, as a training run's do.
    mirrored, _ = mirrored_run
    result = run_program("analyze", *transfer_args(tiny_data, backbone_file, mirrored))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "holds a linear probe trained with other settings" in last
    assert "cpu_devices" in last and "strategy" in last


@pytest.mark.parametrize("args, message", [
    (["correlation", "--strategy=mirrored"], "--strategy=mirrored applies only to gacd-analyze "
     "transfer, the command that trains; correlation does not take it: drop it"),
    (["report", "--jit_compile"], "--jit_compile applies only to gacd-analyze transfer"),
    (["transfer", "--batch_size=7", "--strategy=mirrored", "--cpu_devices=2"],
     "--batch_size=7 is not divisible by the 2 replicas of --strategy=mirrored"),
    (["transfer", "--strategy=multi_worker", "--jit_compile"],
     "--jit_compile is not supported with --strategy=multi_worker"),
])
def test_device_flags_are_refused_with_one_line(backbone_file, tmp_path, args, message):
    result = run_program("analyze", *args, f"--models={backbone_file}",
                         f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "out" / "transfer.json").exists()


@pytest.mark.slow
def test_a_killed_worker_restarted_resumes_the_probe_to_the_mirrored_weights(
        tiny_data, backbone_file, mirrored_run, tmp_path):
    reference, _ = mirrored_run
    out = tmp_path / "run"
    args = transfer_args(tiny_data, backbone_file, out)
    tmp = [tmp_path / "tmp0", tmp_path / "tmp1"]
    state_file = out / "probe_student" / "checkpoints" / "probe" / "state.json"

    def nothing_final_written():
        assert not (out / "transfer.json").exists()

    state, pids, ((out0, err0), (out1, err1)) = kill_one_and_restart(
        "analyze", args, tmp, state_file, nothing_final_written)
    assert not state["completed"] and state["global_step"] < 12
    # Progress and results from the chief only.
    assert "probe: resumed after" in out0 and "Epoch 2/2" in out0
    assert "transfer student: natural_accuracy=" in out0
    assert "resumed after" not in out1 and "Epoch" not in out1 and "accuracy=" not in out1

    worst = max_difference(probe_weights(out), probe_weights(reference), MULTI_WORKER_ATOL)
    print(f"max |killed+resumed 2 workers - mirrored| = {worst:.2e}")
    row, want = (json.loads((d / "transfer.json").read_text())["models"][0]
                 for d in (out, reference))
    assert row["natural_accuracy"] == want["natural_accuracy"]
    assert row["robust_accuracy"] == want["robust_accuracy"]
    # Only the chief wrote into --output_dir: the same files as the one-process run,
    # each CSV epoch once, TensorBoard files from the chief's processes only.
    assert files(out) == files(reference)
    log = (out / "probe_student" / "probe_log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["0", "1"]
    assert event_pids(out / "probe_student" / "logs") <= pids
    assert json.loads((out / "probe_student" / "probe.json").read_text())["strategy"] == (
        "multi_worker")
    # Worker 1 wrote to its temporary folder, removed at exit (but not by the SIGKILLed one).
    assert len(list(tmp[1].glob("gacd-worker-*"))) == 1
    assert not list(tmp[0].glob("gacd-worker-*"))
