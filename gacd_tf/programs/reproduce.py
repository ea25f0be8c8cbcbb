"""gacd-reproduce: run a grid of experiments (a teacher, then each method and seed) and
tabulate it: mean and standard deviation over seeds of natural, PGD and AutoAttack
accuracy per method.

    gacd-reproduce --grid=flags/reproduce/cpu.cfg --output_dir=runs/cpu [--data_dir=DIR]

The grid is a small INI file (see flags/reproduce/*.cfg and docs/results.md)::

    [grid]
    seeds = 0, 1, 2
    # optional: arguments appended to every run
    extra_args = --verbose=2

    [teacher]
    # a gacd-train-teacher flagfile (trained once, then distilled from) ...
    flagfile = flags/reproduce/cpu/teacher.cfg
    # ... or an existing teacher instead: model = runs/teacher/model.keras

    [methods]
    # row label = a gacd-distill flagfile, run once per seed ...
    KD+AFT = flags/reproduce/cpu/kd_aft.cfg
    # ... or "before_aft of LABEL": that row's runs evaluated before their AFT
    KD = before_aft of KD+AFT

Several teachers: ``[teacher NAME]`` and ``[methods NAME]`` sections form a group
named NAME (a ``[methods NAME]`` without its teacher section trains without a
teacher, e.g. the natural+AFT control). Paths are relative to the current
folder (the flagfiles include each other that way: run from the repository
root).

Runs, one after another, each a subprocess (``python -m gacd_tf.programs.
train_teacher`` / ``distill --flagfile=F --seed=S --model_dir=DIR/...
--teacher=DIR/teacher/model.keras``), with one progress line each. A run
whose metrics.json exists is finished and skipped; a killed run resumes from
its checkpoints (the programs do that), so the whole grid can be stopped and
started again. Each run's output goes to DIR/logs/. Writes into DIR:
results.md, results.csv, results.json (one row per method: seeds, mean and
standard deviation of the accuracies and of the training seconds; the
teacher's row; the per-epoch collapse detector of GACD rows) and results.png
(bars with error bars). The standard deviation is the *sample* one (ddof=1),
empty for a single seed.

On a cluster, ``--shard=I/N`` (N copies, e.g. a Slurm array or a Kubernetes
indexed Job, sharing --output_dir) gives copy I its share of the runs: the
first shard records in shards.json which shard runs each run, by the run's
identity (its folder, e.g. ``kd/seed1``), and every shard and restart reads
it from there (see :func:`split`). A student whose teacher another shard
trains waits for the teacher's metrics.json (written last, atomically, so
the model beside it is final). Shards write no table; ``--results_only``
makes it from every shard's runs, naming the runs still missing
(docs/cluster.md).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import configparser  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import glob  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

try:  # POSIX: a shard locks its index (a second copy of it is refused)
    import fcntl  # noqa: E402
except ImportError:  # pragma: no cover (Windows)
    fcntl = None

from absl import flags  # noqa: E402

from gacd_tf.errors import ConfigError, TrainingError  # noqa: E402
from gacd_tf.programs import flag_core  # noqa: E402
from gacd_tf.programs.flag_core import FLAGS  # noqa: E402
from gacd_tf.programs.folders import prepare_output_dir  # noqa: E402

# gacd-reproduce only runs the other programs and tabulates their results, so it
# does not load TensorFlow: gacd_tf.analysis (which does, through its package) is
# imported inside the functions that draw and write tables.

BEFORE_AFT = "before_aft of "
LEDGER = "runs.json"  # wall seconds of every run, across invocations
SPLIT = "shards.json"  # N, and which shard runs each run, of an --output_dir split into shards
POLL_SECONDS = 30  # how often a shard looks whether another shard's teacher is finished
MEASURES = (("natural", "natural_accuracy"), ("pgd", "robust_accuracy"),
            ("autoattack", "autoattack"))


def define_flags():
    flag_core.DEFINE_string("grid", None, "The grid: an INI file naming the teacher, the methods' "
                            "gacd-distill flagfiles and the seeds (see flags/reproduce/).")
    flag_core.DEFINE_string("output_dir", None, "Output folder: the runs, their logs and the "
                            "results (created if needed).")
    flag_core.DEFINE_string(
        "data_dir", os.environ.get("GACD_DATA_DIR") or None,
        "Passed to every run: folder with the dataset's official binary files. Defaults to "
        "$GACD_DATA_DIR.")
    flag_core.DEFINE_bool("results_only", False, "Train nothing: tabulate the runs finished so "
                          "far (e.g. while the grid runs in another process, or after every "
                          "shard has finished) and name the runs still missing.")
    flag_core.DEFINE_string(
        "shard", None, "I/N: this is copy I (0 to N-1) of N copies that share --output_dir "
        "(a Slurm array, a Kubernetes indexed Job); it runs only its share of the grid's runs "
        "and writes no table (make it with --results_only once every shard has finished).")
    flag_core.DEFINE_float(
        "teacher_wait_hours", 48.0, "With --shard: how long a shard waits, with nothing else "
        "to run, for a teacher another shard trains before it gives up.", positive=True)
    flags.register_multi_flags_validator(["shard", "results_only"], _check_shard_flags)


def _check_shard_flags(values):
    problem = shard_flag_problem(values["shard"], values["results_only"])
    if problem:
        raise flags.ValidationError(problem)
    return True


def shard_flag_problem(shard, results_only=False):
    """What is wrong with ``--shard`` (and ``--results_only``), or None.

    Example:
    >>> shard_flag_problem("3/2")
    '--shard=3/2: I must be 0 to N-1 (here 0 to 1)'
    """
    if shard is None:
        return None
    try:
        parse_shard(shard)
    except ValueError as err:
        return f"--shard={shard}: {err}"
    if results_only:
        return ("--results_only tabulates every shard's runs: leave out --shard="
                f"{shard}")
    return None


def parse_shard(text):
    """``(I, N)`` of a shard ``"I/N"``: copy I (0 to N-1) of N.

    Raises:
        ValueError: saying what the value should be.

    Example:
    >>> parse_shard("2/8")
    (2, 8)
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ValueError("give I/N, e.g. 0/4: this copy's index I (0 to N-1) of N copies")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ValueError("N, the number of copies, must be at least 1")
    if index >= count:
        raise ValueError(f"I must be 0 to N-1 (here 0 to {count - 1})")
    return index, count


# ----------------------------------------------------------------------------- the grid
@dataclasses.dataclass
class Row:
    """One row of the results table: a flagfile run per seed, or another row before AFT."""

    label: str
    flagfile: str = None
    source: str = None  # label of the row whose runs it reads before AFT


@dataclasses.dataclass
class Group:
    """A teacher (flagfile to train, model to use, or none) and the rows distilled from it."""

    name: str
    teacher_flagfile: str = None
    teacher_model: str = None
    rows: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Grid:
    path: str
    seeds: list
    groups: list
    extra_args: list = dataclasses.field(default_factory=list)


def _section(name):
    """``("teacher" | "methods" | "grid", group name)`` of a section title."""
    kind, _, group = name.strip().partition(" ")
    return kind, group.strip()


def read_grid(path):
    """Parses and checks a grid file (format: this module's docstring).

    Returns:
        a :class:`Grid`.

    Raises:
        ConfigError: naming the file, the section and what to fix.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"--grid={path} is not a file; give a grid such as "
                          "flags/reproduce/smoke.cfg")
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#", ";"),
                                       delimiters=("=",))
    parser.optionxform = str  # keep the row labels as written
    try:
        parser.read(path)
    except configparser.Error as err:
        raise ConfigError(f"--grid={path} is not a valid grid file: "
                          f"{str(err).splitlines()[0]}") from None
    if not parser.has_section("grid"):
        raise ConfigError(f"--grid={path} has no [grid] section (with seeds = 0, 1, 2)")
    grid_keys = set(parser["grid"]) - {"seeds", "extra_args"}
    if grid_keys:
        raise ConfigError(f"--grid={path}: unknown key(s) {', '.join(sorted(grid_keys))} in "
                          "[grid]; it takes seeds and extra_args")
    try:
        seeds = [int(s) for s in parser["grid"].get("seeds", "").replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"--grid={path}: [grid] seeds must be integers, e.g. "
                          "seeds = 0, 1, 2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--grid={path}: [grid] seeds must list distinct integers, e.g. "
                          "seeds = 0, 1, 2")
    groups = {}

    def group(name):
        return groups.setdefault(name, Group(name))

    for title in parser.sections():
        kind, name = _section(title)
        section = parser[title]
        if kind == "grid" and not name:
            continue
        if kind == "teacher":
            keys = set(section)
            if keys not in ({"flagfile"}, {"model"}):
                raise ConfigError(f"--grid={path}: [{title}] takes exactly one of flagfile = "
                                  "(a gacd-train-teacher flagfile) or model = (a .keras file)")
            entry = group(name)
            entry.teacher_flagfile = section.get("flagfile")
            entry.teacher_model = section.get("model")
            _check_file(path, title, entry.teacher_flagfile or entry.teacher_model)
        elif kind == "methods":
            entry = group(name)
            for label, value in section.items():
                value = value.strip()
                if value.startswith(BEFORE_AFT):
                    entry.rows.append(Row(label, source=value[len(BEFORE_AFT):].strip()))
                else:
                    _check_file(path, title, value)
                    entry.rows.append(Row(label, flagfile=value))
        else:
            raise ConfigError(f"--grid={path}: unknown section [{title}]; use [grid], "
                              "[teacher], [methods], [teacher NAME] or [methods NAME]")
    for entry in groups.values():
        where = f"[methods{' ' + entry.name if entry.name else ''}]"
        if not entry.rows:
            raise ConfigError(f"--grid={path}: {where} is missing or empty; list the methods "
                              "as LABEL = FLAGFILE")
        runs = {row.label for row in entry.rows if row.flagfile}
        for row in entry.rows:
            if row.source is not None and row.source not in runs:
                raise ConfigError(f"--grid={path}: {where} {row.label} = {BEFORE_AFT}"
                                  f"{row.source}: no row {row.source!r} with a flagfile in "
                                  f"that section; choose one of: {', '.join(sorted(runs))}")
    folders = [run_folder(g, r) for g in groups.values() for r in g.rows if r.flagfile]
    if len(set(folders)) != len(folders):
        raise ConfigError(f"--grid={path}: two rows map to the same run folder; give them "
                          "labels that differ in letters or digits")
    extra = shlex.split(parser["grid"].get("extra_args", ""))
    return Grid(path, seeds, list(groups.values()), extra)


def _check_file(grid_path, title, path):
    if not path or not os.path.isfile(path):
        raise ConfigError(f"--grid={grid_path}: [{title}] names {path!r}, which is not a file "
                          f"(paths are relative to the current folder, {os.getcwd()}; run "
                          "from the repository root)")


def _slug(text):
    from gacd_tf.analysis.tables import slug

    return slug(text.replace("+", "_plus_")).lower()


def teacher_folder(group):
    return "teacher" + (f"_{_slug(group.name)}" if group.name else "")


def run_folder(group, row):
    """Folder (under --output_dir) of a row's runs; a before-AFT row reads its source's."""
    label = row.source if row.source is not None else row.label
    return os.path.join(*([_slug(group.name)] if group.name else []), _slug(label))


def seed_folder(group, row, seed):
    return os.path.join(run_folder(group, row), f"seed{seed}")


def teacher_path(output_dir, group):
    """The teacher the group's students distil from (None: teacher-free group)."""
    if group.teacher_model:
        return group.teacher_model
    if group.teacher_flagfile:
        return os.path.join(output_dir, teacher_folder(group), "model.keras")
    return None


def planned_runs(grid, output_dir, data_dir=None):
    """Every run of the grid in order: the teachers, then each seed's rows.

    Returns a list of dicts: ``name`` (for the progress line), ``key`` (the
    run's identity: its folder under ``output_dir``, with ``/``), ``kind``
    (``"teacher"`` or ``"student"``),
    ``model_dir``, ``command`` (argv), ``log`` (its output file), and for a
    student whose teacher the grid trains ``teacher_key`` and
    ``teacher_metrics`` (that teacher's metrics.json: it is finished when
    this file exists).
    """
    runs = []
    common_args = ([f"--data_dir={data_dir}"] if data_dir else []) + list(grid.extra_args)
    for group in grid.groups:
        if group.teacher_flagfile:
            folder = teacher_folder(group)
            model_dir = os.path.join(output_dir, folder)
            runs.append({
                "name": "teacher" + (f" {group.name}" if group.name else ""),
                "key": folder, "kind": "teacher", "model_dir": model_dir,
                "log": os.path.join(output_dir, "logs", folder + ".log"),
                "command": [sys.executable, "-m", "gacd_tf.programs.train_teacher",
                            f"--flagfile={group.teacher_flagfile}", f"--model_dir={model_dir}",
                            *common_args]})
    for seed in grid.seeds:  # seed-major: after the first seed every row has a value
        for group in grid.groups:
            teacher = teacher_path(output_dir, group)
            trained = ({"teacher_key": teacher_folder(group),
                        "teacher_metrics": os.path.join(os.path.dirname(teacher), "metrics.json")}
                       if group.teacher_flagfile else {})
            for row in group.rows:
                if row.flagfile is None:
                    continue
                folder = seed_folder(group, row, seed)
                model_dir = os.path.join(output_dir, folder)
                runs.append({
                    "name": (f"{group.name}: " if group.name else "") + f"{row.label} seed {seed}",
                    "key": folder.replace(os.sep, "/"), "kind": "student", **trained,
                    "model_dir": model_dir,
                    "log": os.path.join(output_dir, "logs", folder.replace(os.sep, "_") + ".log"),
                    "command": [sys.executable, "-m", "gacd_tf.programs.distill",
                                f"--flagfile={row.flagfile}", f"--seed={seed}",
                                f"--model_dir={model_dir}",
                                *([f"--teacher={teacher}"] if teacher else []), *common_args]})
    return runs


def shard_of(key, count):
    """The shard (0 to ``count`` - 1) of a run that ``shards.json`` does not list:
    its identity ``key`` (``planned_runs``' ``key``), hashed.

    SHA-256, the same on every machine and Python: a run added to a grid after
    its shards started (a new seed, a new row) gets a shard that no list
    position decides.

    Example:
    >>> [shard_of(key, 1) for key in ("teacher", "kd/seed0")]
    [0, 0]
    """
    return int.from_bytes(_digest(key)[:8], "big") % count


def _digest(key):
    return hashlib.sha256(key.encode("utf-8")).digest()


def split(runs, count):
    """The assignment of a grid's runs to ``count`` shards, by run identity.

    Dealt round robin: the teachers first (to different shards, as long as
    there are no more teachers than shards), then the students in the order
    of their identity's SHA-256, so that no row of the grid lands on one
    shard for every seed. The shards' numbers of runs differ by one at most.
    The first shard records the deal in ``shards.json`` and every shard,
    restarted or not, reads it from there, so it never changes while a grid
    runs, even when the grid is edited (runs the record lacks go by
    ``shard_of``).

    Returns:
        dict: run key -> shard.

    Example:
    >>> split([{"key": "teacher", "kind": "teacher"}, {"key": "kd/seed0"},
    ...        {"key": "kd/seed1"}], 2)
    {'teacher': 0, 'kd/seed1': 1, 'kd/seed0': 0}
    """
    teachers = [run for run in runs if run.get("kind") == "teacher"]
    students = sorted((run for run in runs if run.get("kind") != "teacher"),
                      key=lambda run: _digest(run["key"]))
    return {run["key"]: i % count for i, run in enumerate(teachers + students)}


def shard_runs(runs, index, count, assignment=None):
    """The runs of ``runs`` (``planned_runs``' dicts) that shard ``index`` of ``count`` runs,
    in the grid's order: those ``assignment`` (run key -> shard, as recorded in
    ``shards.json``) gives it, and of the others those ``shard_of`` gives it.

    Example:
    >>> shard_runs([{"key": "teacher"}, {"key": "kd/seed0"}], 1, 2, {"kd/seed0": 1})
    [{'key': 'kd/seed0'}]
    """
    return [run for run in runs if _owner(run["key"], count, assignment) == index]


def _owner(key, count, assignment):
    return (assignment or {}).get(key, shard_of(key, count))


# ----------------------------------------------------------------------------- running
def _write_json(path, obj):
    # Atomic, and without importing TensorFlow (this process only runs others).
    from gacd_tf.analysis.tables import write_text

    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _read_json(path):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _summary(metrics):
    parts = [f"natural {metrics['natural_accuracy']:.4f}", f"PGD {metrics['robust_accuracy']:.4f}"]
    autoattack = _autoattack(metrics)
    if autoattack is not None:
        parts.append(f"AutoAttack {autoattack:.4f}")
    return ", ".join(parts)


def execute(runs, output_dir, ledger=LEDGER, shard=None, wait_seconds=None, assignment=None):
    """Runs what is not finished, one after another, printing one line per run.

    Args:
        runs: ``planned_runs``' dicts (a shard's share of them with ``shard``).
        output_dir: the grid's output folder.
        ledger: file (in ``output_dir``) adding up each run's wall seconds.
        shard: ``(I, N)`` when this process is shard I of N: a run whose
            teacher another shard trains waits until that teacher's
            metrics.json exists (meanwhile the runs that need no waiting go
            first).
        wait_seconds: how long to wait, with nothing else to run, for such
            a teacher.
        assignment: run key -> shard (to say which shard trains a teacher).

    Raises:
        TrainingError: a run that failed (naming its log), or a teacher not
            finished in time; the runs before it are kept and the grid
            resumes from it when started again.

    Example:
    >>> execute(planned_runs(grid, "runs/grid"), "runs/grid")  # doctest: +SKIP
    """
    wait_seconds = math.inf if wait_seconds is None else wait_seconds
    ledger_path = os.path.join(output_dir, ledger)
    seconds_by_run = _read_json(ledger_path) or {}
    os.makedirs(os.path.join(output_dir, "logs"), exist_ok=True)
    mine = {run["key"] for run in runs}
    pending, done, waiting_since = list(runs), 0, None

    def waits(run):  # for a teacher that another shard trains and has not finished
        return (shard is not None and run.get("teacher_key") is not None
                and run["teacher_key"] not in mine and not os.path.isfile(run["teacher_metrics"]))

    while pending:
        run = next((r for r in pending if not waits(r)), None)
        if run is None:
            waiting_since = _wait_for_teachers(pending, output_dir, shard, wait_seconds,
                                               waiting_since, assignment)
            continue
        if waiting_since is not None:
            print(f"shard {shard[0]}/{shard[1]}: the teacher is finished; waited "
                  f"{time.time() - waiting_since:.0f} s", flush=True)
            waiting_since = None
        pending.remove(run)
        done += 1
        _execute_one(run, f"[{done}/{len(runs)}] {run['name']}", output_dir, ledger_path,
                     seconds_by_run)


def _wait_for_teachers(pending, output_dir, shard, wait_seconds, waiting_since, assignment):
    """One poll of a shard whose every pending run waits for another shard's teacher."""
    teachers = {r["teacher_key"]: r["teacher_metrics"] for r in pending}
    what = "; ".join(
        f"{key}, trained by shard {_owner(key, shard[1], assignment)}/{shard[1]} (finished when "
        f"{path} exists; its output: {os.path.join(output_dir, 'logs', key + '.log')})"
        for key, path in sorted(teachers.items()))
    now = time.time()
    if waiting_since is None:
        print(f"shard {shard[0]}/{shard[1]}: waiting for {what}; giving up after "
              f"{wait_seconds / 3600:g} h (--teacher_wait_hours)", flush=True)
        return now
    if now - waiting_since >= wait_seconds:
        raise TrainingError(
            f"shard {shard[0]}/{shard[1]} waited {wait_seconds / 3600:g} h "
            f"(--teacher_wait_hours) for the teacher {what}, which has not finished: check "
            "that shard (a failed run ends it with an error line), start it again, then this "
            "shard: finished runs are skipped")
    time.sleep(min(POLL_SECONDS, max(0.0, waiting_since + wait_seconds - now)))
    return waiting_since


def _execute_one(run, prefix, output_dir, ledger_path, seconds_by_run):
    metrics_path = os.path.join(run["model_dir"], "metrics.json")
    if os.path.isfile(metrics_path):
        print(f"{prefix}: finished before, skipped ({_summary(_read_json(metrics_path))})",
              flush=True)
        return
    resuming = os.path.isdir(os.path.join(run["model_dir"], "checkpoints"))
    start = time.time()
    with open(run["log"], "a") as log:
        log.write(f"\n$ {shlex.join(run['command'])}\n")
        log.flush()
        process = subprocess.run(run["command"], stdout=log, stderr=subprocess.STDOUT,
                                 env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    seconds = time.time() - start
    key = os.path.relpath(run["model_dir"], output_dir)
    seconds_by_run[key] = round(seconds_by_run.get(key, 0.0) + seconds, 1)
    _write_json(ledger_path, seconds_by_run)
    if process.returncode != 0 or not os.path.isfile(metrics_path):
        with open(run["log"]) as log:
            lines = [line.strip() for line in log if line.strip()]
        last = next((line for line in reversed(lines) if line.startswith("error:")),
                    lines[-1] if lines else "")
        raise TrainingError(f"{run['name']} failed (exit code {process.returncode}) after "
                            f"{seconds:.0f} s: {last} (full output: {run['log']}); fix it "
                            "and start gacd-reproduce again: finished runs are skipped")
    how = "resumed and finished" if resuming else "finished"
    print(f"{prefix}: {how} in {seconds:.0f} s ({_summary(_read_json(metrics_path))})",
          flush=True)


def run_shard(runs, output_dir, index, count, wait_seconds, grid_path="the grid"):
    """Runs shard ``index`` of ``count``: its share of ``runs`` (see ``split``, ``execute``).

    The first shard records the split in ``output_dir``/shards.json; the
    others, and every restart, read it. Refuses an ``output_dir`` split into
    another number of shards and, where the filesystem locks files, a second
    copy of the same shard at the same time. Its wall seconds go to
    ``runs.shard-I-of-N.json``; it writes no table.

    Raises:
        ConfigError: another split, or this shard already running.
        TrainingError: as ``execute``.

    Example:
    >>> run_shard(planned_runs(grid, "runs/grid"), "runs/grid", 0, 4, 3600)  # doctest: +SKIP
    """
    os.makedirs(output_dir, exist_ok=True)
    assignment = _record_split(output_dir, count, runs)
    share = shard_runs(runs, index, count, assignment)
    with _shard_lock(output_dir, index, count):
        print(f"{grid_path}: shard {index}/{count}: {len(share)} of {len(runs)} runs into "
              f"{output_dir}", flush=True)
        execute(share, output_dir, ledger=f"runs.shard-{index}-of-{count}.json",
                shard=(index, count), wait_seconds=wait_seconds, assignment=assignment)


def _record_split(output_dir, count, runs):
    """Records (first shard) or reads (the others) the split of ``output_dir``'s runs.

    Returns:
        the recorded assignment, run key -> shard.
    """
    path = os.path.join(output_dir, SPLIT)
    if not os.path.isfile(path):
        handle, tmp = tempfile.mkstemp(dir=output_dir, prefix=".tmp-shards-")
        with os.fdopen(handle, "w") as f:
            json.dump({"shards": count, "runs": split(runs, count)}, f, indent=1)
            f.write("\n")
        try:
            os.link(tmp, path)  # atomic, and refused when another shard was first
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not os.path.isfile(path):
                os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    record = _read_json(path) or {}
    if record.get("shards") != count:
        raise ConfigError(
            f"--shard=I/{count}, but {output_dir} is split into {record.get('shards')} shards "
            f"({path}): give every copy --shard=I/{record.get('shards')}, or, when no shard "
            f"runs any more, delete {path} to split it anew (each shard then resumes the runs "
            "it is given)")
    return {key: int(value) for key, value in record.get("runs", {}).items()}


@contextlib.contextmanager
def _shard_lock(output_dir, index, count):
    """Holds ``.shard-I-of-N.lock`` in ``output_dir``: a second copy of the shard is refused."""
    path = os.path.join(output_dir, f".shard-{index}-of-{count}.lock")
    with open(path, "a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"--shard={index}/{count} is running already on {output_dir} (another "
                    f"process holds {path}): start each shard once; a restarted shard "
                    "resumes its runs once the old copy has stopped") from None
            except OSError as err:  # a filesystem without locks: rely on the scheduler
                print(f"warning: cannot lock {path} ({err.strerror}); make sure only one "
                      f"copy of --shard={index}/{count} runs at a time", flush=True)
        yield


# ----------------------------------------------------------------------------- results
def _autoattack(metrics):
    value = metrics.get("autoattack")
    if isinstance(value, dict):
        value = value.get("robust_accuracy")
    return value


def _measure(metrics, key):
    return _autoattack(metrics) if key == "autoattack" else metrics.get(key)


def mean_std(values):
    """``(mean, sample standard deviation (ddof=1))`` of the non-None values.

    ``(None, None)`` for no value; the deviation is None for a single value.

    Example:
    >>> mean_std([0.5, 0.7])
    (0.6, 0.14142135623730948)
    """
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _epoch_series(log_path, column):
    """The values of ``column`` by epoch in a Keras CSV log (None when absent)."""
    if not os.path.isfile(log_path):
        return None
    with open(log_path) as f:
        rows = list(csv.DictReader(f))
    if not rows or column not in rows[0]:
        return None
    return [float(r[column]) for r in rows]


def _mean_series(log_paths, column):
    """Per-epoch mean over runs of ``column`` (as long as the shortest run), or None."""
    return _mean_curve([_epoch_series(path, column) for path in log_paths])


def _validation_curve(model_dir, column="val_adv_accuracy"):
    """A run's per-epoch validation figure: its distillation epochs, then its AFT epochs
    (None when the run logged no validation)."""
    distill = _epoch_series(os.path.join(model_dir, "distill_log.csv"), column)
    if not distill:
        return None
    return distill + (_epoch_series(os.path.join(model_dir, "aft_log.csv"), column) or [])


def _mean_curve(curves):
    """Per-epoch mean of the curves that exist (as long as the shortest), or None."""
    curves = [c for c in curves if c]
    if not curves:
        return None
    return [mean_std([c[e] for c in curves])[0] for e in range(min(len(c) for c in curves))]


def _train_seconds(metrics, phases=None):
    seconds = metrics.get("train_seconds")
    if isinstance(seconds, dict):
        return math.fsum(v for k, v in seconds.items() if phases is None or k in phases)
    return seconds


def aggregate(grid, output_dir):
    """Tabulates the finished runs of ``grid`` in ``output_dir``.

    Returns:
        dict with ``rows`` (one per teacher and per method: ``method``,
        ``group``, ``seeds`` (how many finished), ``seed_list``, and for
        natural / pgd / autoattack accuracy and train_seconds ``_mean``,
        ``_std`` (sample, ddof=1) and ``_values`` (per seed), plus
        ``bank_cross_class_cosine_mean`` for GACD rows), ``collapse``
        (method -> mean over seeds of the per-epoch bank_cross_class_cosine
        of its distillation), ``class_structure`` (the same of
        bank_centred_within_class_cosine, for runs that logged it), ``budget``
        (method -> mean over seeds of the per-epoch validation PGD accuracy,
        distillation then AFT epochs, for runs with --val_examples) and
        ``evaluation`` (the attack and test examples of the first finished run).
    """
    rows, collapse, structure, budget, evaluation = [], {}, {}, {}, None
    for group in grid.groups:
        if group.teacher_flagfile or group.teacher_model:
            folder = (os.path.join(output_dir, teacher_folder(group)) if group.teacher_flagfile
                      else os.path.dirname(os.path.abspath(group.teacher_model)))
            metrics = _read_json(os.path.join(folder, "metrics.json"))
            rows.append(_row("teacher", group, [] if metrics is None else [(None, metrics)],
                             lambda m: _train_seconds(m)))
            if metrics and evaluation is None:
                evaluation = _evaluation(metrics)
        for row in group.rows:
            found = []
            for seed in grid.seeds:
                model_dir = os.path.join(output_dir, seed_folder(group, row, seed))
                metrics = _read_json(os.path.join(model_dir, "metrics.json"))
                if metrics is None:
                    continue
                if row.source is not None:
                    if "before_aft" not in metrics:
                        raise ConfigError(f"--grid={grid.path}: {row.label} = {BEFORE_AFT}"
                                          f"{row.source}, but {model_dir} ran no AFT "
                                          "(--aft_epochs=0)")
                    outer, metrics = metrics, dict(metrics["before_aft"])
                    metrics["train_seconds"] = {"distill": _train_seconds(outer, ("distill",))}
                    metrics["bank_cross_class_cosine"] = outer.get("bank_cross_class_cosine")
                found.append((seed, metrics))
                if evaluation is None:
                    evaluation = _evaluation(metrics)
            rows.append(_row(row.label, group, found, _train_seconds))
            if row.flagfile is not None:
                name = (f"{group.name}: " if group.name else "") + row.label
                logs = [os.path.join(output_dir, seed_folder(group, row, s), "distill_log.csv")
                        for s, _ in found]
                for table, column in ((collapse, "bank_cross_class_cosine"),
                                      (structure, "bank_centred_within_class_cosine")):
                    series = _mean_series(logs, column)
                    if series:
                        table[name] = series
                curve = _mean_curve([_validation_curve(os.path.dirname(log)) for log in logs])
                if curve:
                    budget[name] = curve
    missing = [run["name"] for run in planned_runs(grid, output_dir)
               if not os.path.isfile(os.path.join(run["model_dir"], "metrics.json"))]
    return {"grid": grid.path, "seeds": grid.seeds, "rows": rows, "collapse": collapse,
            "class_structure": structure, "budget": budget, "evaluation": evaluation,
            "wall_seconds": round(wall_seconds(output_dir), 1), "missing": missing,
            "std": "sample standard deviation over seeds (ddof=1); empty for one seed"}


def wall_seconds(output_dir):
    """Wall seconds of every run in ``output_dir``: runs.json plus each shard's ledger."""
    paths = [os.path.join(output_dir, LEDGER),
             *sorted(glob.glob(os.path.join(glob.escape(output_dir), "runs.shard-*.json")))]
    return math.fsum(math.fsum((_read_json(path) or {}).values()) for path in paths)


def _evaluation(metrics):
    attack = metrics.get("attack") or {}
    return {"attack": attack, "num_examples": metrics.get("num_examples"),
            "autoattack_examples": (metrics.get("autoattack") or {}).get("num_examples")
            if isinstance(metrics.get("autoattack"), dict) else None}


def _row(label, group, found, seconds_of):
    row = {"method": label, "group": group.name, "seeds": len(found),
           "seed_list": [s for s, _ in found if s is not None]}
    for name, key in MEASURES:
        values = [_measure(m, key) for _, m in found]
        row[f"{name}_mean"], row[f"{name}_std"] = mean_std(values)
        row[f"{name}_values"] = values
    seconds = [seconds_of(m) for _, m in found]
    row["train_seconds_mean"], row["train_seconds_std"] = mean_std(seconds)
    cosines = [m.get("bank_cross_class_cosine") for _, m in found]
    row["bank_cross_class_cosine_mean"] = mean_std(cosines)[0]
    return row


def _columns(results):
    rows = results["rows"]
    columns = ["method", "group", "seeds", "natural_mean", "natural_std", "pgd_mean", "pgd_std"]
    if any(r["autoattack_mean"] is not None for r in rows):
        columns += ["autoattack_mean", "autoattack_std"]
    columns += ["train_seconds_mean", "train_seconds_std"]
    if any(r["bank_cross_class_cosine_mean"] is not None for r in rows):
        columns.append("bank_cross_class_cosine_mean")
    return columns


def _pm(mean, std, digits=4):
    if mean is None:
        return ""
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def markdown(results):
    """results.md: the table (mean ± sample std over seeds) and the collapse detector."""
    from gacd_tf.analysis.tables import markdown_table

    rows = results["rows"]
    aa = any(r["autoattack_mean"] is not None for r in rows)
    grouped = any(r["group"] for r in rows)
    table = []
    for r in rows:
        entry = {"method": r["method"], "group": r["group"], "seeds": r["seeds"],
                 "natural": _pm(r["natural_mean"], r["natural_std"]),
                 "pgd": _pm(r["pgd_mean"], r["pgd_std"]),
                 "autoattack": _pm(r["autoattack_mean"], r["autoattack_std"]),
                 "seconds": _pm(r["train_seconds_mean"], r["train_seconds_std"], 0)}
        table.append(entry)
    evaluation = results.get("evaluation") or {}
    attack = evaluation.get("attack") or {}
    pgd = "PGD"
    if attack.get("steps"):
        pgd = f"PGD-{attack['steps']}"
    columns = (["group"] if grouped else []) + ["method", "seeds", "natural", "pgd"]
    headers = (["teacher"] if grouped else []) + ["method", "seeds", "natural accuracy",
                                                  f"{pgd} accuracy"]
    if aa:
        columns.append("autoattack")
        headers.append("AutoAttack accuracy")
    columns.append("seconds")
    headers.append("training seconds")
    lines = [f"# Results of {results['grid']}", "",
             f"Seeds: {', '.join(map(str, results['seeds']))}. Each cell: mean ± sample standard "
             "deviation (ddof=1) over the finished seeds (no ± for a single seed).", ""]
    if evaluation.get("num_examples"):
        eps = attack.get("eps")
        what = f"{pgd}" + (f", eps {eps:.4f}" if isinstance(eps, float) else "")
        lines += [f"Evaluation: natural and {what} accuracy on {evaluation['num_examples']} "
                  "test examples" + (f"; AutoAttack (standard) on "
                                     f"{evaluation['autoattack_examples']} class-balanced test "
                                     "examples" if evaluation.get("autoattack_examples") else "")
                  + ".", ""]
    if results.get("missing"):
        lines += [f"Not finished yet ({len(results['missing'])} runs, left out of the table): "
                  + ", ".join(results["missing"]) + ".", ""]
    lines += [markdown_table(table, columns, headers),
              f"Wall time of all runs: {results['wall_seconds'] / 3600:.2f} h "
              f"({results['wall_seconds']:.0f} s, training and evaluation).", ""]
    tables = (
        ("collapse", "Collapse detector", "Mean cosine between student-bank rows of different "
         "classes at the end of each distillation epoch (bank_cross_class_cosine; mean over "
         "seeds). Near 1: the rows share one direction: a collapse, or only a common offset "
         "(read the next table)."),
        ("class_structure", "Class structure of the bank", "Mean cosine between student-bank "
         "rows of the same class once the rows' mean is removed "
         "(bank_centred_within_class_cosine; mean over seeds). Near 0 with a cross-class "
         "cosine near 1: collapsed; clearly positive: the classes are apart."),
        ("budget", "Budget curve", "Validation PGD accuracy (the evaluation attack on the "
         "--val_examples images held out of the training split, never the test split) at the "
         "end of each epoch: the distillation epochs, then the AFT epochs of rows with AFT; "
         "mean over seeds (budget.png)."))
    for key, title, text in tables:
        if not results.get(key):
            continue
        epochs = max(len(v) for v in results[key].values())
        series = [{"method": name, **{f"e{e + 1}": v[e] if e < len(v) else None
                                      for e in range(epochs)}}
                  for name, v in results[key].items()]
        lines += [f"## {title}", "", text, "",
                  markdown_table(series, ["method"] + [f"e{e + 1}" for e in range(epochs)],
                                 ["method"] + [str(e + 1) for e in range(epochs)], digits=3)]
    return "\n".join(lines)


def write_results(results, output_dir):
    """results.json, results.csv, results.md, results.png and (with validation curves)
    budget.png into ``output_dir``."""
    from gacd_tf.analysis import plots
    from gacd_tf.analysis.tables import csv_text, write_text

    _write_json(os.path.join(output_dir, "results.json"), results)
    write_text(os.path.join(output_dir, "results.csv"), csv_text(results["rows"],
                                                                   _columns(results)))
    write_text(os.path.join(output_dir, "results.md"), markdown(results))
    rows = [r for r in results["rows"] if r["seeds"]]
    if not rows:
        return
    names = [(f"{r['group']}: " if r["group"] else "") + r["method"] for r in rows]
    series = {"natural": [r["natural_mean"] for r in rows], "PGD": [r["pgd_mean"] for r in rows]}
    errors = {"natural": [r["natural_std"] for r in rows], "PGD": [r["pgd_std"] for r in rows]}
    if any(r["autoattack_mean"] is not None for r in rows):
        series["AutoAttack"] = [r["autoattack_mean"] for r in rows]
        errors["AutoAttack"] = [r["autoattack_std"] for r in rows]
    try:
        plots.grouped_bars(names, series, os.path.join(output_dir, "results.png"),
                           title="mean ± sample std over seeds", errors=errors,
                           size=(max(6.4, 0.9 * len(names) + 1.5), 4.0))
        if results.get("budget"):
            epochs = max(len(v) for v in results["budget"].values())
            plots.metric_curves(
                list(range(1, epochs + 1)),
                {name: v + [None] * (epochs - len(v)) for name, v in results["budget"].items()},
                os.path.join(output_dir, "budget.png"), "epoch (distillation, then AFT)",
                ylabel="validation PGD accuracy", log_x=False,
                title="validation PGD accuracy by epoch, mean over seeds")
    except ImportError as err:  # matplotlib is the "analysis" extra
        print(f"results.png not drawn ({err}); pip install -e \".[analysis]\" draws it")


def main(argv):
    del argv
    if not FLAGS.grid:
        raise ConfigError("--grid is required: a grid file such as flags/reproduce/smoke.cfg")
    grid = read_grid(FLAGS.grid)
    output_dir = prepare_output_dir(FLAGS.output_dir, "--output_dir")
    runs = planned_runs(grid, output_dir, FLAGS.data_dir)
    if FLAGS.shard:
        index, count = parse_shard(FLAGS.shard)
        run_shard(runs, output_dir, index, count, FLAGS.teacher_wait_hours * 3600, FLAGS.grid)
        print(f"shard {index}/{count}: its runs are finished; once every shard has finished, "
              f"gacd-reproduce --grid={FLAGS.grid} --output_dir={output_dir} --results_only "
              "makes the table")
        return
    if not FLAGS.results_only:
        print(f"{FLAGS.grid}: {len(runs)} runs into {output_dir}", flush=True)
        try:
            execute(runs, output_dir)
        finally:  # the results of what finished, even when a run failed
            write_results(aggregate(grid, output_dir), output_dir)
    else:
        results = aggregate(grid, output_dir)
        write_results(results, output_dir)
        missing = results["missing"]
        print(f"not finished yet, {len(missing)} of {len(runs)} runs: {', '.join(missing)}"
              if missing else f"all {len(runs)} runs finished")
    print(f"wrote {os.path.join(output_dir, 'results.md')} (.csv, .json, .png)")


def entry_point():
    define_flags()
    flag_core.run(main)


if __name__ == "__main__":
    entry_point()
