"""gacd-analyze: transfer, logit correlations, t-SNE maps, flag sweeps and a report.

One command per call, named first (flags may come before or after it):

    gacd-analyze transfer    --models=A.keras,B.keras --dataset=cifar10 --classes=5,6,7,8,9 \
        --output_dir=OUT    # linear head on frozen features; natural + PGD-7 accuracy
    gacd-analyze correlation --teacher=T.keras --models=S1.keras,S2.keras --output_dir=OUT
    gacd-analyze tsne        --models=T.keras,S1.keras --tsne_classes=9,2 --output_dir=OUT
    gacd-analyze sweep       --distill_flagfile=flags/quickstart_gacd.cfg --sweep_flag=nce_k \
        --sweep_values=16,256,4096 --output_dir=OUT
    gacd-analyze report      --runs=DIR1,DIR2,... --output_dir=OUT

Writes into --output_dir: flags.json (with the command), and
transfer: transfer.{json,md,csv,png} and probe_<model>/ (probe.keras, logs);
correlation: correlation.json, correlation_<student>.png / .npz;
tsne: tsne.png, tsne.json;
sweep: FLAG=VALUE/ (one gacd-distill run each, its output in sweep.log) and
sweep_FLAG.{md,csv,json,png};
report: report.md (tables, and the pictures above beside it), report.json.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import shlex  # noqa: E402
import types  # noqa: E402

from absl import logging  # noqa: E402

from gacd_tf.errors import ConfigError  # noqa: E402
from gacd_tf.programs import attack_flags, common, data_flags  # noqa: E402
from gacd_tf.programs.common import FLAGS  # noqa: E402
from gacd_tf.registry import Registry  # noqa: E402

COMMANDS = Registry("gacd-analyze command")
REPORT_PARTS = ("correlation", "tsne", "transfer")
# What a linear probe's training depends on (besides the model file and --classes).
PROBE_FLAGS = ("dataset", "train_examples", "batch_size", "seed", "epochs", "learning_rate",
               "momentum", "weight_decay", "lr_schedule", "lr_decay_epochs", "lr_decay_factor",
               "augment")


def define_flags():
    data_flags.define_data_flags(train=True)
    attack_flags.define_attack_flags()
    attack_flags.define_final_autoattack_flags()
    common.define_optimizer_flags(epochs=10, learning_rate=0.1)
    common.define_checkpoint_flags()
    common.define_load_flags()
    common.DEFINE_string("output_dir", None, "Output folder (created if needed).")
    common.DEFINE_list("models", [], "transfer / correlation / tsne: .keras model files "
                       "(correlation: the students).")
    common.DEFINE_string("teacher", None, "correlation: the teacher, a .keras file; tsne: "
                         "drawn first when given.")
    common.DEFINE_list("runs", [], "report: run folders written by gacd-train-teacher or "
                       "gacd-distill (flags.json, metrics.json, model.keras).")
    common.DEFINE_list("classes", [], "transfer: keep only these classes of --dataset as the "
                       "target task, relabelled 0..k-1 (e.g. 5,6,7,8,9); default all.")
    common.DEFINE_integer("transfer_attack_steps", 7, "transfer: PGD steps of the robust "
                          "accuracy (Table 4: PGD-7; --eps, --step_size apply).", lower_bound=0)
    common.DEFINE_bool("augment", True, "transfer: pad-4 crop + flip while training the head.")
    common.DEFINE_list("tsne_classes", ["9", "2"], "tsne: SOURCE,TARGET classes; adversarial "
                       "SOURCE images are crafted to be classified as TARGET (paper: truck, "
                       "bird).")
    common.DEFINE_integer("tsne_examples", 100, "tsne: test images per class.", lower_bound=2)
    common.DEFINE_float("tsne_perplexity", 30.0, "tsne: t-SNE perplexity.", lower_bound=1.0)
    common.DEFINE_string("distill_flagfile", None, "sweep: the gacd-distill flagfile every "
                         "grid point starts from.")
    common.DEFINE_string("distill_args", "", "sweep: more gacd-distill arguments for every "
                         "run, shell-quoted, e.g. \"--epochs=1 --data_dir=DIR\".")
    common.DEFINE_string("sweep_flag", None, "sweep: the gacd-distill flag to vary, e.g. "
                         "nce_k or nce_t.")
    common.DEFINE_list("sweep_values", [], "sweep: the grid values of --sweep_flag.")
    common.DEFINE_integer("sweep_timeout", None, "sweep: seconds allowed per run (unset: no "
                          "limit).", lower_bound=1)
    common.DEFINE_list("report_parts", ["correlation", "tsne"], "report: analyses to run "
                       f"besides the tables, from {', '.join(REPORT_PARTS)} (transfer uses "
                       "--dataset, --classes and the optimizer flags).")
    common.DEFINE_integer("verbose", 0, "Keras progress output (0, 1 or 2).")


# --------------------------------------------------------------------------
# Inputs shared by the commands.


def _require(name, command):
    value = FLAGS[name].value
    if value in (None, "", []):
        raise ConfigError(f"gacd-analyze {command} needs --{name}")
    return value


def _int_list(name, values, count=None):
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        raise ConfigError(f"--{name}={','.join(values)} must be whole numbers") from None
    if count is not None and len(numbers) != count:
        raise ConfigError(f"--{name} needs exactly {count} classes, got {len(numbers)}")
    if count == 2 and numbers[0] == numbers[1]:
        raise ConfigError(f"--{name}={numbers[0]},{numbers[1]} names one class twice; give two "
                          "different classes")
    return numbers


def _load_models(paths, info=None, flag="--models"):
    """dict name -> loaded model, checked against the dataset ``info`` when given."""
    from gacd_tf.analysis.tables import model_names
    from gacd_tf.models.io import check_model_fits

    models = {}
    for name, path in zip(model_names(paths), paths):
        model = common.load_model_from_flags(path, flag)
        if info is not None:
            check_model_fits(model, info, source=path)
        models[name] = model
    return models


def _test_split(dataset=None, data_dir=None):
    from gacd_tf.data import load_split

    return load_split(dataset or FLAGS.dataset, "test", data_dir or FLAGS.data_dir,
                      FLAGS.test_examples)


def _targeted_attack():
    from gacd_tf.analysis import TargetedCrossEntropy
    from gacd_tf.attacks import build_attack

    kwargs = dict(eps=FLAGS.eps, norm=FLAGS.norm, seed=FLAGS.seed,
                  objective=TargetedCrossEntropy())
    if FLAGS.attack == "pgd":
        kwargs.update(step_size=FLAGS.step_size, steps=FLAGS.attack_steps)
    return build_attack(FLAGS.attack, **kwargs)


def _attack_name(attack):
    steps = getattr(attack, "steps", None)  # AutoAttack has none
    return attack.get_config()["attack"].upper() + (f"-{steps}" if steps is not None else "")


def _write_json(name, obj):
    common.write_json(os.path.join(FLAGS.output_dir, name), obj)


# --------------------------------------------------------------------------
# The analyses, on explicit inputs (shared by their command and by the report).


def _transfer(paths, names, output_dir, data_dir=None):
    """Linear transfer of each model to --dataset [--classes] read from ``data_dir``
    (default --data_dir); returns (rows, task, attack name)."""
    import keras

    from gacd_tf.analysis import linear_transfer, write_transfer
    from gacd_tf.attacks import PGD
    from gacd_tf.data import load_split

    classes = _int_list("classes", FLAGS.classes) if FLAGS.classes else None
    data_dir = data_dir or FLAGS.data_dir
    train = load_split(FLAGS.dataset, "train", data_dir, FLAGS.train_examples, classes=classes)
    test = load_split(FLAGS.dataset, "test", data_dir, FLAGS.test_examples, classes=classes)
    task = FLAGS.dataset + (f" classes {','.join(map(str, classes))}" if classes else "")
    attack = PGD(eps=FLAGS.eps, step_size=FLAGS.step_size, steps=FLAGS.transfer_attack_steps,
                 norm=FLAGS.norm, seed=FLAGS.seed)
    data = types.SimpleNamespace(train=train, val_ds=None,
                                 steps_per_epoch=max(1, len(train) // FLAGS.batch_size))
    rows = []
    for name, path in zip(names, paths):
        logging.info("linear transfer of %s to %s (%d train, %d test examples)", path, task,
                     len(train), len(test))
        keras.utils.set_random_seed(FLAGS.seed)  # the same head initialisation for every model
        probe_dir = os.path.join(output_dir, f"probe_{name}")
        _check_probe_resume(probe_dir, path, classes)

        def fit(probe, probe_dir=probe_dir):
            common.fit_phase(probe, data, probe_dir, "probe", FLAGS.epochs,
                             last_path=os.path.join(probe_dir, "probe.keras"))

        result, probe = linear_transfer(
            common.load_model_from_flags(path, "--models"), train, test, FLAGS.epochs,
            optimizer=common.optimizer_from_flags(data.steps_per_epoch),
            batch_size=FLAGS.batch_size, attack=attack, weight_decay=FLAGS.weight_decay,
            seed=FLAGS.seed, augment=FLAGS.augment, fit=fit, verbose=FLAGS.verbose)
        result.update(model=name, source=path)
        autoattack = attack_flags.final_autoattack(probe.model, FLAGS.dataset, data_dir,
                                                   FLAGS.batch_size, classes=classes)
        if autoattack:
            result.update(autoattack=autoattack,
                          autoattack_robust_accuracy=autoattack["robust_accuracy"])
        print(f"transfer {name}: natural_accuracy={result['natural_accuracy']:.4f} "
              f"robust_accuracy={result['robust_accuracy']:.4f} ({len(test)} test examples)")
        rows.append(result)
    write_transfer(rows, output_dir, task)
    return rows, task, f"PGD-{FLAGS.transfer_attack_steps}"


def _check_probe_resume(probe_dir, model_path, classes):
    """Lets a probe resume its checkpoints only under the same settings (probe.json)."""
    import glob
    import hashlib

    with open(model_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    settings = {name: FLAGS[name].value for name in PROBE_FLAGS}
    settings = json.loads(json.dumps(dict(settings, classes=classes, model_sha256=digest)))
    path = os.path.join(probe_dir, "probe.json")
    if glob.glob(os.path.join(probe_dir, "checkpoints", "*", "state.json")):
        old = json.load(open(path)) if os.path.isfile(path) else {}
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise ConfigError(
                f"{probe_dir} holds a linear probe trained with other settings "
                f"({', '.join(changed[:4])} differ); use the same flags to resume it, or a new "
                "--output_dir")
        logging.info("%s holds checkpoints of this probe: resuming", probe_dir)
    os.makedirs(probe_dir, exist_ok=True)
    common.write_json(path, settings)


def _tsne_names(dataset):
    from gacd_tf.data.datasets import class_names

    source, target = _int_list("tsne_classes", FLAGS.tsne_classes, count=2)
    return source, target, class_names(dataset, [source, target])


# --------------------------------------------------------------------------
# Commands.


@COMMANDS.register("transfer")
def _transfer_command():
    from gacd_tf.analysis.tables import model_names

    paths = _require("models", "transfer")
    rows, task, _ = _transfer(paths, model_names(paths), FLAGS.output_dir)
    return {"task": task, "models": rows}


@COMMANDS.register("correlation")
def _correlation_command():
    from gacd_tf.analysis import correlation_maps
    from gacd_tf.data import make_dataset
    from gacd_tf.data.datasets import class_names

    teacher_path = _require("teacher", "correlation")
    paths = _require("models", "correlation")
    test = _test_split()
    teacher = _load_models([teacher_path], test.info, "--teacher")
    students = _load_models(paths, test.info)
    attack = attack_flags.eval_attack_from_flags()
    summary, _ = correlation_maps(
        next(iter(teacher.values())), students,
        make_dataset(test, FLAGS.batch_size, training=False), attack, FLAGS.output_dir,
        labels=class_names(FLAGS.dataset), attack_name=_attack_name(attack))
    for name, numbers in summary.items():
        print(f"correlation {name}: mean |corr_T - corr_S| natural={numbers['natural']:.4f} "
              f"adversarial={numbers['adversarial']:.4f}")
    result = {"teacher": teacher_path, "students": dict(zip(summary, [
        dict(v, model=p) for v, p in zip(summary.values(), paths)])),
        "dataset": FLAGS.dataset, "num_examples": len(test), "attack": attack.get_config()}
    _write_json("correlation.json", result)
    return result


@COMMANDS.register("tsne")
def _tsne_command():
    from gacd_tf.analysis import tsne_maps
    from gacd_tf.analysis.tsne import summary

    paths = ([FLAGS.teacher] if FLAGS.teacher else []) + list(FLAGS.models)
    if not paths:
        raise ConfigError("gacd-analyze tsne needs --models (and optionally --teacher)")
    source, target, names = _tsne_names(FLAGS.dataset)
    test = _test_split()
    models = _load_models(paths, test.info)
    attack = _targeted_attack()
    maps = tsne_maps(models, test, source, target, attack, FLAGS.output_dir,
                     examples=FLAGS.tsne_examples, perplexity=FLAGS.tsne_perplexity,
                     seed=FLAGS.seed, names=names)
    numbers = {name: summary(m) for name, m in maps.items()}
    for name, n in numbers.items():
        print(f"tsne {name}: adversarial {names[0]} classified {names[1]} "
              f"{n['adv_to_target']:.2f}, still {names[0]} {n['adv_still_source']:.2f}")
    result = {"classes": {"source": source, "target": target, "names": list(names)},
              "models": dict(zip(numbers, [dict(v, model=p) for v, p in
                                           zip(numbers.values(), paths)])),
              "attack": attack.get_config(), "png": "tsne.png"}
    _write_json("tsne.json", result)
    return result


@COMMANDS.register("sweep")
def _sweep_command():
    from gacd_tf.analysis import run_sweep

    flagfile = _require("distill_flagfile", "sweep")
    flag = _require("sweep_flag", "sweep").lstrip("-")
    values = _require("sweep_values", "sweep")
    if not os.path.isfile(flagfile):
        raise ConfigError(f"--distill_flagfile={flagfile} does not exist; name a gacd-distill "
                          "flagfile (e.g. flags/quickstart_gacd.cfg)")
    if flag in ("model_dir", "flagfile"):
        raise ConfigError(f"--sweep_flag={flag} cannot be swept: each run gets its own "
                          "--model_dir=OUTPUT_DIR/FLAG=VALUE")
    try:
        extra = shlex.split(FLAGS.distill_args)
    except ValueError as err:
        raise ConfigError(f"--distill_args cannot be split into arguments ({err})") from None
    rows = run_sweep(flag, values, FLAGS.output_dir, [f"--flagfile={flagfile}", *extra],
                     timeout=FLAGS.sweep_timeout)
    return {"flag": flag, "rows": rows}


@COMMANDS.register("report")
def _report_command():
    from gacd_tf.analysis import load_runs, render_report

    paths = _require("runs", "report")
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
            models[teacher] = _unique("teacher", models.values())
    students = [run for run in students if os.path.abspath(run.teacher) in models]

    dataset = runs[0].flags.get("dataset") or FLAGS.dataset
    data_dir = FLAGS.data_dir or runs[0].flags.get("data_dir")
    report, sections, loaded, test = {"runs": [run.row() for run in runs]}, {}, {}, None
    if ("correlation" in parts or "tsne" in parts) and students:
        from gacd_tf.models.io import check_model_fits

        test = _test_split(dataset, data_dir)
        for path, name in models.items():
            loaded[name] = common.load_model_from_flags(path, "--runs")
            check_model_fits(loaded[name], test.info, source=path)
    if "correlation" in parts and students:
        sections["correlation"] = _report_correlation(students, models, loaded, test, dataset,
                                                      report)
    if "tsne" in parts and students:
        sections["tsne"] = _report_tsne(students, models, loaded, test, dataset, report)
    if "transfer" in parts:
        from gacd_tf.analysis.tables import markdown_table
        from gacd_tf.analysis.transfer import TRANSFER_COLUMNS

        # The runs' data folder serves the transfer task too when it is the same dataset.
        rows, task, attack = _transfer(list(models), list(models.values()), FLAGS.output_dir,
                                       data_dir if FLAGS.dataset == dataset else None)
        sections["transfer"] = {"task": task, "attack": attack, "png": "transfer.png",
                                "table": markdown_table(rows, TRANSFER_COLUMNS[:-1])}
        report["transfer"] = {"task": task, "attack": attack, "models": rows}
    if not students and ("correlation" in parts or "tsne" in parts):
        notes.append("no run has a teacher, so there are no correlation maps or t-SNE maps")
    text = render_report(runs, correlation=sections.get("correlation"),
                         tsne=sections.get("tsne"), transfer=sections.get("transfer"),
                         notes=notes)
    from gacd_tf.analysis.tables import write_text

    write_text(os.path.join(FLAGS.output_dir, "report.md"), text)
    report["notes"] = notes
    _write_json("report.json", report)
    print(f"wrote {os.path.join(FLAGS.output_dir, 'report.md')}")
    return report


def _unique(name, taken):
    taken = set(taken)
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    return candidate


def _report_correlation(students, models, loaded, test, dataset, report):
    from gacd_tf.analysis import correlation_maps
    from gacd_tf.data import make_dataset
    from gacd_tf.data.datasets import class_names

    attack = attack_flags.eval_attack_from_flags()
    test_ds = make_dataset(test, FLAGS.batch_size, training=False)
    cache, section = {}, {}
    for run in students:
        teacher = models[os.path.abspath(run.teacher)]
        summary, cache[teacher] = correlation_maps(
            loaded[teacher], {run.name: loaded[run.name]}, test_ds, attack, FLAGS.output_dir,
            labels=class_names(dataset), attack_name=_attack_name(attack),
            teacher_matrices=cache.get(teacher))
        section[run.name] = dict(summary[run.name], teacher=teacher, attack=_attack_name(attack))
        print(f"correlation {run.name}: natural={section[run.name]['natural']:.4f} "
              f"adversarial={section[run.name]['adversarial']:.4f}")
    report["correlation"] = {"attack": attack.get_config(), "num_examples": len(test),
                             "students": section}
    return section


def _report_tsne(students, models, loaded, test, dataset, report):
    from gacd_tf.analysis import tsne_maps
    from gacd_tf.analysis.tables import slug
    from gacd_tf.analysis.tsne import summary

    source, target, names = _tsne_names(dataset)
    attack = _targeted_attack()
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
            "classes": names, "attack": _attack_name(attack)}


def main(argv):
    commands = argv[1:]
    if len(commands) != 1 or commands[0] not in COMMANDS:
        given = f" (got {' '.join(commands)!r})" if commands else ""
        raise ConfigError(f"name one command first: gacd-analyze COMMAND --flags, COMMAND one "
                          f"of {', '.join(COMMANDS.names())}{given}")
    command = commands[0]
    common.prepare_output_dir(FLAGS.output_dir, "--output_dir")
    common.setup_runtime(FLAGS.seed)
    common.write_json(os.path.join(FLAGS.output_dir, "flags.json"),
                      dict(common.flag_values(), command=command))
    COMMANDS.get(command)()


def entry_point():
    define_flags()
    common.run(main)


if __name__ == "__main__":
    entry_point()
