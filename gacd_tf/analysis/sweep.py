"""Sweeps: one distillation flag over a grid, one program run per value, one table."""

import json
import os
import subprocess
import sys
import time

from gacd_tf.analysis import plots
from gacd_tf.analysis.tables import csv_text, markdown_table, slug, write_text

DISTILL = (sys.executable, "-m", "gacd_tf.programs.distill")
SWEEP_COLUMNS = ["value", "status", "natural_accuracy", "robust_accuracy",
                 "before_aft_natural_accuracy", "before_aft_robust_accuracy", "seconds",
                 "model_dir", "error"]


def last_error_line(text):
    """The last ``error: ...`` line of a program's output, else its last non-empty line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else "no output"


def run_point(flag, value, output_dir, base_args=(), program=DISTILL, timeout=None):
    """Runs ``program`` once with ``--FLAG=VALUE --model_dir=OUTPUT_DIR/FLAG=VALUE``.

    The program's output goes to ``sweep.log`` in its folder. A run counts as
    done only if it exits 0 *and* leaves a ``metrics.json``; otherwise the
    row is ``failed`` and ``error`` holds the last error line.

    Returns:
        dict with ``value``, ``status`` ("ok" or "failed"), ``model_dir``,
        ``seconds``, ``error`` and, when done, the metrics.
    """
    model_dir = os.path.join(output_dir, f"{flag}={slug(value)}")
    os.makedirs(model_dir, exist_ok=True)
    command = [*program, *base_args, f"--{flag}={value}", f"--model_dir={model_dir}"]
    row = {"value": value, "status": "failed", "model_dir": model_dir, "error": None}
    log_path = os.path.join(model_dir, "sweep.log")
    start = time.time()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        try:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = None
    row["seconds"] = round(time.time() - start, 1)
    with open(log_path) as log:
        output = log.read()
    metrics_path = os.path.join(model_dir, "metrics.json")
    if code is None:
        row["error"] = f"timed out after {timeout} s"
    elif code != 0:
        row["error"] = f"exit {code}: {last_error_line(output)}"
    elif not os.path.isfile(metrics_path) or os.path.getmtime(metrics_path) < start:
        row["error"] = "finished without writing metrics.json"
    else:
        with open(metrics_path) as f:
            metrics = json.load(f)
        before = metrics.get("before_aft") or {}
        row.update(status="ok", natural_accuracy=metrics.get("natural_accuracy"),
                   robust_accuracy=metrics.get("robust_accuracy"),
                   before_aft_natural_accuracy=before.get("natural_accuracy"),
                   before_aft_robust_accuracy=before.get("robust_accuracy"))
    return row


def run_sweep(flag, values, output_dir, base_args=(), program=DISTILL, timeout=None,
              log=print):
    """Runs one program per grid value, one after another, and tabulates the results.

    Every grid value gets a row, in grid order: a failed run (non-zero exit,
    timeout, or no ``metrics.json``) is marked ``failed`` with its last error
    line, never dropped. Writes ``sweep_<flag>.md``, ``sweep_<flag>.csv``,
    ``sweep_<flag>.json`` and ``sweep_<flag>.png`` (natural and robust
    accuracy against the value; failed values marked on the axis) into
    ``output_dir``.

    Args:
        flag: the swept flag's name without dashes, e.g. ``"nce_k"``.
        values: the grid, as strings (passed to the program as given).
        output_dir: the sweep's folder; run ``v`` writes into ``FLAG=v/``.
        base_args: arguments of every run, e.g. ``["--flagfile=flags/x.cfg"]``.
        program: the command to run (default ``python -m gacd_tf.programs.distill``).
        timeout: seconds per run (None: no limit).
        log: called with one progress line per run.

    Returns:
        The rows (dicts, see :func:`run_point`).

    Example:
    >>> rows = run_sweep("nce_k", ["16", "64"], "runs/sweep",
    ...                  ["--flagfile=flags/quickstart_gacd.cfg"])  # doctest: +SKIP
    """
    os.makedirs(output_dir, exist_ok=True)
    rows = []
    for i, value in enumerate(values):
        row = run_point(flag, value, output_dir, base_args, program, timeout)
        rows.append(row)
        log(f"[{i + 1}/{len(values)}] {flag}={value}: {row['status']}"
            + (f" natural={row['natural_accuracy']:.4f} robust={row['robust_accuracy']:.4f}"
               if row["status"] == "ok" and row["robust_accuracy"] is not None
               else f" ({row['error']})" if row["error"] else ""))
    write_sweep(flag, rows, output_dir)
    return rows


def write_sweep(flag, rows, output_dir):
    """Writes the sweep's table (Markdown, CSV, JSON) and plot; returns the Markdown table."""
    stem = os.path.join(output_dir, f"sweep_{slug(flag)}")
    headers = [flag] + SWEEP_COLUMNS[1:]
    table = markdown_table(rows, SWEEP_COLUMNS, headers=headers)
    done = sum(r["status"] == "ok" for r in rows)
    write_text(stem + ".md", f"# Sweep of --{flag}\n\n{done} of {len(rows)} runs done.\n\n"
               f"{table}")
    write_text(stem + ".csv", csv_text(rows, SWEEP_COLUMNS).replace("value", flag, 1))
    with open(stem + ".json", "w") as f:
        json.dump({"flag": flag, "rows": rows}, f, indent=2, sort_keys=True)
        f.write("\n")
    values = [r["value"] for r in rows]
    series = {"natural": [r.get("natural_accuracy") for r in rows],
              "robust": [r.get("robust_accuracy") for r in rows]}
    if any(r.get("before_aft_robust_accuracy") is not None for r in rows):
        series["natural before AFT"] = [r.get("before_aft_natural_accuracy") for r in rows]
        series["robust before AFT"] = [r.get("before_aft_robust_accuracy") for r in rows]
    plots.metric_curves(values, series, stem + ".png", xlabel=f"--{flag}",
                        failed=[r["value"] for r in rows if r["status"] != "ok"],
                        title=f"sweep of --{flag}")
    return table
