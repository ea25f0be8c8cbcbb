"""Reading run folders and writing the Markdown report of several runs."""

import dataclasses
import json
import os

from gacd_tf.analysis.tables import format_value, markdown_table, slug
from gacd_tf.errors import DataError

RESULT_COLUMNS = ["run", "role", "method", "arch", "dataset", "epochs", "natural_accuracy",
                  "robust_accuracy", "before_aft_natural_accuracy", "before_aft_robust_accuracy",
                  "num_examples", "attack", "teacher_unchanged", "train_seconds"]
# Shown after robust_accuracy when a run's metrics.json has "autoattack".
AUTOATTACK_COLUMNS = ["autoattack_robust_accuracy", "autoattack_examples"]
# Flags that describe where a run wrote or read, not what it did.
_NOISE_FLAGS = {"model_dir", "verbose", "data_dir", "cpu_devices", "strategy"}


@dataclasses.dataclass
class Run:
    """One run folder: its flags, metrics and model.

    Args:
        path: the folder.
        name: a short distinct name (the folder's name).
        flags: ``flags.json`` (the program's flag values).
        metrics: ``metrics.json``.

    Example:
    >>> run = load_run("runs/real/kd")  # doctest: +SKIP
    >>> run.teacher, run.role  # doctest: +SKIP
    ('runs/quickstart/model.keras', 'student')
    """

    path: str
    name: str
    flags: dict
    metrics: dict

    @property
    def model_path(self):
        return os.path.join(self.path, self.metrics.get("model") or "model.keras")

    @property
    def teacher(self):
        """The teacher's ``.keras`` path (gacd-distill runs), else None (teacher runs)."""
        return self.flags.get("teacher") or self.metrics.get("teacher")

    @property
    def role(self):
        return "student" if self.teacher else "teacher"

    def row(self):
        """The run's line of the results table."""
        before = self.metrics.get("before_aft") or {}
        attack = self.metrics.get("attack") or {}
        seconds = self.metrics.get("train_seconds")
        if isinstance(seconds, dict):
            seconds = sum(v for v in seconds.values() if isinstance(v, (int, float)))
        if isinstance(seconds, (int, float)):
            seconds = int(round(seconds))
        autoattack = self.metrics.get("autoattack") or {}
        method = self.metrics.get("method") or self.flags.get("method")
        if method and self.metrics.get("aft_epochs"):
            method += "+aft"
        if not self.teacher:
            method = "trades" if self.flags.get("trades_beta") is not None else "pgd-at"
        return {
            "run": self.name, "role": self.role, "method": method,
            "arch": self.flags.get("arch") or self.metrics.get("arch"),
            "dataset": self.metrics.get("dataset") or self.flags.get("dataset"),
            "epochs": self.flags.get("epochs"),
            "natural_accuracy": self.metrics.get("natural_accuracy"),
            "robust_accuracy": self.metrics.get("robust_accuracy"),
            "autoattack_robust_accuracy": autoattack.get("robust_accuracy"),
            "autoattack_examples": autoattack.get("num_examples"),
            "before_aft_natural_accuracy": before.get("natural_accuracy"),
            "before_aft_robust_accuracy": before.get("robust_accuracy"),
            "num_examples": self.metrics.get("num_examples"),
            "attack": _attack_label(attack),
            "teacher_unchanged": self.metrics.get("teacher_unchanged"),
            "train_seconds": seconds,
        }


def _attack_label(attack):
    """The label "pgd-20", or the name alone for an attack without steps (autoattack)."""
    if not attack:
        return None
    steps = attack.get("steps")
    return f"{attack.get('attack', '')}-{steps}" if steps is not None else attack.get("attack")


def _read_json(path, what):
    if not os.path.isfile(path):
        raise DataError(f"{path} does not exist; {what}")
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); rerun the program that wrote it") \
            from None
    if not isinstance(value, dict):
        raise DataError(f"{path} holds a {type(value).__name__}, not a JSON object")
    return value


def load_run(path, name=None):
    """Reads a run folder written by gacd-train-teacher or gacd-distill.

    Raises:
        DataError: the folder, its ``flags.json`` or ``metrics.json`` is
            missing or unreadable.
    """
    path = os.path.normpath(os.fspath(path))
    if not os.path.isdir(path):
        raise DataError(f"run folder {path} does not exist; pass the output folders of "
                        "gacd-train-teacher or gacd-distill runs")
    what = "a finished gacd-train-teacher / gacd-distill run folder has it"
    return Run(path=path, name=name or slug(os.path.basename(path)),
               flags=_read_json(os.path.join(path, "flags.json"), what),
               metrics=_read_json(os.path.join(path, "metrics.json"), what))


def load_runs(paths):
    """:func:`load_run` for each folder, with distinct names (``kd``, ``kd_2``...)."""
    runs, names = [], set()
    for path in paths:
        base = slug(os.path.basename(os.path.normpath(os.fspath(path))))
        name, i = base, 1
        while name in names:
            i += 1
            name = f"{base}_{i}"
        names.add(name)
        runs.append(load_run(path, name))
    return runs


def flag_table(runs, differing):
    """Markdown table flag x run of all flags, or (``differing=True``) of those whose
    values differ between the runs that have them."""
    keys = sorted({k for run in runs for k in run.flags})
    rows = []
    for key in keys:
        values = [format_value(run.flags.get(key)) for run in runs]
        # A flag only one program has (e.g. --nce_k) differs if its runs disagree.
        varies = len({format_value(run.flags[key]) for run in runs if key in run.flags}) > 1
        if differing and (not varies or key in _NOISE_FLAGS):
            continue
        rows.append({"flag": f"`--{key}`", **{run.name: v for run, v in zip(runs, values)}})
    return markdown_table(rows, ["flag"] + [run.name for run in runs])


def result_columns(rows):
    """The results table's columns: the AutoAttack ones only when a run has them."""
    if not any(row.get("autoattack_robust_accuracy") is not None for row in rows):
        return list(RESULT_COLUMNS)
    at = RESULT_COLUMNS.index("robust_accuracy") + 1
    return RESULT_COLUMNS[:at] + AUTOATTACK_COLUMNS + RESULT_COLUMNS[at:]


def render_report(runs, correlation=None, tsne=None, transfer=None, notes=()):
    """The report's Markdown (images are linked by file name, beside ``report.md``).

    Args:
        runs: the :class:`Run` list.
        correlation: dict run name -> ``{"teacher", "natural", "adversarial",
            "heatmap"}`` for student runs (optional).
        tsne: ``{"all": png, "per_run": {run name: png}, "numbers": {model
            name: feature_map summary}, "classes": (source, target) names}``
            (optional).
        transfer: ``{"task", "table", "png"}`` (optional).
        notes: lines to list under "Notes" (e.g. skipped steps and why).

    Returns:
        The Markdown text.
    """
    correlation, tsne = correlation or {}, tsne or {}
    out = ["# gacd_tf report", ""]
    out.append("Runs: " + ", ".join(f"`{run.path}`" for run in runs) + ".")
    rows = [run.row() for run in runs]
    columns = result_columns(rows)
    out.append("Accuracies are fractions of the test examples; *robust* is under the run's "
               "evaluation attack (column `attack`).")
    if columns != RESULT_COLUMNS:
        out.append("`autoattack_robust_accuracy`: under AutoAttack (standard version: APGD-CE, "
                   "APGD-T, FAB-T, Square; the field's standard, RobustBench's measure) on "
                   "`autoattack_examples` class-balanced test examples.")
    out += ["", "## Results", "", markdown_table(rows, columns)]
    if transfer:
        out += ["## Transfer (linear evaluation)", "",
                f"A linear head on each frozen model's penultimate features, trained on "
                f"{transfer['task']}; robust accuracy under {transfer['attack']} through the "
                "frozen backbone and the head.", "", transfer["table"],
                f"![transfer]({transfer['png']})", ""]
    if correlation:
        rows = [{"student": name, "teacher": c["teacher"], "natural": c["natural"],
                 "adversarial": c["adversarial"]} for name, c in correlation.items()]
        out += ["## Class correlations with the teacher", "",
                "Mean over the C x C entries of |corr_T - corr_S|, the Pearson correlation "
                "matrices of the logits over the test examples, on natural inputs and on each "
                f"model's own adversarial examples ({correlation_attack(correlation)}); lower "
                "means the student keeps more of the teacher's class structure.", "",
                markdown_table(rows, ["student", "teacher", "natural", "adversarial"],
                               headers=["student", "teacher", "mean abs diff natural",
                                        "mean abs diff adversarial"]), ""]
    if tsne.get("all"):
        source, target = tsne["classes"]
        rows = [{"model": name, **numbers} for name, numbers in tsne["numbers"].items()]
        out += ["## Feature geometry (t-SNE)", "",
                f"Penultimate features of natural {target} and {source} test images and of "
                f"{source} images attacked towards {target} (targeted {tsne['attack']} against "
                "each model), embedded by t-SNE separately per model.", "",
                f"![t-SNE of all models]({tsne['all']})", "",
                markdown_table(rows, ["model", "source_accuracy", "target_accuracy",
                                      "adv_to_target", "adv_still_source",
                                      "adv_nearer_target_centroid"]), ""]
    for run in runs:
        if run.name not in correlation and run.name not in tsne.get("per_run", {}):
            continue
        out += [f"## {run.name}", "", f"Student `{run.model_path}` of teacher `{run.teacher}`.",
                ""]
        if run.name in correlation:
            c = correlation[run.name]
            out += [f"Mean |corr_T - corr_S|: natural {c['natural']:.4f}, adversarial "
                    f"{c['adversarial']:.4f}.", "", f"![correlation difference]({c['heatmap']})",
                    ""]
        if run.name in tsne.get("per_run", {}):
            out += [f"![t-SNE, teacher and {run.name}]({tsne['per_run'][run.name]})", ""]
    out += ["## Flags that differ between runs", "", flag_table(runs, differing=True),
            "<details><summary>All flags</summary>", "", flag_table(runs, differing=False),
            "</details>", ""]
    if notes:
        out += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(out)


def correlation_attack(correlation):
    attacks = {c.get("attack") for c in correlation.values() if c.get("attack")}
    return ", ".join(sorted(attacks)) or "PGD"
