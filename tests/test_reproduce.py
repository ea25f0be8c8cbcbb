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
from program_helpers import program_env, run_program, write_tiny_cifar10

from gacd_tf.errors import ConfigError
from gacd_tf.programs import reproduce

ROOT = pathlib.Path(__file__).resolve().parents[1]


def reproduce_cli(*args, cwd=ROOT, timeout=600):
    return run_program("reproduce", *args, cwd=cwd, timeout=timeout)


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
             structure=None, validation=None):
    model_dir.mkdir(parents=True)
    metrics = {"natural_accuracy": natural, "robust_accuracy": pgd, "num_examples": 100,
               "attack": {"attack": "pgd", "steps": 20, "eps": 8 / 255},
               "train_seconds": seconds}
    if autoattack is not None:
        metrics["autoattack"] = {"robust_accuracy": autoattack, "num_examples": 50}
    if before is not None:
        metrics["before_aft"] = before
    columns = {}
    if cosines is not None:
        metrics["bank_cross_class_cosine"] = cosines[-1]
        columns["bank_cross_class_cosine"] = cosines
        if structure is not None:
            columns["bank_centred_within_class_cosine"] = structure
    # validation: (distillation epochs, AFT epochs) of val_adv_accuracy, as Keras logs it.
    if validation is not None:
        columns["val_adv_accuracy"] = validation[0]
        if validation[1]:
            with open(model_dir / "aft_log.csv", "w") as f:
                f.write("epoch,loss,val_adv_accuracy\n")
                f.writelines(f"{e},1.0,{v}\n" for e, v in enumerate(validation[1]))
    if columns:
        with open(model_dir / "distill_log.csv", "w") as f:
            f.write("epoch," + ",".join(columns) + ",loss\n")
            f.writelines(f"{e}," + ",".join(str(v[e]) for v in columns.values()) + ",1.0\n"
                         for e in range(len(next(iter(columns.values())))))
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
        # Validation PGD by epoch: two distillation epochs, then one of AFT.
        validation = ([0.1 + seed / 100, 0.2 + seed / 100], [0.3 + seed / 100])
        fake_run(out / "gacd_plus_aft" / f"seed{seed}", nat, pgd, {"distill": 20.0, "aft": 5.0},
                 autoattack=aa, before=before, cosines=cos, structure=structure,
                 validation=validation)

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
    # The budget curve: distillation then AFT epochs, mean over the seeds; KD logged none.
    assert results["budget"] == {"GACD+AFT": [pytest.approx(0.11), pytest.approx(0.21),
                                              pytest.approx(0.31)]}

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
    assert "Budget curve" in text and (out / "budget.png").read_bytes()[:4] == b"\x89PNG"


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
    with_aft = sorted((ROOT / "flags/reproduce/cpu").glob("*_aft.cfg"))
    assert len(with_aft) == 5, with_aft  # natural, KD, ARD and GACD's two forms
    for path in with_aft:
        lines = [line for line in path.read_text().splitlines() if line.startswith("--")]
        assert lines[0] == "--flagfile=flags/reproduce/cpu/common.cfg"
        assert not [line for line in lines if line.split("=")[0] in (
            "--epochs", "--aft_epochs", "--train_examples", "--batch_size", "--learning_rate")]
    # The peers with their official recipes scaled to the same 5 epochs, no AFT: only the
    # recipe's own settings (optimiser schedule, weight decay, inner attack) are changed.
    recipe = {"--lr_schedule", "--lr_decay_epochs", "--weight_decay", "--train_attack_steps",
              "--train_step_size"}
    for name in ("rslad", "adaad", "igdm"):
        lines = [line for line in (ROOT / f"flags/reproduce/cpu/{name}.cfg").read_text()
                 .splitlines() if line.startswith("--")]
        assert lines[:3] == ["--flagfile=flags/reproduce/cpu/common.cfg", "--aft_epochs=0",
                             f"--method={name}"]
        assert {line.split("=")[0] for line in lines[3:]} == recipe, name
        assert "--train_attack_steps=10" in lines and "--lr_schedule=step" in lines
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


@pytest.mark.slow
def test_two_shards_of_the_smoke_grid_at_once_from_the_command_line(tmp_path):
    data = write_tiny_cifar10(tmp_path / "data", train=200, test=100)
    out = tmp_path / "out"
    args = ["--grid=flags/reproduce/smoke.cfg", f"--output_dir={out}", f"--data_dir={data}"]
    env = program_env()
    shards = [subprocess.Popen([sys.executable, "-m", "gacd_tf.programs.reproduce", *args,
                                f"--shard={i}/2"], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
              for i in (0, 1)]
    said = [shard.communicate(timeout=1200) for shard in shards]
    assert [shard.returncode for shard in shards] == [0, 0], [err[-3000:] for _, err in said]
    assert "smoke.cfg: shard 0/2: 3 of 5 runs" in said[0][0]
    assert "smoke.cfg: shard 1/2: 2 of 5 runs" in said[1][0]
    assert "shard 1/2: waiting for teacher, trained by shard 0/2" in said[1][0]
    # Every run ran once: one command line in each run's log, five logs.
    logs = sorted((out / "logs").glob("*.log"))
    assert len(logs) == 5
    assert all(log.read_text().count("\n$ ") == 1 for log in logs)
    assert not (out / "results.md").exists()  # shards write no table
    result = reproduce_cli(*args, "--results_only", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all 5 runs finished" in result.stdout
    with open(out / "results.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["teacher", "natural", "GACD", "GACD+AFT"]
    assert rows["natural"]["seeds"] == "2" and rows["GACD+AFT"]["seeds"] == "2"


def test_reproduce_starts_without_tensorflow():
    """gacd-reproduce only runs the other programs: importing it loads no TensorFlow."""
    import subprocess
    import sys

    code = ("import sys\nimport gacd_tf.programs.reproduce\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "False False", out.stderr[-2000:]


# ----------------------------------------------------------------------------- --shard=I/N
@pytest.mark.parametrize("shard, results_only, fragment", [
    ("3/2", False, "--shard=3/2: I must be 0 to N-1 (here 0 to 1)"),
    ("2/2", False, "I must be 0 to N-1"),
    ("x", False, "--shard=x: give I/N, e.g. 0/4"),
    ("-1/2", False, "give I/N"),
    ("1/0", False, "N, the number of copies, must be at least 1"),
    ("0/2", True, "--results_only tabulates every shard's runs: leave out --shard=0/2"),
])
def test_bad_shard_flags_are_refused(shard, results_only, fragment):
    assert fragment in reproduce.shard_flag_problem(shard, results_only)


def test_good_shard_flags_pass():
    assert reproduce.shard_flag_problem("1/4") is None
    assert reproduce.shard_flag_problem(None, True) is None
    assert reproduce.parse_shard("0/1") == (0, 1) and reproduce.parse_shard("7/8") == (7, 8)


def test_a_bad_shard_flag_stops_the_program_with_one_error_line(tmp_path):
    # The validator is wired to the flag. A fresh interpreter, not the program server:
    # this program starts without TensorFlow (fast), and the server's children print
    # what its TensorFlow import printed first (TensorFlow 2.21 writes its oneDNN line
    # to stderr whatever TF_CPP_MIN_LOG_LEVEL says), as no fresh run of it would.
    result = subprocess.run(
        [sys.executable, "-m", "gacd_tf.programs.reproduce", "--grid=flags/reproduce/smoke.cfg",
         f"--output_dir={tmp_path}/o", "--shard=3/2"],
        capture_output=True, text=True, timeout=60, env=program_env(), cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --shard=3/2: I must be 0 to N-1 (here 0 to 1) (fix the flag; --helpshort "
        "lists them)"]
    assert not (tmp_path / "o").exists()


def test_runs_go_to_shards_by_identity_evenly_and_stay_there(tmp_path, monkeypatch):
    grid = reproduce.read_grid(str(write_grid(tmp_path, GRID)))
    runs = reproduce.planned_runs(grid, "OUT")
    keys = [run["key"] for run in runs]
    assert len(set(keys)) == len(keys) == 7  # one identity per run
    for count in (1, 2, 3, 5):
        shares = [[r["key"] for r in reproduce.shard_runs(runs, i, count,
                                                          reproduce.split(runs, count))]
                  for i in range(count)]
        assert sorted(sum(shares, [])) == sorted(keys)  # every run on exactly one shard
        assert max(map(len, shares)) - min(map(len, shares)) <= 1  # evenly
    # The paper grid's teachers go to different shards (they train at the same time).
    monkeypatch.chdir(ROOT)
    paper = reproduce.planned_runs(reproduce.read_grid("flags/reproduce/paper.cfg"), "OUT")
    owners = reproduce.split(paper, 8)
    teachers = [owners[r["key"]] for r in paper if r["key"].startswith("teacher")]
    assert len(teachers) == 4 and len(set(teachers)) == 4
    # Runs the record lacks go by a fixed hash of their identity (the same everywhere).
    assert [reproduce.shard_of(k, 2) for k in keys] == [0, 1, 1, 1, 0, 0, 0]
    # The first shard records the split; an edited grid (rows reordered, a seed added,
    # every run at another position) leaves every recorded run on its shard.
    out = tmp_path / "out"
    out.mkdir()
    recorded = reproduce._record_split(str(out), 3, runs)
    assert recorded == reproduce.split(runs, 3)
    (tmp_path / "edited").mkdir()
    edited = reproduce.planned_runs(reproduce.read_grid(str(write_grid(
        tmp_path / "edited", EDITED_GRID))), "OUT")
    assert [r["key"] for r in edited][:3] == ["teacher", "gacd_plus_aft/seed3", "kd/seed3"]
    assert reproduce._record_split(str(out), 3, edited) == recorded
    for index in range(3):
        before = {r["key"] for r in reproduce.shard_runs(runs, index, 3, recorded)}
        after = {r["key"] for r in reproduce.shard_runs(edited, index, 3, recorded)}
        assert before == after - {k for k in after if k.endswith("seed3")}
        assert {k for k in after if k.endswith("seed3")} == {
            k for k in ("kd/seed3", "gacd_plus_aft/seed3") if reproduce.shard_of(k, 3) == index}


EDITED_GRID = """
[grid]
seeds = 3, 2, 1, 0

[teacher]
flagfile = {dir}/teacher.cfg

[methods]
GACD+AFT = {dir}/gacd.cfg
GACD = before_aft of GACD+AFT
KD = {dir}/kd.cfg
"""


class FakePrograms:
    """Stands in for the gacd programs (``subprocess.run`` of gacd-reproduce): writes
    metrics.json from the run's flags, records each call, and notes a student started
    before its teacher's metrics.json (a teacher still training)."""

    def __init__(self, teacher_seconds=0.0, fail=()):
        import threading

        self.calls, self.early, self.lock = [], [], threading.Lock()
        self.teacher_seconds, self.fail = teacher_seconds, set(fail)

    def __call__(self, command, **kwargs):
        import time

        args = dict(a[2:].split("=", 1) for a in command[3:])
        model_dir = pathlib.Path(args["model_dir"])
        key = "/".join(model_dir.parts[-2:]) if "seed" in model_dir.name else model_dir.name
        with self.lock:
            self.calls.append(key)
        if "teacher" in args and not (pathlib.Path(args["teacher"]).parent /
                                      "metrics.json").is_file():
            self.early.append(key)
        model_dir.mkdir(parents=True, exist_ok=True)
        if key in self.fail:  # killed mid-way: checkpoints, no metrics.json
            self.fail.discard(key)
            (model_dir / "checkpoints").mkdir()
            return subprocess.CompletedProcess(command, 1)
        if command[2].endswith("train_teacher"):
            (model_dir / "model.keras").write_text("epoch 1 of 2")  # saved every epoch
            time.sleep(self.teacher_seconds)
        seed = int(args.get("seed", 0))
        gacd = "gacd" in args["flagfile"]
        metrics = {"natural_accuracy": 0.6 + seed / 100 + 0.1 * gacd,
                   "robust_accuracy": 0.2 + seed / 50, "num_examples": 100,
                   "train_seconds": {"distill": 10.0 + seed}}
        if gacd:
            metrics["before_aft"] = {"natural_accuracy": 0.7, "robust_accuracy": 0.1 + seed / 10}
        (model_dir / "metrics.json").write_text(json.dumps(metrics))
        return subprocess.CompletedProcess(command, 0)


@pytest.fixture
def shard_grid(tmp_path, monkeypatch):
    grid = reproduce.read_grid(str(write_grid(tmp_path, GRID)))
    monkeypatch.setattr(reproduce, "POLL_SECONDS", 0.02)
    return grid


def _fake(monkeypatch, **kwargs):
    fake = FakePrograms(**kwargs)
    monkeypatch.setattr(reproduce.subprocess, "run", fake)
    return fake


def _table(results, out):
    reproduce.write_results(results, str(out))
    text = (out / "results.md").read_text()
    results = dict(results, wall_seconds=None)
    return results, (out / "results.csv").read_text(), text[:text.index("Wall time")]


def test_two_shards_at_once_run_every_run_once_and_tabulate_as_one_process(
        shard_grid, tmp_path, monkeypatch):
    import threading

    out = tmp_path / "sharded"
    fake = _fake(monkeypatch, teacher_seconds=0.3)
    runs = reproduce.planned_runs(shard_grid, str(out))
    errors = []

    def shard(index):
        try:
            reproduce.run_shard(runs, str(out), index, 2, wait_seconds=60)
        except Exception as err:  # noqa: BLE001 (reported by the test)
            errors.append(err)

    threads = [threading.Thread(target=shard, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert sorted(fake.calls) == sorted(r["key"] for r in runs)  # each run once
    assert fake.calls.count("teacher") == 1 and fake.early == []
    owners = reproduce.split(runs, 2)
    for index in (0, 1):  # each shard's wall seconds in its own ledger
        ledger = json.loads((out / f"runs.shard-{index}-of-2.json").read_text())
        assert {owners[k] for k in ledger} == {index}
    assert json.loads((out / "shards.json").read_text()) == {"shards": 2, "runs": owners}
    sharded = reproduce.aggregate(shard_grid, str(out))
    assert sharded["missing"] == []

    single = tmp_path / "single"
    _fake(monkeypatch)
    reproduce.execute(reproduce.planned_runs(shard_grid, str(single)), str(single))
    assert _table(sharded, out) == _table(reproduce.aggregate(shard_grid, str(single)), single)


def test_a_shard_waits_for_the_teacher_another_trains_and_never_trains_it(
        shard_grid, tmp_path, monkeypatch, capsys):
    import threading
    import time

    out = tmp_path / "out"
    fake = _fake(monkeypatch)
    runs = reproduce.planned_runs(shard_grid, str(out))
    owners = reproduce.split(runs, 2)
    index = 1 - owners["teacher"]
    mine = [r["key"] for r in runs if owners[r["key"]] == index]
    assert mine and "teacher" not in mine
    teacher = out / "teacher"

    def train_teacher():  # the other shard: a model saved every epoch, metrics.json last
        teacher.mkdir(parents=True)
        (teacher / "model.keras").write_text("epoch 1 of 2")
        time.sleep(0.4)
        (teacher / "metrics.json").write_text(json.dumps(
            {"natural_accuracy": 0.8, "robust_accuracy": 0.4}))

    other = threading.Thread(target=train_teacher)
    other.start()
    start = time.time()
    reproduce.run_shard(runs, str(out), index, 2, wait_seconds=60)
    other.join()
    assert time.time() - start >= 0.4  # it waited ...
    assert sorted(fake.calls) == sorted(mine) and fake.early == []  # ... not on model.keras
    said = capsys.readouterr().out
    assert (f"waiting for teacher, trained by shard {1 - index}/2 (finished when "
            f"{teacher / 'metrics.json'} exists; its output: {out / 'logs' / 'teacher.log'})"
            in said)
    assert "the teacher is finished; waited" in said

    # A teacher that never finishes: the shard gives up, naming it, and runs no student.
    fresh = tmp_path / "fresh"
    fake = _fake(monkeypatch)
    with pytest.raises(reproduce.TrainingError, match=r"waited .* h \(--teacher_wait_hours\) "
                       r"for the teacher teacher, trained by shard"):
        reproduce.run_shard(reproduce.planned_runs(shard_grid, str(fresh)), str(fresh), index,
                            2, wait_seconds=0.1)
    assert fake.calls == []


def test_a_restarted_shard_resumes_its_own_runs_only(shard_grid, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    runs = reproduce.planned_runs(shard_grid, str(out))
    owners = reproduce.split(runs, 2)
    index = owners["teacher"]
    mine = [r["key"] for r in runs if owners[r["key"]] == index]
    assert len(mine) >= 3
    fake = _fake(monkeypatch, fail=[mine[2]])  # killed during its third run
    with pytest.raises(reproduce.TrainingError, match="failed"):
        reproduce.run_shard(runs, str(out), index, 2, wait_seconds=60)
    assert fake.calls == mine[:3]
    capsys.readouterr()
    fake = _fake(monkeypatch)
    reproduce.run_shard(runs, str(out), index, 2, wait_seconds=60)
    assert fake.calls == mine[2:]  # the killed run, then the rest: no other shard's run
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert [("finished before, skipped" in line, "resumed and finished" in line)
            for line in said] == ([(True, False)] * 2 + [(False, True)]
                                  + [(False, False)] * (len(mine) - 3))
    theirs = [r for r in runs if r["key"] not in mine]
    assert not any(os.path.exists(r["model_dir"]) for r in theirs)
    results = reproduce.aggregate(shard_grid, str(out))
    assert sorted(results["missing"]) == sorted(r["name"] for r in theirs)
    assert "Not finished yet (3 runs, left out of the table): " in reproduce.markdown(results)

    # A second copy of the shard at the same time, or another number of shards: refused.
    with reproduce._shard_lock(str(out), index, 2):
        with pytest.raises(reproduce.ConfigError, match=rf"--shard={index}/2 is running "
                           "already"):
            reproduce.run_shard(runs, str(out), index, 2, wait_seconds=60)
    with pytest.raises(reproduce.ConfigError, match=r"--shard=I/3, but .* is split into 2 "
                       r"shards .*shards.json.*--shard=I/2"):
        reproduce.run_shard(runs, str(out), 0, 3, wait_seconds=60)
