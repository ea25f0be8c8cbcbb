"""gacd-distill's method flags, built from the method registry's declarations.

Every registered method (``gacd_tf.methods.METHODS``) declares its settings;
each becomes a flag of the same name, with its help, default and range, so a
new method brings its flags with it. :func:`method_from_flags` builds the
chosen method's trainer and translates a library setting error into its flag.
"""

from gacd_tf.errors import ConfigError
from gacd_tf.methods import METHODS, MethodContext
from gacd_tf.programs import attack_flags, flag_core
from gacd_tf.programs.flag_core import FLAGS
from gacd_tf.settings import SettingError


def define_method_flags():
    """``--method``, ``--reweight`` and every registered method's settings."""
    registry = METHODS
    flag_core.DEFINE_enum("method", "gacd", registry.names(), "Distillation method.")
    on = [n for n in registry.names() if registry.get(n).REWEIGHT is True]
    off = [n for n in registry.names() if registry.get(n).REWEIGHT is False]
    flag_core.DEFINE_bool("reweight", None, "Weight each sample by the teacher's probability of "
                          f"its true class (default: on for {', '.join(on)}, off for "
                          f"{', '.join(off)}; methods without a teacher ignore it).")
    defined = {}
    for name in registry.names():
        for setting in registry.get(name).SETTINGS:
            if setting.name in defined:
                if defined[setting.name] != setting:
                    raise ValueError(f"methods declare setting {setting.name} differently")
                continue
            defined[setting.name] = setting
            _define(setting)
            if setting.step_of:
                steps, fallback = setting.step_of
                attack_flags.check_one_step_fits(setting.name, steps, fallback)


def _define(setting):
    bounds = {"lower_bound": setting.lower, "upper_bound": setting.upper}
    bounds = {k: v for k, v in bounds.items() if v is not None}
    if setting.kind == "float":
        flag_core.DEFINE_float(setting.name, setting.default, setting.help,
                               positive=setting.positive, **bounds)
    elif setting.kind == "int":
        if setting.positive:
            bounds.setdefault("lower_bound", 1)
        flag_core.DEFINE_integer(setting.name, setting.default, setting.help, **bounds)
    elif setting.kind == "bool":
        flag_core.DEFINE_bool(setting.name, setting.default, setting.help)
    elif setting.kind == "enum":
        flag_core.DEFINE_enum(setting.name, setting.default, list(setting.choices), setting.help)
    else:
        flag_core.DEFINE_string(setting.name, setting.default, setting.help)


def method_class():
    return METHODS.get(FLAGS.method)


def context_from_flags(steps_per_epoch=None):
    """The :class:`gacd_tf.methods.MethodContext` of the flags (its ``attack()`` is
    the training PGD of ARD, AFT and the peer methods, its ``validation_attack()``
    the evaluation PGD's ``--attack_steps`` at ``--step_size``); ``epochs`` is
    ``--epochs``."""
    return MethodContext(
        epochs=FLAGS.epochs, steps_per_epoch=steps_per_epoch, seed=FLAGS.seed, weight_decay=FLAGS.weight_decay,
        eps=FLAGS.eps, norm=FLAGS.norm, step_size=FLAGS.step_size,
        train_attack_steps=FLAGS.train_attack_steps, train_step_size=FLAGS.train_step_size,
        val_attack_steps=FLAGS.attack_steps, reweight=FLAGS.reweight)


def method_from_flags(student, teacher, train_labels, steps_per_epoch):
    """``(trainer, settings record)`` of ``--method`` from the flags (a setting's
    flag has the setting's name)."""
    cls = method_class()
    values = {s.name: FLAGS[s.name].value for s in cls.SETTINGS}
    try:
        return cls.from_settings(student, teacher, values, context_from_flags(steps_per_epoch),
                                 train_labels=train_labels)
    except SettingError as err:
        raise ConfigError(f"--{err.setting.name}={err.value}: {err.problem}") from None
