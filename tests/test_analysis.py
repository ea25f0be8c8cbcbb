"""gacd_tf.analysis and gacd-analyze: linear transfer, correlation maps, t-SNE, sweeps, report.

Library parts run in-process on tiny models; the program runs in subprocesses
on tiny data in the official CIFAR-10 layout (like tests/test_programs.py).
"""

import json
import os
import struct
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from program_helpers import run_program
from tiny_models import tiny

from gacd_tf.analysis import (
    TargetedCrossEntropy,
    correlation_maps,
    linear_transfer,
    plots,
    run_sweep,
    tsne_maps,
)
from gacd_tf.analysis.tables import markdown_table, model_names
from gacd_tf.attacks import PGD
from gacd_tf.data import load_split, write_cifar10
from gacd_tf.data.datasets import ArraySplit, DatasetInfo, class_names, select_classes
from gacd_tf.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = DatasetInfo("toy", 3, 8, ("train", "test"), (0.5,) * 3, (0.25,) * 3)


def png_size(path):
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def toy_split(n, seed, split="train"):
    """3 classes, linearly separable: class c has a bright channel c."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(20, 60, (n, 8, 8, 3))
    images[np.arange(n), :, :, labels] += 150
    return ArraySplit(images.astype(np.uint8), labels.astype(np.int32), TOY, split)


def batches(split, batch=16):
    x = split.images.astype("float32") / 255.0
    return tf.data.Dataset.from_tensor_slices(
        (x, split.labels, np.arange(len(split), dtype="int32"))).batch(batch), x


def pearson(z):
    centred = z - z.mean(0)
    cov = centred.T @ centred
    std = np.sqrt(np.diag(cov))
    return cov / np.outer(std, std)


# --------------------------------------------------------------------------
# Linear probe / transfer


def test_linear_probe_learns_a_separable_task_and_leaves_the_backbone_unchanged(tmp_path):
    backbone = tiny(0, width=8)  # with batch norm: its statistics must not move either
    before = [w.numpy().copy() for w in backbone.weights]
    result, probe = linear_transfer(backbone, toy_split(60, 0), toy_split(30, 1, "test"),
                                    epochs=10, batch_size=20)
    assert result["natural_accuracy"] >= 0.9  # chance is 1/3
    assert 0.0 <= result["robust_accuracy"] <= result["natural_accuracy"]
    assert result["num_examples"] == 30 and result["attack"]["steps"] == 7
    assert result["backbone_unchanged"] is True and result["feature_dim"] == 8
    for old, weight in zip(before, backbone.weights):
        np.testing.assert_array_equal(old, weight.numpy(), err_msg=weight.path)
    assert not np.allclose(probe.head.kernel.numpy(), 0.0)
    assert [w.path for w in probe.trainable_weights] == [w.path for w in probe.head.weights]
    # The probe network saves and reloads safely, and gives the same logits.
    probe.model.save(tmp_path / "probe.keras")
    reloaded = keras.saving.load_model(tmp_path / "probe.keras", safe_mode=True)
    x = toy_split(6, 2).images.astype("float32") / 255.0
    np.testing.assert_allclose(reloaded(x).numpy(), probe.model(x).numpy(), atol=1e-6)


def test_linear_probe_resizes_other_image_sizes_and_attacks_the_target_pixels():
    from gacd_tf.analysis.linear_probe import LinearProbe

    probe = LinearProbe(tiny(0, batch_norm=False), num_classes=5, input_shape=(16, 16, 3))
    x = np.random.default_rng(0).uniform(0, 1, (4, 16, 16, 3)).astype("float32")
    assert tuple(probe.model(x).shape) == (4, 5)
    head = probe.head.kernel
    head.assign(np.random.default_rng(1).normal(0, 1, head.shape))  # a trained head's stand-in
    y = tf.constant([0, 1, 2, 3])
    x_adv = PGD(steps=2, random_start=False)(probe.model, x, y).numpy()
    assert x_adv.shape == x.shape and np.abs(x_adv - x).max() <= 8 / 255 + 1e-6
    # No random start: the points moved by the gradient through the resizing, uphill.
    assert np.abs(x_adv - x).max() > 4 / 255

    def loss(images):
        return tf.nn.sparse_softmax_cross_entropy_with_logits(y, probe.model(images)).numpy()

    assert (loss(x_adv) > loss(x)).all()


# --------------------------------------------------------------------------
# Classes of a dataset as a new task


def test_select_classes_relabels_in_the_given_order_and_keeps_file_order(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([5, 0, 9, 5, 7, 9, 1, 7, 5, 0])
    images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    write_cifar10(tmp_path, "test", images, labels)
    split = load_split("cifar10", "test", tmp_path, classes=[9, 5])
    np.testing.assert_array_equal(split.labels, [1, 0, 1, 0, 1])  # 9 -> 0, 5 -> 1
    np.testing.assert_array_equal(split.images, images[[0, 2, 3, 5, 8]])
    assert split.info.num_classes == 2
    subset = load_split("cifar10", "test", tmp_path, examples=2, classes=[9, 5])
    np.testing.assert_array_equal(subset.labels, [1, 0])  # the first of each class
    np.testing.assert_array_equal(subset.images, images[[0, 2]])
    with pytest.raises(DataError, match="out of range"):
        select_classes(split, [3])
    assert class_names("cifar10", [9, 2]) == ("truck", "bird")


# --------------------------------------------------------------------------
# Logit correlations


def test_correlation_maps_match_numpy_and_are_zero_for_a_model_against_itself(tmp_path):
    teacher, student = tiny(1, batch_norm=False), tiny(2, batch_norm=False)
    ds, x = batches(toy_split(45, 3, "test"))
    y = toy_split(45, 3, "test").labels
    attack = PGD(steps=2, random_start=False)
    summary, matrices = correlation_maps(teacher, {"self": teacher, "other": student}, ds,
                                         attack, str(tmp_path), labels=["a", "b", "c"])
    assert summary["self"]["natural"] == 0.0 and summary["self"]["adversarial"] == 0.0

    def corr(model, adversarial):
        inputs = attack(model, x, y).numpy() if adversarial else x
        return pearson(model(inputs).numpy().astype(np.float64))

    for adversarial, key in ((False, "natural"), (True, "adversarial")):
        expected = np.abs(corr(teacher, adversarial) - corr(student, adversarial))
        np.testing.assert_allclose(matrices[key], corr(teacher, adversarial), atol=1e-6)
        assert summary["other"][key] == pytest.approx(expected.mean(), abs=1e-6)
        assert summary["other"][key] > 1e-3
        saved = np.load(tmp_path / "correlation_other.npz")[f"difference_{key}"]
        np.testing.assert_allclose(saved, expected, atol=1e-6)
    for name in ("self", "other"):
        assert summary[name]["heatmap"] == f"correlation_{name}.png"
        assert png_size(tmp_path / f"correlation_{name}.png") == plots.figure_pixels(
            plots.HEATMAP_PANEL, 2)


# --------------------------------------------------------------------------
# t-SNE


def test_targeted_attack_moves_predictions_towards_the_target():
    model = tiny(1, batch_norm=False)
    x = toy_split(12, 4).images.astype("float32") / 255.0
    target = tf.fill([12], 2)
    towards = PGD(eps=0.3, step_size=0.05, steps=10, random_start=False,
                  objective=TargetedCrossEntropy())
    away = PGD(eps=0.3, step_size=0.05, steps=10, random_start=False)  # CE on label 2

    def p_target(images):
        return tf.nn.softmax(model(images))[:, 2].numpy()

    before = p_target(x)
    up, down = p_target(towards(model, x, target)), p_target(away(model, x, target))
    # (examples whose features are all cut by the ReLU have no gradient and stay put)
    assert (up >= before - 1e-6).all() and up.mean() > before.mean() + 0.02
    assert (down <= before + 1e-6).all() and down.mean() < before.mean() - 0.02


def test_tsne_maps_draw_one_png_with_a_panel_per_model_and_true_numbers(tmp_path):
    split = toy_split(60, 5, "test")
    models = {"a": tiny(1, batch_norm=False), "b": tiny(2, batch_norm=False, width=6)}
    attack = PGD(eps=0.1, steps=3, step_size=0.05, random_start=False,
                 objective=TargetedCrossEntropy())
    maps = tsne_maps(models, split, 0, 1, attack, str(tmp_path), examples=15, perplexity=5,
                     names=("zero", "one"))
    assert png_size(tmp_path / "tsne.png") == plots.figure_pixels(plots.SCATTER_PANEL, 2)
    x_source = split.images[split.labels == 0][:15].astype("float32") / 255.0
    for name, model in models.items():
        result = maps[name]
        assert result["points"].shape == (45, 2) and np.isfinite(result["points"]).all()
        np.testing.assert_array_equal(np.bincount(result["groups"]), [15, 15, 15])
        predicted = np.argmax(model(attack(model, x_source, tf.fill([15], 1))).numpy(), -1)
        assert result["adv_to_target"] == pytest.approx(np.mean(predicted == 1))
        assert result["adv_still_source"] == pytest.approx(np.mean(predicted == 0))
    # A map computed before is reused, not recomputed.
    again = tsne_maps({"a": models["a"]}, split, 0, 1, attack, str(tmp_path), filename="a.png",
                      examples=15, maps={"a": maps["a"]})
    assert again["a"] is maps["a"]
    assert png_size(tmp_path / "a.png") == plots.figure_pixels(plots.SCATTER_PANEL, 1)


def test_tsne_refuses_a_class_without_examples():
    from gacd_tf.analysis.tsne import class_images

    with pytest.raises(DataError, match="class 7"):
        class_images(toy_split(9, 0), 7, 5)


# --------------------------------------------------------------------------
# Sweeps

FAKE_PROGRAM = textwrap.dedent("""
    import json, os, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    value, out = args["nce_k"], args["model_dir"]
    assert args["flagfile"] == "base.cfg"
    if value == "bad":
        print("some log line")
        print("error: --nce_k=bad is not a number", file=sys.stderr)
        sys.exit(1)
    if value == "0":
        sys.exit(0)  # "succeeds" without metrics
    k = float(value)
    metrics = {"natural_accuracy": k / 100, "robust_accuracy": k / 200}
    if k > 3:
        metrics["before_aft"] = {"natural_accuracy": 0.5, "robust_accuracy": 0.1}
    json.dump(metrics, open(os.path.join(out, "metrics.json"), "w"))
""")


def test_sweep_collects_every_grid_point_and_marks_failed_ones(tmp_path):
    script = tmp_path / "fake.py"
    script.write_text(FAKE_PROGRAM)
    out = tmp_path / "sweep"
    lines = []
    rows = run_sweep("nce_k", ["1", "bad", "4", "0", "2"], str(out), ["--flagfile=base.cfg"],
                     program=(sys.executable, str(script)), log=lines.append)
    assert [r["value"] for r in rows] == ["1", "bad", "4", "0", "2"]
    assert [r["status"] for r in rows] == ["ok", "failed", "ok", "failed", "ok"]
    assert rows[1]["error"] == "exit 1: error: --nce_k=bad is not a number"
    assert rows[3]["error"] == "finished without writing metrics.json"
    assert rows[0]["natural_accuracy"] == 0.01 and rows[2]["robust_accuracy"] == 0.02
    assert rows[2]["before_aft_robust_accuracy"] == 0.1
    assert (out / "nce_k=bad" / "sweep.log").read_text().count("error:") == 1
    assert len(lines) == 5 and "failed" in lines[1]
    csv = (out / "sweep_nce_k.csv").read_text().splitlines()
    assert csv[0].startswith("nce_k,status,natural_accuracy") and len(csv) == 6
    assert csv[2].startswith("bad,failed,,")
    table = (out / "sweep_nce_k.md").read_text()
    assert "3 of 5 runs done" in table and table.count("| failed |") == 2
    assert json.loads((out / "sweep_nce_k.json").read_text())["rows"] == rows
    assert png_size(out / "sweep_nce_k.png") == plots.figure_pixels(plots.CHART)


def test_tables_and_names():
    table = markdown_table([{"k": 16, "acc": 0.5, "note": "a|b"}, {"k": 64}], ["k", "acc", "note"])
    assert table.splitlines() == ["| k | acc | note |", "| --- | --- | --- |",
                                  "| 16 | 0.5000 | a\\|b |", "| 64 |  |  |"]
    assert model_names(["r/kd/model.keras", "r/gacd/distilled.keras", "x/kd/model.keras"]) == [
        "kd", "gacd_distilled", "kd_2"]


# --------------------------------------------------------------------------
# The program, end to end


def run_analyze(*args, timeout=300):
    return run_program("analyze", *args, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Tiny CIFAR-10 data, an untrained resnet8 'teacher' run and a 'student' run."""
    from gacd_tf.models import build_model

    root = tmp_path_factory.mktemp("analysis")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 30)):
        write_cifar10(root / "data", split, rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                      np.arange(n) % 10)
    teacher_dir, student_dir = root / "teacher", root / "kd"
    for seed, folder in ((0, teacher_dir), (1, student_dir)):
        folder.mkdir()
        keras.utils.set_random_seed(seed)
        build_model("resnet8", num_classes=10).save(folder / "model.keras")
        flags = {"arch": "resnet8", "dataset": "cifar10", "data_dir": str(root / "data"),
                 "epochs": 1, "seed": seed}
        metrics = {"natural_accuracy": 0.1, "robust_accuracy": 0.05, "num_examples": 30,
                   "attack": {"attack": "pgd", "steps": 20}, "model": "model.keras"}
        if folder == student_dir:
            flags.update(method="kd", teacher=str(teacher_dir / "model.keras"))
            metrics.update(method="kd", teacher_unchanged=True)
        (folder / "flags.json").write_text(json.dumps(flags))
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return root, teacher_dir, student_dir


def test_report_writes_markdown_with_tables_heat_maps_t_sne_and_transfer(tiny_runs):
    root, teacher_dir, student_dir = tiny_runs
    out = root / "report"
    result = run_analyze("report", f"--runs={teacher_dir},{student_dir}", f"--output_dir={out}",
                         "--report_parts=correlation,tsne,transfer", "--attack_steps=1",
                         "--tsne_examples=3", "--classes=5,6,7,8,9", "--epochs=1",
                         "--batch_size=8", "--transfer_attack_steps=1")
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report.md").read_text()
    for text in ("## Results", "| teacher | teacher | pgd-at |", "| kd | student | kd |",
                 "## Transfer (linear evaluation)", "cifar10 classes 5,6,7,8,9",
                 "## Class correlations with the teacher", "![correlation difference]"
                 "(correlation_kd.png)", "![t-SNE of all models](tsne_all.png)",
                 "(tsne_kd.png)", "(transfer.png)", "## Flags that differ between runs"):
        assert text in report, text
    numbers = json.loads((out / "report.json").read_text())
    corr = numbers["correlation"]["students"]["kd"]
    assert corr["teacher"] == "teacher" and 0 < corr["natural"] < 2
    assert numbers["correlation"]["num_examples"] == 30
    transfer = {row["model"]: row for row in numbers["transfer"]["models"]}
    assert set(transfer) == {"teacher", "kd"}
    assert transfer["kd"]["num_examples"] == 15 and transfer["kd"]["backbone_unchanged"]
    assert set(numbers["tsne"]["models"]) == {"teacher", "kd"}
    assert png_size(out / "correlation_kd.png") == plots.figure_pixels(plots.HEATMAP_PANEL, 2)
    assert png_size(out / "tsne_all.png") == plots.figure_pixels(plots.SCATTER_PANEL, 2)
    assert png_size(out / "tsne_kd.png") == plots.figure_pixels(plots.SCATTER_PANEL, 2)
    assert png_size(out / "transfer.png") == plots.figure_pixels(plots.CHART)
    assert (out / "probe_kd" / "probe.keras").is_file()
    assert (out / "probe_kd" / "probe_log.csv").is_file()
    assert json.loads((out / "flags.json").read_text())["command"] == "report"


def test_sweep_program_runs_gacd_distill_per_value_and_keeps_the_failed_one(tiny_runs,
                                                                            tmp_path):
    root, teacher_dir, _ = tiny_runs
    base = tmp_path / "base.cfg"
    base.write_text("\n".join([
        f"--teacher={teacher_dir / 'model.keras'}", "--method=kd", "--arch=resnet8",
        f"--data_dir={root / 'data'}", "--epochs=1", "--batch_size=8", "--attack_steps=1",
        "--val_examples=0", "--verbose=0", "--test_examples=10"]) + "\n")
    out = tmp_path / "sweep"
    result = run_analyze("sweep", f"--distill_flagfile={base}", "--sweep_flag=kd_temperature",
                         "--sweep_values=4,-1", f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "sweep_kd_temperature.json").read_text())["rows"]
    assert [(r["value"], r["status"]) for r in rows] == [("4", "ok"), ("-1", "failed")]
    assert 0 <= rows[0]["robust_accuracy"] <= 1
    assert "kd_temperature" in rows[1]["error"]
    metrics = json.loads((out / "kd_temperature=4" / "metrics.json").read_text())
    assert metrics["settings"]["kd_temperature"] == 4.0 and metrics["num_examples"] == 10
    assert "[2/2] kd_temperature=-1: failed" in result.stdout


@pytest.mark.parametrize("args, message", [
    ([], "name one command first"),
    (["plot"], "name one command first"),
    (["report", "--runs={missing}"], "does not exist"),
    (["tsne", "--models={model}", "--tsne_classes=3,3"], "names one class twice"),
    (["sweep", "--distill_flagfile={missing}", "--sweep_flag=nce_k", "--sweep_values=1"],
     "does not exist"),
])
def test_bad_input_fails_with_one_clear_line(tiny_runs, tmp_path, args, message):
    _, teacher_dir, _ = tiny_runs
    fill = dict(missing=tmp_path / "nope", model=teacher_dir / "model.keras")
    result = run_analyze(*[a.format(**fill) for a in args], f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]


def test_analyze_flagfiles_parse():
    files = sorted(f for f in os.listdir(os.path.join(ROOT, "flags"))
                   if f.startswith("analyze_") and f.endswith(".cfg"))
    assert files
    code = ("import sys\nfrom absl import flags\nfrom gacd_tf.programs import analyze\n"
            "analyze.define_flags()\nfor path in sys.argv[1:]:\n"
            "    flags.FLAGS.unparse_flags()\n    flags.FLAGS(['prog', '--flagfile=' + path])\n"
            "    flags.FLAGS.validate_all_flags()\n"
            "    assert flags.FLAGS.distill_flagfile and flags.FLAGS.sweep_flag, path\n"
            "    assert __import__('os').path.isfile(flags.FLAGS.distill_flagfile), path\n"
            "print('parsed', len(sys.argv) - 1)")
    result = subprocess.run([sys.executable, "-c", code, *[f"flags/{f}" for f in files]],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"parsed {len(files)}" in result.stdout
