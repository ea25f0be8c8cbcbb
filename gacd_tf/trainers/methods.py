"""The registry of distillation methods, and how a method is built by name.

A method is a trainer class registered here (``@METHODS.register("kd")``)
that declares its knobs as :class:`gacd_tf.settings.Setting` s in
``SETTINGS``. ``gacd-distill`` builds its flags, validation and the settings
it records from those declarations, so adding a method is one new file plus
one registry line. Python users pick a method by name with
:func:`build_method`.

Class attributes a method may declare (see :class:`MethodDeclaration`):

- ``SETTINGS``: its settings (tuple of ``Setting``).
- ``REWEIGHT``: the default of the shared ``reweight`` switch (teacher-
  confidence sample weights), or ``None`` where weighting makes no sense.
- ``NEEDS_TEACHER``: ``False`` for teacher-free controls.
- ``build_attack(settings, context)``: its training attack, or ``None``.

Example:
>>> trainer = build_method("kd", student, teacher, kd_temperature=2.0)  # doctest: +SKIP
"""

import dataclasses
import inspect

from gacd_tf.errors import ConfigError
from gacd_tf.registry import Registry

METHODS = Registry("distillation method")


@dataclasses.dataclass
class MethodContext:
    """What every method may draw on besides its own settings.

    Args:
        train_labels: int labels of the training set by sample index
            (memory banks and negative sampling).
        seed: seed of the method's random parts (attacks, banks, heads).
        weight_decay: coupled L2 coefficient.
        eps, norm: the threat model of the training attacks.
        step_size: the evaluation PGD step (fallback of ``train_step_size``).
        train_attack_steps, train_step_size: PGD of the student attacks
            (ARD, AFT and the peer methods).
        reweight: the user's reweighting choice (``None``: the method's default).
    """

    train_labels: object = None
    seed: int = None
    weight_decay: float = 5e-4
    eps: float = 8 / 255
    norm: str = "linf"
    step_size: float = 2 / 255
    train_attack_steps: int = 10
    train_step_size: float = None
    reweight: bool = None

    def attack(self, objective="ce", **overrides):
        """A PGD with the training threat model (overridable), seeded by ``seed``."""
        from gacd_tf.attacks import PGD

        kwargs = dict(eps=self.eps, step_size=self.train_step_size or self.step_size,
                      steps=self.train_attack_steps, norm=self.norm, objective=objective,
                      seed=self.seed)
        kwargs.update(overrides)
        return PGD(**kwargs)


class MethodDeclaration:
    """Mixin giving a trainer class the declarations :data:`METHODS` reads."""

    SETTINGS = ()
    REWEIGHT = None
    NEEDS_TEACHER = True

    @classmethod
    def setting_values(cls, **values):
        """Every declared setting's value (given or default), validated, by name."""
        known = {s.name for s in cls.SETTINGS}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no setting {', '.join(unknown)}; its "
                              f"settings are: {', '.join(sorted(known)) or 'none'}")
        return {s.name: s.check(values.get(s.name, s.default)) for s in cls.SETTINGS}

    @classmethod
    def build_attack(cls, settings, context):
        """The method's training attack (``None``: it has none)."""
        return None

    @classmethod
    def from_settings(cls, student, teacher, settings, context):
        """Builds the trainer from setting values (by name) and a :class:`MethodContext`.

        Returns ``(trainer, record)``: ``record`` holds every setting, the
        resolved ``reweight`` where it applies and the training attack's
        configuration, for ``metrics.json``.
        """
        values = cls.setting_values(**settings)
        kwargs = {s.arg: values[s.name] for s in cls.SETTINGS if s.arg}
        record = dict(values)
        if cls.REWEIGHT is not None:
            reweight = cls.REWEIGHT if context.reweight is None else bool(context.reweight)
            kwargs["reweight"] = record["reweight"] = reweight
        attack = cls.build_attack(values, context)
        if attack is not None:
            kwargs["attack"] = attack
            record["attack"] = attack.get_config()
        accepted = inspect.signature(cls).parameters
        if "train_labels" in accepted:
            kwargs["train_labels"] = context.train_labels
        if "seed" in accepted:
            kwargs["seed"] = context.seed
        kwargs.update(weight_decay=context.weight_decay, eval_attack=context.attack())
        networks = (student, teacher) if cls.NEEDS_TEACHER else (student,)
        return cls(*networks, **kwargs), record


def build_method(name, student, teacher=None, context=None, **settings):
    """The trainer of method ``name`` with the given settings (the rest default).

    Args:
        name: a registered method ("kd", "ard", "gacd", ...).
        student, teacher: the networks (``teacher`` unused by teacher-free methods).
        context: a :class:`MethodContext` (default: its defaults).
        **settings: the method's settings by name, e.g. ``kd_alpha=0.5``.

    Returns:
        the trainer, ready to ``compile`` and ``fit``.
    """
    cls = METHODS.get(name)
    if cls.NEEDS_TEACHER and teacher is None:
        raise ConfigError(f"method {name!r} needs a teacher")
    return cls.from_settings(student, teacher, settings, context or MethodContext())[0]
