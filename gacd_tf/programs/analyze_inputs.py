"""gacd-analyze: the inputs its commands share (required flags, class lists, models,
the test split, the targeted attack, JSON output)."""

import os

from gacd_tf.analysis import TargetedCrossEntropy
from gacd_tf.analysis.tables import model_names
from gacd_tf.data import load_split
from gacd_tf.data.datasets import class_names
from gacd_tf.errors import ConfigError
from gacd_tf.models.io import check_model_fits
from gacd_tf.programs import attack_flags, common
from gacd_tf.programs.flag_core import FLAGS, arguments_as_flags


def require(name, command):
    value = FLAGS[name].value
    if value in (None, "", []):
        raise ConfigError(f"gacd-analyze {command} needs --{name}")
    return value


def int_list(name, values, count=None):
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


def load_models(paths, info=None, flag="--models"):
    """dict name -> loaded model, checked against the dataset ``info`` when given."""
    models = {}
    for name, path in zip(model_names(paths), paths):
        model = common.load_model_from_flags(path, flag)
        if info is not None:
            check_model_fits(model, info, source=path)
        models[name] = model
    return models


def test_split(dataset=None, data_dir=None):
    with arguments_as_flags(examples="test_examples"):
        return load_split(dataset or FLAGS.dataset, "test", data_dir or FLAGS.data_dir,
                          FLAGS.test_examples)


def targeted_attack():
    """``--attack`` towards a target class (:class:`TargetedCrossEntropy`), one random
    start whatever ``--restarts`` says."""
    return attack_flags.attack_from_flags(where_taken={"restarts": 1},
                                          objective=TargetedCrossEntropy())


def attack_name(attack):
    steps = getattr(attack, "steps", None)  # AutoAttack has none
    return attack.get_config()["attack"].upper() + (f"-{steps}" if steps is not None else "")


def write_json(name, obj):
    common.write_json(os.path.join(FLAGS.output_dir, name), obj)


def tsne_names(dataset):
    source, target = int_list("tsne_classes", FLAGS.tsne_classes, count=2)
    return source, target, class_names(dataset, [source, target])
