"""benchmarks/grid_cost.py's projection: a grid's wall time from one-epoch runs, checked
by hand-computed sums on fabricated runs (nothing is trained)."""

import importlib.util
import json
import os

import pytest

from gacd_tf.programs import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def grid_cost():
    spec = importlib.util.spec_from_file_location(
        "grid_cost", os.path.join(ROOT, "benchmarks", "grid_cost.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_epochs_expands_flagfiles_and_the_last_one_wins(grid_cost, tmp_path):
    (tmp_path / "common.cfg").write_text("--epochs=30\n--batch_size=8\n")
    (tmp_path / "row.cfg").write_text(f"--flagfile={tmp_path / 'common.cfg'}\n--epochs=12\n")
    assert grid_cost.full_epochs([f"--flagfile={tmp_path / 'common.cfg'}"]) == 30
    assert grid_cost.full_epochs([f"--flagfile={tmp_path / 'row.cfg'}"]) == 12
    assert grid_cost.full_epochs([f"--flagfile={tmp_path / 'row.cfg'}", "--epochs=5"]) == 5
    with pytest.raises(ValueError, match="no --epochs"):
        grid_cost.full_epochs(["--batch_size=8"])


def test_run_cost_scales_only_the_epoch(grid_cost):
    teacher = grid_cost.run_cost({"train_seconds": 10.0}, 25.0, epochs=30)
    assert teacher == {"epochs": 30, "epoch_seconds": 10.0, "aft_seconds": 0.0,
                       "rest_seconds": 15.0, "projected_seconds": 315.0}
    student = grid_cost.run_cost({"train_seconds": {"distill": 4.0, "aft": 6.0}}, 20.0, 30)
    assert student["rest_seconds"] == 10.0
    assert student["projected_seconds"] == 30 * 4.0 + 6.0 + 10.0


def write_grid(folder, grid_section, extra_methods=""):
    """A grid of a 20-epoch teacher and one row, A+AFT (10 epochs, 1 of AFT), read back."""
    (folder / "teacher.cfg").write_text("--epochs=20\n")
    (folder / "a.cfg").write_text("--epochs=10\n--aft_epochs=1\n")
    (folder / "grid.cfg").write_text(
        f"[grid]\n{grid_section}\n[teacher]\nflagfile = {folder / 'teacher.cfg'}\n\n"
        f"[methods]\nA+AFT = {folder / 'a.cfg'}\n{extra_methods}")
    return reproduce.read_grid(str(folder / "grid.cfg"))


def test_projection_counts_the_teacher_once_and_each_row_per_seed(grid_cost, tmp_path):
    grid = write_grid(tmp_path, "seeds = 0, 1, 2\n", "A = before_aft of A+AFT\n")
    out = tmp_path / "runs"
    with pytest.raises(grid_cost.app.UsageError, match="no one-epoch runs"):
        grid_cost.projection(grid, str(out))
    # One-epoch runs of seed 0 as grid_cost leaves them: metrics.json and the ledger.
    for folder, train in (("teacher", 3.0), ("a_plus_aft/seed0", {"distill": 2.0, "aft": 5.0})):
        os.makedirs(out / folder)
        (out / folder / "metrics.json").write_text(json.dumps({"train_seconds": train}))
    (out / reproduce.LEDGER).write_text(json.dumps({"teacher": 10.0}))
    with pytest.raises(grid_cost.app.UsageError, match="A\\+AFT seed 0 has not finished"):
        grid_cost.projection(grid, str(out))  # the student's ledger entry is still missing
    (out / reproduce.LEDGER).write_text(json.dumps({"teacher": 10.0, "a_plus_aft/seed0": 9.0}))
    rows, total = grid_cost.projection(grid, str(out))
    assert [(r["name"], r["epochs"], r["copies"]) for r in rows] == [
        ("teacher", 20, 1), ("A+AFT seed 0", 10, 3)]
    teacher = 20 * 3.0 + (10.0 - 3.0)
    student = 10 * 2.0 + 5.0 + (9.0 - 2.0 - 5.0)
    assert total == pytest.approx(teacher + 3 * student)


def test_the_probe_grid_runs_the_first_seed_for_one_epoch(grid_cost, tmp_path):
    grid = write_grid(tmp_path, "seeds = 3, 4\nextra_args = --verbose=2\n")
    probe = grid_cost.probe_grid(grid)
    assert (grid.seeds, grid.extra_args) == ([3, 4], ["--verbose=2"])  # left as it was
    runs = reproduce.planned_runs(probe, str(tmp_path / "runs"))
    assert [r["name"] for r in runs] == ["teacher", "A+AFT seed 3"]
    for run in runs:
        assert "--verbose=2" in run["command"]
        assert grid_cost.full_epochs(run["command"][3:]) == 1, run["name"]
    full = reproduce.planned_runs(grid, str(tmp_path / "runs"))
    assert [grid_cost.full_epochs(r["command"][3:]) for r in full] == [20, 10, 10]
