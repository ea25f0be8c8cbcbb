"""gacd-analyze correlation and tsne: teacher/student logit-correlation heat maps
(paper Figures 3-4) and t-SNE maps of features under a targeted attack (Figure 5)."""

from gacd_tf.analysis import correlation_maps, tsne_maps
from gacd_tf.analysis.tsne import summary
from gacd_tf.data import make_dataset
from gacd_tf.data.datasets import class_names
from gacd_tf.errors import ConfigError
from gacd_tf.programs import attack_flags
from gacd_tf.programs.analyze_inputs import (
    attack_name,
    load_models,
    require,
    targeted_attack,
    test_split,
    tsne_names,
    write_json,
)
from gacd_tf.programs.flag_core import FLAGS


def correlation_command(run):
    del run  # one device, writes into --output_dir

    teacher_path = require("teacher", "correlation")
    paths = require("models", "correlation")
    test = test_split()
    teacher = load_models([teacher_path], test.info, "--teacher")
    students = load_models(paths, test.info)
    attack = attack_flags.attack_from_flags()
    summary, _ = correlation_maps(
        next(iter(teacher.values())), students,
        make_dataset(test, FLAGS.batch_size, training=False), attack, FLAGS.output_dir,
        labels=class_names(FLAGS.dataset), attack_name=attack_name(attack))
    for name, numbers in summary.items():
        print(f"correlation {name}: mean |corr_T - corr_S| natural={numbers['natural']:.4f} "
              f"adversarial={numbers['adversarial']:.4f}")
    result = {"teacher": teacher_path, "students": dict(zip(summary, [
        dict(v, model=p) for v, p in zip(summary.values(), paths)])),
        "dataset": FLAGS.dataset, "num_examples": len(test), "attack": attack.get_config()}
    write_json("correlation.json", result)
    return result


def tsne_command(run):
    del run  # one device, writes into --output_dir

    paths = ([FLAGS.teacher] if FLAGS.teacher else []) + list(FLAGS.models)
    if not paths:
        raise ConfigError("gacd-analyze tsne needs --models (and optionally --teacher)")
    source, target, names = tsne_names(FLAGS.dataset)
    test = test_split()
    models = load_models(paths, test.info)
    attack = targeted_attack()
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
    write_json("tsne.json", result)
    return result
