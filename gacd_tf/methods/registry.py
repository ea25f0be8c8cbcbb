"""The registry of distillation methods, and how a method is built by name.

A method is a trainer class registered here (``@METHODS.register("kd")``)
that declares its knobs as :class:`gacd_tf.settings.Setting` s in
``SETTINGS``. ``gacd-distill`` builds its flags, validation and the settings
it records from those declarations, so adding a method is one new module that
registers itself plus its import line in ``gacd_tf/methods/__init__.py``. Python users pick a method by name with :func:`build`.

Class attributes a method may declare (see :class:`MethodDeclaration`):

- ``SETTINGS``: its settings (tuple of ``Setting``).
- ``REWEIGHT``: the default of the shared ``reweight`` switch (teacher-
  confidence sample weights), or ``None`` where weighting makes no sense.
- ``NEEDS_TEACHER``: ``False`` for teacher-free controls.
- ``NEEDS_TRAIN_LABELS``: ``True`` for methods that index the training set
  (memory banks, negative sampling).
- ``NEEDS_CONTEXT``: the :class:`MethodContext` fields it cannot do without
  (e.g. IGDM's ``epochs`` and ``steps_per_epoch``, for its ramp); they reach
  its constructor under the same names.
- ``extra_results()``: figures the method reports after training (merged
  into ``metrics.json``); default none.
- ``build_attack(settings, context)``: its training attack, or ``None``.

Example:
>>> trainer = build("kd", student, teacher, kd_temperature=2.0)  # doctest: +SKIP
"""

import dataclasses
import inspect

from gacd_tf.attacks import PGD
from gacd_tf.errors import ConfigError
from gacd_tf.registry import Registry

METHODS = Registry("distillation method")


@dataclasses.dataclass
class MethodContext:
    """What every method may draw on besides its own settings.

    Args:
        seed: seed of the method's random parts (attacks, banks, heads).
        weight_decay: coupled L2 coefficient.
        eps, norm: the threat model of the training attacks.
        step_size: the evaluation PGD step (fallback of ``train_step_size``).
        train_attack_steps, train_step_size: PGD of the student attacks
            (ARD, AFT and the peer methods).
        val_attack_steps: steps of the per-epoch validation PGD, at
            ``step_size`` (``None``: validate with the training attack).
        reweight: the user's reweighting choice (``None``: the method's default).
        epochs, steps_per_epoch: the run's length (methods whose losses follow
            the schedule, e.g. IGDM's ramp; ``None``: unknown).
    """

    seed: int = None
    weight_decay: float = 5e-4
    eps: float = 8 / 255
    norm: str = "linf"
    step_size: float = 2 / 255
    train_attack_steps: int = 10
    train_step_size: float = None
    val_attack_steps: int = None
    reweight: bool = None
    epochs: int = None
    steps_per_epoch: int = None

    def attack(self, objective="ce", **overrides):
        """A PGD with the training threat model (overridable), seeded by ``seed``."""

        kwargs = dict(eps=self.eps, step_size=self.train_step_size or self.step_size,
                      steps=self.train_attack_steps, norm=self.norm, objective=objective,
                      seed=self.seed)
        kwargs.update(overrides)
        return PGD(**kwargs)

    def validation_attack(self):
        """The PGD of each epoch's validation (``test_step``): ``val_attack_steps``
        steps of ``step_size``, or the training attack when ``val_attack_steps`` is unset."""
        if self.val_attack_steps is None:
            return self.attack()
        return self.attack(steps=self.val_attack_steps, step_size=self.step_size)


class MethodDeclaration:
    """Mixin giving a trainer class the declarations :data:`METHODS` reads."""

    SETTINGS = ()
    REWEIGHT = None
    NEEDS_TEACHER = True
    NEEDS_TRAIN_LABELS = False
    NEEDS_CONTEXT = ()

    @classmethod
    def check_inputs(cls, teacher, train_labels, context=None):
        """Refuses a missing input the method needs, naming it."""
        name = next((n for n in METHODS.names() if METHODS.get(n) is cls), cls.__name__)
        if cls.NEEDS_TEACHER and teacher is None:
            raise ConfigError(f"method {name!r} needs a teacher: pass teacher=<a Keras model>")
        if cls.NEEDS_TRAIN_LABELS and train_labels is None:
            raise ConfigError(f"method {name!r} needs train_labels: the int labels of the "
                              "training set by sample index (e.g. train_labels=train.labels)")
        missing = [f for f in cls.NEEDS_CONTEXT if getattr(context, f, None) is None]
        if missing:
            raise ConfigError(f"method {name!r} needs {' and '.join(missing)} in its context "
                              f"(e.g. context=MethodContext("
                              f"{', '.join(f'{f}=...' for f in missing)}))")

    def extra_results(self):
        """Figures this method reports after training, by name (for ``metrics.json``)."""
        return {}

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
    def from_settings(cls, student, teacher, settings, context, train_labels=None):
        """Builds the trainer from setting values (by name) and a :class:`MethodContext`.

        Returns ``(trainer, record)``: ``record`` holds every setting, the
        resolved ``reweight`` where it applies, and the training attack's and the
        validation attack's configurations, for ``metrics.json``.
        """
        cls.check_inputs(teacher, train_labels, context)
        values = cls.setting_values(**settings)
        kwargs = {s.name: values[s.name] for s in cls.SETTINGS if s.constructor}
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
            kwargs["train_labels"] = train_labels
        if "seed" in accepted:
            kwargs["seed"] = context.seed
        kwargs.update({f: getattr(context, f) for f in cls.NEEDS_CONTEXT})
        eval_attack = context.validation_attack()
        record["validation_attack"] = eval_attack.get_config()
        kwargs.update(weight_decay=context.weight_decay, eval_attack=eval_attack)
        networks = (student, teacher) if cls.NEEDS_TEACHER else (student,)
        return cls(*networks, **kwargs), record


def build(name, student, teacher=None, train_labels=None, context=None, **settings):
    """The trainer of method ``name`` with the given settings (the rest default).

    Args:
        name: a registered method (a name of :data:`METHODS`: "kd", "ard", "gacd", ...).
        student: the network to train, [0, 1] images -> logits.
        teacher: the frozen teacher (``None`` for teacher-free methods such as "natural").
        train_labels: int labels of the training set by sample index (methods
            with a memory bank, such as "gacd", need them).
        context: a :class:`MethodContext` (default: its defaults).
        **settings: the method's settings by name, e.g. ``kd_alpha=0.5``.

    Returns:
        the trainer, ready to ``compile`` and ``fit``.

    Raises:
        ConfigError: an unknown method or setting, a bad setting value, or a
            missing input (the message names it: ``teacher`` or ``train_labels``).

    Example:
    >>> kd = build("kd", student, teacher, kd_alpha=0.5)  # doctest: +SKIP
    >>> gacd = build("gacd", student, teacher, train_labels=train.labels)  # doctest: +SKIP
    """
    cls = METHODS.get(name)
    return cls.from_settings(student, teacher, settings, context or MethodContext(),
                             train_labels=train_labels)[0]
