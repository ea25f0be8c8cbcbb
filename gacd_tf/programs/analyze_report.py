"""gacd-analyze report: one Markdown page for several run folders (result tables, and
the correlation maps, t-SNE maps and linear transfer of their models)."""

import os

from gacd_tf.analysis import correlation_maps, load_runs, render_report, tsne_maps
from gacd_tf.analysis.tables import markdown_table, slug, write_text
from gacd_tf.analysis.transfer import TRANSFER_COLUMNS
from gacd_tf.analysis.tsne import summary
from gacd_tf.data import make_dataset
from gacd_tf.data.datasets import class_names
from gacd_tf.errors import ConfigError
from gacd_tf.models.io import check_model_fits
from gacd_tf.programs import attack_flags, common
from gacd_tf.programs.analyze_inputs import (
    attack_name,
    require,
    targeted_attack,
    test_split,
    tsne_names,
    write_json,
)
from gacd_tf.programs.analyze_transfer import transfer
from gacd_tf.programs.flag_core import FLAGS

REPORT_PARTS = ("correlation", "tsne", "transfer")


def report_command(run):
    del run  # one device, writes into --output_dir

    paths = require("runs", "report")
    parts = list(FLAGS.report_parts)
    unknown = sorted(set(parts) - set(REPORT_PARTS))
    if unknown:
        raise ConfigError(f"--report_parts has unknown entries {unknown}; choose from "
                          f"{', '.join(REPORT_PARTS)}")
    runs = load_runs(paths)
    notes = []
    models = {}  # absolute model path -> display name, in order: runs, then outside teachers
    for run in runs:
        if os.path.isfile(run.model_path):
            models.setdefault(os.path.abspath(run.model_path), run.name)
        else:
            notes.append(f"{run.name}: {run.model_path} is missing; its analyses are skipped")
    students = [run for run in runs if run.teacher and os.path.abspath(run.model_path) in models]
    for run in students:
        teacher = os.path.abspath(run.teacher)
        if not os.path.isfile(teacher):
            notes.append(f"{run.name}: teacher {run.teacher} not found (paths in flags.json are "
                         "relative to where the run started); correlation and t-SNE skipped")
        elif teacher not in models:
            models[teacher] = unique("teacher", models.values())
    students = [run for run in students if os.path.abspath(run.teacher) in models]

    dataset = runs[0].flags.get("dataset") or FLAGS.dataset
    data_dir = FLAGS.data_dir or runs[0].flags.get("data_dir")
    report, sections, loaded, test = {"runs": [run.row() for run in runs]}, {}, {}, None
    if ("correlation" in parts or "tsne" in parts) and students:

        test = test_split(dataset, data_dir)
        for path, name in models.items():
            loaded[name] = common.load_model_from_flags(path, "--runs")
            check_model_fits(loaded[name], test.info, source=path)
    if "correlation" in parts and students:
        sections["correlation"] = report_correlation(students, models, loaded, test, dataset,
                                                     report)
    if "tsne" in parts and students:
        sections["tsne"] = report_tsne(students, models, loaded, test, dataset, report)
    if "transfer" in parts:

        # The runs' data folder serves the transfer task too when it is the same dataset.
        rows, task, attack = transfer(list(models), list(models.values()), FLAGS.output_dir,
                                      data_dir if FLAGS.dataset == dataset else None)
        sections["transfer"] = {"task": task, "attack": attack, "png": "transfer.png",
                                "table": markdown_table(rows, TRANSFER_COLUMNS[:-1])}
        report["transfer"] = {"task": task, "attack": attack, "models": rows}
    if not students and ("correlation" in parts or "tsne" in parts):
        notes.append("no run has a teacher, so there are no correlation maps or t-SNE maps")
    text = render_report(runs, correlation=sections.get("correlation"),
                         tsne=sections.get("tsne"), transfer=sections.get("transfer"),
                         notes=notes)

    write_text(os.path.join(FLAGS.output_dir, "report.md"), text)
    report["notes"] = notes
    write_json("report.json", report)
    print(f"wrote {os.path.join(FLAGS.output_dir, 'report.md')}")
    return report


def unique(name, taken):
    taken = set(taken)
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    return candidate


def report_correlation(students, models, loaded, test, dataset, report):

    attack = attack_flags.attack_from_flags()
    test_ds = make_dataset(test, FLAGS.batch_size, training=False)
    cache, section = {}, {}
    for run in students:
        teacher = models[os.path.abspath(run.teacher)]
        summary, cache[teacher] = correlation_maps(
            loaded[teacher], {run.name: loaded[run.name]}, test_ds, attack, FLAGS.output_dir,
            labels=class_names(dataset), attack_name=attack_name(attack),
            teacher_matrices=cache.get(teacher))
        section[run.name] = dict(summary[run.name], teacher=teacher, attack=attack_name(attack))
        print(f"correlation {run.name}: natural={section[run.name]['natural']:.4f} "
              f"adversarial={section[run.name]['adversarial']:.4f}")
    report["correlation"] = {"attack": attack.get_config(), "num_examples": len(test),
                             "students": section}
    return section


def report_tsne(students, models, loaded, test, dataset, report):

    source, target, names = tsne_names(dataset)
    attack = targeted_attack()
    options = dict(examples=FLAGS.tsne_examples, perplexity=FLAGS.tsne_perplexity,
                   seed=FLAGS.seed, names=names)
    # Teachers first, then the other models; each model's map is computed once.
    teachers = {models[os.path.abspath(run.teacher)] for run in students}
    order = [n for n in loaded if n in teachers] + [n for n in loaded if n not in teachers]
    maps = {}
    tsne_maps({n: loaded[n] for n in order}, test, source, target, attack, FLAGS.output_dir,
              filename="tsne_all.png", maps=maps, **options)
    per_run = {}
    for run in students:
        teacher = models[os.path.abspath(run.teacher)]
        filename = f"tsne_{slug(run.name)}.png"
        tsne_maps({teacher: loaded[teacher], run.name: loaded[run.name]}, test, source, target,
                  attack, FLAGS.output_dir, filename=filename, maps=maps, **options)
        per_run[run.name] = filename
    numbers = {name: summary(maps[name]) for name in order}
    report["tsne"] = {"classes": {"source": source, "target": target, "names": list(names)},
                      "attack": attack.get_config(), "models": numbers}
    return {"all": "tsne_all.png", "per_run": per_run, "numbers": numbers,
            "classes": names, "attack": attack_name(attack)}
