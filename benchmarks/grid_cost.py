"""What a gacd-reproduce grid costs on this machine, measured before it is run.

Runs every run of the grid's first seed (the teacher and each row) for one
epoch (``--epochs=1`` appended to every run; AFT keeps its epochs and the
final evaluation its examples), then prints, per run, the measured seconds
of one training epoch, of AFT and of the rest (start-up, the final PGD and
AutoAttack evaluations), and projects the wall time of the whole grid:
epochs x (seconds of one epoch) + AFT + the rest, for every seed.

The projection errs both ways. A one-epoch run's training seconds hold the
phase's one-off costs (tracing, the first checkpoint), which it multiplies
by the epochs (compare Keras' epoch line in the run's log). And AutoAttack
spends its passes on the points still robust, so the final evaluation of a
trained, more robust model takes longer than that of the one-epoch model
measured.

The one-epoch runs go to ``--output_dir`` (resumable as gacd-reproduce's:
a finished run is skipped), not to the grid's own folder.

Example:
    python benchmarks/grid_cost.py --grid=flags/reproduce/cpu_long.cfg \\
        --output_dir=runs/cpu_long_cost --data_dir=../shared/data/cifar10
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses  # noqa: E402
import json  # noqa: E402

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """The script's flags (defined when run, so the tests can import its functions)."""
    flags.DEFINE_string("grid", None, "The grid (an INI file of flags/reproduce/).")
    flags.DEFINE_string("output_dir", None, "Folder of the one-epoch runs.")
    flags.DEFINE_string("data_dir", os.environ.get("GACD_DATA_DIR"),
                        "The dataset's folder, passed to every run (default $GACD_DATA_DIR).")
    flags.DEFINE_bool("measure_only", False, "Print the projection from the one-epoch runs "
                      "already in --output_dir; run nothing.")


def full_epochs(command):
    """The ``--epochs`` a run's argv (its flagfiles expanded) gives, last one winning."""
    expanded = flags.FlagValues().read_flags_from_files(list(command), force_gnu=True)
    epochs = [a.split("=", 1)[1] for a in expanded if a.startswith("--epochs=")]
    if not epochs:
        raise ValueError(f"no --epochs in {' '.join(command)}")
    return int(epochs[-1])


def run_cost(metrics, wall_seconds, epochs):
    """One run's measured parts and its projected wall seconds at ``epochs`` epochs.

    Args:
        metrics: the one-epoch run's metrics.json (``train_seconds``: a number
            for a teacher, ``{"distill": s, "aft": s}`` for a student).
        wall_seconds: the one-epoch run's wall seconds (gacd-reproduce's ledger).
        epochs: the epochs of the real run.
    """
    train = metrics["train_seconds"]
    if isinstance(train, dict):
        epoch, aft = float(train.get("distill", 0.0)), float(train.get("aft", 0.0))
    else:
        epoch, aft = float(train), 0.0
    rest = wall_seconds - epoch - aft
    return {"epochs": epochs, "epoch_seconds": epoch, "aft_seconds": aft,
            "rest_seconds": rest, "projected_seconds": epochs * epoch + aft + rest}


def probe_grid(grid):
    """The grid that measures ``grid``: its first seed only, ``--epochs=1`` after every flag."""
    return dataclasses.replace(grid, seeds=grid.seeds[:1],
                               extra_args=[*grid.extra_args, "--epochs=1"])


def projection(grid, output_dir, data_dir=None):
    """Per run of the first seed, :func:`run_cost`; and the grid's projected total."""
    from gacd_tf.programs import reproduce

    real = {r["key"]: r for r in reproduce.planned_runs(grid, output_dir, data_dir)}
    probe = probe_grid(grid)
    ledger_path = os.path.join(output_dir, reproduce.LEDGER)
    if not os.path.exists(ledger_path):
        raise app.UsageError(f"no one-epoch runs in {output_dir} ({reproduce.LEDGER} is "
                             "missing): run without --measure_only first")
    ledger = json.load(open(ledger_path))
    rows, total = [], 0.0
    for run in reproduce.planned_runs(probe, output_dir, data_dir):
        path = os.path.join(run["model_dir"], "metrics.json")
        if run["key"] not in ledger or not os.path.exists(path):
            raise app.UsageError(f"{run['name']} has not finished its one epoch in "
                                 f"{output_dir}: run without --measure_only")
        metrics = json.load(open(path))
        cost = run_cost(metrics, ledger[run["key"]], full_epochs(real[run["key"]]["command"][3:]))
        copies = 1 if run["kind"] == "teacher" else len(grid.seeds)
        total += copies * cost["projected_seconds"]
        rows.append({"name": run["name"], "copies": copies, **cost})
    return rows, total


def main(argv):
    del argv
    from gacd_tf.programs import reproduce

    if not FLAGS.grid or not FLAGS.output_dir:
        raise app.UsageError("--grid and --output_dir are required")
    grid = reproduce.read_grid(FLAGS.grid)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    if not FLAGS.measure_only:
        reproduce.execute(reproduce.planned_runs(probe_grid(grid), FLAGS.output_dir,
                                                 FLAGS.data_dir), FLAGS.output_dir)
    rows, total = projection(grid, FLAGS.output_dir, FLAGS.data_dir)
    print(f"\n{FLAGS.grid}: one epoch of each run measured (seed {grid.seeds[0]}), "
          f"projected to the grid's epochs and {len(grid.seeds)} seed(s)")
    print(f"{'run':<34}{'epochs':>7}{'s/epoch':>9}{'AFT s':>8}{'rest s':>8}{'run h':>8}"
          f"{'x':>3}")
    for r in rows:
        print(f"{r['name']:<34}{r['epochs']:>7}{r['epoch_seconds']:>9.1f}"
              f"{r['aft_seconds']:>8.1f}{r['rest_seconds']:>8.0f}"
              f"{r['projected_seconds'] / 3600:>8.2f}{r['copies']:>3}")
    print(f"projected wall time of the grid: {total / 3600:.1f} h (high by the one-off "
          "costs in the one-epoch seconds; low by the longer AutoAttack of trained models)")


if __name__ == "__main__":
    define_flags()
    app.run(main)
