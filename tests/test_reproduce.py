"""gacd-reproduce: grids parse, the aggregation gives the right mean and sample
standard deviation, the shipped grids and their flagfiles parse, and the smoke
grid runs from the command line and, started again, skips its finished runs."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from program_helpers import write_tiny_cifar10

from gacd_tf.errors import ConfigError
from gacd_tf.programs import reproduce

ROOT = pathlib.Path(__file__).resolve().parents[1]


def reproduce_cli(*args, cwd=ROOT, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("GACD_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "gacd_tf.programs.reproduce", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def write_grid(folder, body):
    for name in ("teacher.cfg", "kd.cfg", "gacd.cfg"):
        (folder / name).write_text("--epochs=1\n")
    path = folder / "grid.cfg"
    path.write_text(body.format(dir=folder))
    return path


GRID = """
# a comment
[grid]
seeds = 0, 1, 2

[teacher]
flagfile = {dir}/teacher.cfg

[methods]
KD = {dir}/kd.cfg
GACD = before_aft of GACD+AFT
GACD+AFT = {dir}/gacd.cfg
"""


def test_mean_std_is_the_sample_standard_deviation():
    values = [0.31, 0.35, 0.27, 0.40]
    mean, std = reproduce.mean_std(values)
    assert mean == pytest.approx(np.mean(values), abs=1e-15)
    assert std == pytest.approx(np.std(values, ddof=1), abs=1e-15)
    assert reproduce.mean_std([0.5, None]) == (0.5, None)  # one value: no deviation
    assert reproduce.mean_std([]) == (None, None)


def fake_run(model_dir, natural, pgd, seconds, autoattack=None, before=None, cosines=None,
             structure=None):
    model_dir.mkdir(parents=True)
    metrics = {"natural_accuracy": natural, "robust_accuracy": pgd, "num_examples": 100,
               "attack": {"attack": "pgd", "steps": 20, "eps": 8 / 255},
               "train_seconds": seconds}
    if autoattack is not None:
        metrics["autoattack"] = {"robust_accuracy": autoattack, "num_examples": 50}
    if before is not None:
        metrics["before_aft"] = before
    if cosines is not None:
        metrics["bank_cross_class_cosine"] = cosines[-1]
        columns = {"bank_cross_class_cosine": cosines}
        if structure is not None:
            columns["bank_centred_within_class_cosine"] = structure
        with open(model_dir / "distill_log.csv", "w") as f:
            f.write("epoch," + ",".join(columns) + ",loss\n")
            f.writelines(f"{e}," + ",".join(str(v[e]) for v in columns.values()) + ",1.0\n"
                         for e in range(len(cosines)))
    (model_dir / "metrics.json").write_text(json.dumps(metrics))


def test_aggregation_of_known_per_run_metrics(tmp_path):
    grid = reproduce.read_grid(str(write_grid(tmp_path, GRID)))
    out = tmp_path / "out"
    fake_run(out / "teacher", 0.80, 0.45, 120.0, autoattack=0.40)
    kd = {0: (0.70, 0.10), 1: (0.72, 0.14)}  # seed 2 of KD never finished
    for seed, (nat, pgd) in kd.items():
        fake_run(out / "kd" / f"seed{seed}", nat, pgd, {"distill": 10.0 + seed})
    gacd = {0: (0.60, 0.30, 0.25, [0.2, 0.3]), 1: (0.62, 0.33, 0.27, [0.1, 0.2]),
            2: (0.58, 0.36, 0.29, [0.3, 0.4])}
    for seed, (nat, pgd, aa, cos) in gacd.items():
        before = {"natural_accuracy": nat + 0.1, "robust_accuracy": pgd - 0.2,
                  "num_examples": 100, "autoattack": {"robust_accuracy": aa - 0.2}}
        # Seed 0 ran before the class-structure column existed; the others log it.
        structure = None if seed == 0 else [0.5 + 0.1 * seed, 0.4]
        fake_run(out / "gacd_plus_aft" / f"seed{seed}", nat, pgd, {"distill": 20.0, "aft": 5.0},
                 autoattack=aa, before=before, cosines=cos, structure=structure)

    results = reproduce.aggregate(grid, str(out))
    rows = {r["method"]: r for r in results["rows"]}
    assert list(rows) == ["teacher", "KD", "GACD", "GACD+AFT"]

    def check(row, values, name):
        assert row[f"{name}_mean"] == pytest.approx(np.mean(values), abs=1e-12)
        if len(values) > 1:
            assert row[f"{name}_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        else:
            assert row[f"{name}_std"] is None

    assert rows["teacher"]["seeds"] == 1 and rows["teacher"]["autoattack_mean"] == 0.40
    check(rows["teacher"], [0.45], "pgd")
    assert rows["KD"]["seeds"] == 2 and rows["KD"]["seed_list"] == [0, 1]
    check(rows["KD"], [0.70, 0.72], "natural")
    check(rows["KD"], [0.10, 0.14], "pgd")
    check(rows["KD"], [10.0, 11.0], "train_seconds")
    assert rows["KD"]["autoattack_mean"] is None
    check(rows["GACD+AFT"], [0.60, 0.62, 0.58], "natural")
    check(rows["GACD+AFT"], [0.30, 0.33, 0.36], "pgd")
    check(rows["GACD+AFT"], [0.25, 0.27, 0.29], "autoattack")
    check(rows["GACD+AFT"], [25.0, 25.0, 25.0], "train_seconds")
    # The before-AFT row reads the same runs' before_aft (and only their distillation time).
    check(rows["GACD"], [0.70, 0.72, 0.68], "natural")
    check(rows["GACD"], [0.10, 0.13, 0.16], "pgd")
    check(rows["GACD"], [0.05, 0.07, 0.09], "autoattack")
    check(rows["GACD"], [20.0, 20.0, 20.0], "train_seconds")
    assert rows["GACD+AFT"]["bank_cross_class_cosine_mean"] == pytest.approx(0.3)
    assert results["collapse"] == {"GACD+AFT": [pytest.approx(0.2), pytest.approx(0.3)]}
    assert results["class_structure"] == {"GACD+AFT": [pytest.approx(0.65), pytest.approx(0.4)]}

    reproduce.write_results(results, str(out))
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert {"method", "seeds", "natural_mean", "natural_std", "pgd_mean", "pgd_std",
            "autoattack_mean", "autoattack_std"} <= set(table[0])
    assert float(table[3]["pgd_std"]) == pytest.approx(np.std([0.30, 0.33, 0.36], ddof=1))
    assert table[0]["pgd_std"] == ""  # the teacher: one run
    assert json.loads((out / "results.json").read_text())["rows"][1]["seeds"] == 2
    text = (out / "results.md").read_text()
    assert "| GACD+AFT | 3 | 0.6000 ± 0.0200 | 0.3300 ± 0.0300 | 0.2700 ± 0.0200 |" in text
    assert "ddof=1" in text and "Collapse detector" in text and "Class structure" in text
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("body, fragment", [
    ("[methods]\nKD = {dir}/kd.cfg\n", "has no [grid] section"),
    ("[grid]\nseeds = 0, x\n[methods]\nKD = {dir}/kd.cfg\n", "seeds must be integers"),
    ("[grid]\nseeds = 1, 1\n[methods]\nKD = {dir}/kd.cfg\n", "distinct integers"),
    ("[grid]\nseeds = 0\n[methods]\nKD = {dir}/nothing.cfg\n", "names '{dir}/nothing.cfg', "
     "which is not a file"),
    ("[grid]\nseeds = 0\n[methods]\nKD = before_aft of GACD\n", "no row 'GACD' with a flagfile"),
    ("[grid]\nseeds = 0\n[teacher]\nflagfile = {dir}/teacher.cfg\nmodel = x\n"
     "[methods]\nKD = {dir}/kd.cfg\n", "takes exactly one of flagfile"),
    ("[grid]\nseeds = 0\n[teacher]\nflagfile = {dir}/teacher.cfg\n", "[methods] is missing"),
    ("[grid]\nseeds = 0\n[students]\nKD = {dir}/kd.cfg\n", "unknown section [students]"),
    ("[grid]\nseeds = 0\n[methods]\nKD AFT = {dir}/kd.cfg\nkd/aft = {dir}/gacd.cfg\n",
     "same run folder"),
])
def test_bad_grids_are_refused_naming_what_to_fix(tmp_path, body, fragment):
    with pytest.raises(ConfigError) as err:
        reproduce.read_grid(str(write_grid(tmp_path, body)))
    assert fragment.format(dir=tmp_path) in str(err.value)


def test_plan_runs_the_teacher_then_each_seed_s_rows_with_the_teacher(tmp_path):
    grid = reproduce.read_grid(str(write_grid(tmp_path, GRID)))
    runs = reproduce.planned_runs(grid, "OUT", "DATA")
    assert [r["name"] for r in runs] == ["teacher"] + [
        f"{m} seed {s}" for s in (0, 1, 2) for m in ("KD", "GACD+AFT")]
    assert runs[0]["command"][2:] == ["gacd_tf.programs.train_teacher",
                                      f"--flagfile={tmp_path}/teacher.cfg",
                                      "--model_dir=OUT/teacher", "--data_dir=DATA"]
    assert runs[3]["command"][2:] == [
        "gacd_tf.programs.distill", f"--flagfile={tmp_path}/kd.cfg", "--seed=1",
        "--model_dir=OUT/kd/seed1", "--teacher=OUT/teacher/model.keras", "--data_dir=DATA"]


PARSE = """
import sys
from absl import flags
from gacd_tf.programs import {module} as program
program.define_flags()
for path in sys.argv[1:]:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["prog", "--flagfile=" + path, "--model_dir=unused", "--teacher=unused.keras"]
                [:3 if "{module}" == "train_teacher" else 4])
    flags.FLAGS.validate_all_flags()
print("parsed", len(sys.argv) - 1)
"""


def test_shipped_grids_and_their_flagfiles_parse(monkeypatch):
    monkeypatch.chdir(ROOT)  # grid paths are relative to the repository root
    teachers, students = set(), set()
    for path in sorted((ROOT / "flags" / "reproduce").glob("*.cfg")):
        grid = reproduce.read_grid(str(path.relative_to(ROOT)))
        assert len(grid.seeds) >= 2 and grid.groups
        for group in grid.groups:
            teachers.update([group.teacher_flagfile] if group.teacher_flagfile else [])
            students.update(row.flagfile for row in group.rows if row.flagfile)
    assert {"flags/reproduce/smoke/teacher.cfg", "flags/reproduce/cpu/teacher.cfg"} <= teachers
    # Flagfiles under flags/reproduce/ (the paper grid's are tests/test_flagfiles.py's).
    for module, files in (("train_teacher", teachers), ("distill", students)):
        files = sorted(f for f in files if f.startswith("flags/reproduce/"))
        result = subprocess.run([sys.executable, "-c", PARSE.format(module=module), *files],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"parsed {len(files)}" in result.stdout


def test_the_cpu_grid_gives_every_row_the_same_budget():
    common = (ROOT / "flags/reproduce/cpu/common.cfg").read_text()
    assert "--epochs=5" in common and "--aft_epochs=1" in common
    for path in (ROOT / "flags/reproduce/cpu").glob("*_aft.cfg"):
        lines = [line for line in path.read_text().splitlines() if line.startswith("--")]
        assert lines[0] == "--flagfile=flags/reproduce/cpu/common.cfg"
        assert not [line for line in lines if line.split("=")[0] in (
            "--epochs", "--aft_epochs", "--train_examples", "--batch_size", "--learning_rate")]
    for name in ("rslad", "adaad"):  # the peers as published: the same budget, no AFT
        lines = [line for line in (ROOT / f"flags/reproduce/cpu/{name}.cfg").read_text()
                 .splitlines() if line.startswith("--")]
        assert lines == ["--flagfile=flags/reproduce/cpu/common.cfg", "--aft_epochs=0",
                         f"--method={name}"]
    teacher = (ROOT / "flags/reproduce/cpu/teacher.cfg").read_text()
    assert "--arch=resnet20" in teacher and "--epochs=15" in teacher


def test_started_again_it_skips_finished_runs_and_rewrites_the_results(tmp_path):
    grid = write_grid(tmp_path, GRID)
    out = tmp_path / "out"
    fake_run(out / "teacher", 0.8, 0.4, 100.0)
    for seed in (0, 1, 2):
        fake_run(out / "kd" / f"seed{seed}", 0.7, 0.1 + seed / 100, {"distill": 1.0})
        fake_run(out / "gacd_plus_aft" / f"seed{seed}", 0.6, 0.3, {"distill": 1.0, "aft": 1.0},
                 before={"natural_accuracy": 0.7, "robust_accuracy": 0.2})
    result = reproduce_cli(f"--grid={grid}", f"--output_dir={out}", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 7 and all("finished before, skipped" in line for line in lines)
    assert lines[0] == "[1/7] teacher: finished before, skipped (natural 0.8000, PGD 0.4000)"
    assert (out / "results.csv").is_file() and not (out / "logs" / "teacher.log").exists()


@pytest.mark.slow
def test_smoke_grid_from_the_command_line_then_again_skipping_finished_runs(tmp_path):
    data = write_tiny_cifar10(tmp_path / "data", train=200, test=100)
    out = tmp_path / "out"
    args = ["--grid=flags/reproduce/smoke.cfg", f"--output_dir={out}", f"--data_dir={data}"]
    result = reproduce_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert [line.split(":")[0] for line in lines] == [
        "[1/5] teacher", "[2/5] natural seed 0", "[3/5] GACD+AFT seed 0", "[4/5] natural seed 1",
        "[5/5] GACD+AFT seed 1"]
    assert all(": finished in " in line for line in lines)
    with open(out / "results.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["teacher", "natural", "GACD", "GACD+AFT"]
    assert rows["natural"]["seeds"] == "2" and rows["GACD+AFT"]["natural_std"] != ""
    gacd = json.loads((out / "gacd_plus_aft" / "seed1" / "metrics.json").read_text())
    assert gacd["settings"]["nce_form"] == "two_sided" and gacd["teacher_unchanged"]
    assert -1 <= gacd["bank_cross_class_cosine"] <= 1
    assert -1 <= gacd["bank_centred_within_class_cosine"] <= 1
    assert "Class structure" in (out / "results.md").read_text()
    assert gacd["teacher"] == str(out / "teacher" / "model.keras")
    assert json.loads((out / "natural" / "seed1" / "flags.json").read_text())["seed"] == 1
    assert (out / "results.md").is_file() and (out / "results.png").is_file()
    # Started again: every run is finished, nothing is trained.
    result = reproduce_cli(*args, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 5 and all("finished before, skipped" in line for line in lines)


def test_reproduce_starts_without_tensorflow():
    """gacd-reproduce only runs the other programs: importing it loads no TensorFlow."""
    import subprocess
    import sys

    code = ("import sys\nimport gacd_tf.programs.reproduce\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "False False", out.stderr[-2000:]
