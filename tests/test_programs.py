"""The absl programs end to end, in subprocesses, on tiny data in the official layout."""

import json

import numpy as np
import pytest
from program_helpers import run_program, write_tiny_cifar10


@pytest.fixture(scope="module")
def tiny_cifar10(tmp_path_factory):
    return write_tiny_cifar10(tmp_path_factory.mktemp("cifar10"), train=40, test=20)


@pytest.fixture(scope="module")
def teacher_run(tiny_cifar10, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("teacher")
    result = run_program(
        "train_teacher", f"--data_dir={tiny_cifar10}", "--arch=resnet8", "--epochs=1",
        "--batch_size=8", "--train_attack_steps=1", "--attack_steps=2", "--val_examples=10",
        f"--model_dir={model_dir}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, result


def test_train_teacher_writes_model_metrics_and_flags(teacher_run):
    model_dir, result = teacher_run
    for name in ("model.keras", "best.keras", "flags.json", "metrics.json", "train_log.csv"):
        assert (model_dir / name).is_file(), name
    assert (model_dir / "logs").is_dir()
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["num_examples"] == 20
    # Robust counts only points right on the clean image too: never above natural.
    assert 0 <= metrics["robust_accuracy"] <= metrics["natural_accuracy"] <= 1
    for key in ("natural_accuracy", "robust_accuracy"):  # counts out of 20
        assert metrics[key] * 20 == pytest.approx(round(metrics[key] * 20)), key
    assert metrics["attack"]["steps"] == 2 and metrics["train_attack"]["steps"] == 1
    flags = json.loads((model_dir / "flags.json").read_text())
    assert flags["arch"] == "resnet8" and flags["epochs"] == 1 and flags["seed"] == 0
    assert "natural_accuracy=" in result.stdout


def test_train_teacher_passes_the_trades_start_and_the_attack_mode_to_the_trainer(
        teacher_run, tiny_cifar10, tmp_path):
    metrics = json.loads((teacher_run[0] / "metrics.json").read_text())
    assert metrics["trades_start"] is None and metrics["attack_training_mode"] is False
    result = run_program(
        "train_teacher", f"--data_dir={tiny_cifar10}", "--arch=resnet8", "--epochs=1",
        "--batch_size=20", "--train_attack_steps=1", "--attack_steps=1", "--val_examples=0",
        "--test_examples=10", "--trades_beta=6", "--trades_start=attack",
        "--attack_training_mode", f"--model_dir={tmp_path}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())  # the trainer's own values
    assert metrics["trades_start"] == "attack" and metrics["attack_training_mode"] is True


def test_evaluate_reads_the_teacher_and_writes_json(teacher_run, tiny_cifar10, tmp_path):
    model_dir, _ = teacher_run
    out = tmp_path / "sub" / "eval.json"
    result = run_program("evaluate", f"--model={model_dir / 'model.keras'}",
                         f"--data_dir={tiny_cifar10}", "--attack_steps=2", "--batch_size=8",
                         "--test_examples=10", f"--output={out}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert {"natural_accuracy", "robust_accuracy", "attack", "num_examples"} <= set(metrics)
    assert metrics["num_examples"] == 10 and metrics["attack"]["steps"] == 2


@pytest.mark.parametrize("args, message", [
    (["--data_dir={missing}"], "does not exist"),
    (["--dataset=cifar100", "--data_dir={data}"], "must hold the official binary files"),
    (["--model={model_dir}/flags.json"], "is not a Keras v3 model file"),
    (["--model={data}/nothing.keras"], "does not exist"),
    (["--eps=-1"], "eps"),
    (["--robustbench_json={missing}/entry.json"], "give --attack=autoattack"),
])
def test_evaluate_bad_input_fails_with_one_clear_line(teacher_run, tiny_cifar10, tmp_path,
                                                      args, message):
    model_dir, _ = teacher_run
    fill = dict(missing=tmp_path / "nope", data=tiny_cifar10, model_dir=model_dir)
    base = {"--model": f"{model_dir / 'model.keras'}", "--data_dir": f"{tiny_cifar10}"}
    for arg in args:
        key, value = arg.split("=", 1)
        base[key] = value.format(**fill)
    result = run_program("evaluate", *[f"{k}={v}" for k, v in base.items()], "--verbose=0")
    assert result.returncode != 0
    assert message in result.stderr
    if message != "eps":
        lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
        assert len(lines) == 1, result.stderr


def test_evaluate_refuses_a_model_with_the_wrong_class_count(teacher_run, tmp_path):
    from gacd_tf.data import write_cifar100

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    write_cifar100(tmp_path, "test", images, np.arange(10), np.arange(10) % 20)
    model_dir, _ = teacher_run
    result = run_program("evaluate", f"--model={model_dir / 'model.keras'}", "--dataset=cifar100",
                         f"--data_dir={tmp_path}", "--verbose=0")
    assert result.returncode == 1
    assert "has 10 classes but cifar100 has 100" in result.stderr


def test_train_teacher_refuses_an_unwritable_model_dir(tiny_cifar10, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_program("train_teacher", f"--data_dir={tiny_cifar10}",
                         f"--model_dir={blocker}/sub", "--epochs=1")
    assert result.returncode == 1
    assert "is not a writable folder" in result.stderr


@pytest.mark.parametrize("method, extra", [
    ("kd", []),
    ("ard", ["--reweight"]),
    ("gacd", ["--aft_epochs=1", "--nce_k=16", "--embed_dim=8", "--nce_form=one_sided"]),
])
def test_distill_each_method_writes_student_and_metrics(teacher_run, tiny_cifar10, tmp_path,
                                                        method, extra):
    teacher_dir, _ = teacher_run
    out = tmp_path / method
    result = run_program(
        "distill", f"--method={method}", f"--teacher={teacher_dir / 'model.keras'}",
        "--arch=resnet8", f"--data_dir={tiny_cifar10}", "--epochs=1", "--batch_size=8",
        "--train_attack_steps=1", "--attack_steps=1", "--val_examples=0",
        f"--model_dir={out}", "--verbose=0", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["teacher_unchanged"] is True
    assert metrics["num_examples"] == 20 and 0 <= metrics["robust_accuracy"] <= 1
    assert (out / "model.keras").is_file() and (out / "flags.json").is_file()
    assert (out / "distill_log.csv").is_file()
    if method == "gacd":
        assert metrics["settings"]["reweight"] is True
        assert metrics["settings"]["nce_form"] == "one_sided"
        assert "before_aft" in metrics and (out / "distilled.keras").is_file()
        assert (out / "aft_log.csv").is_file()
    if method == "ard":
        assert metrics["settings"]["kl_reduction"] == "official"
        assert metrics["settings"]["reweight"] is True


def test_distill_refuses_a_teacher_for_another_dataset_before_training(teacher_run, tmp_path):
    from gacd_tf.data import write_cifar100

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
        write_cifar100(tmp_path / "c100", split, images, np.arange(20), np.arange(20) % 20)
    teacher_dir, _ = teacher_run
    result = run_program("distill", f"--teacher={teacher_dir / 'model.keras'}",
                         "--dataset=cifar100", f"--data_dir={tmp_path / 'c100'}",
                         f"--model_dir={tmp_path / 'out'}", "--epochs=1")
    assert result.returncode == 1
    assert "teacher" in result.stderr and "has 10 classes but cifar100 has 100" in result.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_distill_runs_mirrored_on_two_logical_cpus(teacher_run, tiny_cifar10, tmp_path):
    teacher_dir, _ = teacher_run
    result = run_program(
        "distill", "--method=gacd", f"--teacher={teacher_dir / 'model.keras'}",
        "--arch=resnet8", f"--data_dir={tiny_cifar10}", "--epochs=1", "--batch_size=8",
        "--attack_steps=1", "--val_examples=0", "--nce_k=16", "--embed_dim=8",
        "--strategy=mirrored", "--cpu_devices=2", f"--model_dir={tmp_path}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "with 2 replica(s)" in result.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["teacher_unchanged"] is True


def test_batch_size_must_divide_among_replicas(tiny_cifar10, tmp_path):
    result = run_program("train_teacher", f"--data_dir={tiny_cifar10}", "--batch_size=7",
                         "--strategy=mirrored", "--cpu_devices=2", f"--model_dir={tmp_path}")
    assert result.returncode == 1
    assert "--batch_size=7 is not divisible by the 2 replicas" in result.stderr


def test_multi_worker_with_xla_is_refused_with_the_way_out(tiny_cifar10, tmp_path):
    # --strategy=multi_worker itself runs (tests/test_multi_worker_cli.py); its loop
    # does not compile with XLA, so --jit_compile is refused, not silently ignored.
    result = run_program("train_teacher", f"--data_dir={tiny_cifar10}",
                         "--strategy=multi_worker", "--jit_compile", f"--model_dir={tmp_path}")
    assert result.returncode == 1
    assert "--jit_compile is not supported with --strategy=multi_worker" in result.stderr
    assert not (tmp_path / "model.keras").exists()
