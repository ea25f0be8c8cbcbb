"""Declared settings: how a method (or any configurable part) states its knobs.

A :class:`Setting` names one knob once: its name is the method's constructor
argument, the key of :func:`gacd_tf.methods.build`, the program's flag and the
key recorded in ``metrics.json``; with it come its default, help and valid
range. Programs build their flags from these
declarations, so a new method brings its flags with it.

Example:
>>> ALPHA = Setting("kd_alpha", 0.9, "KD: weight a of the KL term.", lower=0.0, upper=1.0)
>>> ALPHA.check(0.5)
0.5
"""

import dataclasses
import math

from gacd_tf.errors import ArgumentError

KINDS = ("float", "int", "bool", "enum", "str")


class SettingError(ArgumentError):
    """A value outside a :class:`Setting`'s range; ``setting`` says which one.

    The message names the setting (the constructor argument); programs, whose
    flag has the same name, re-word it as a flag.
    """

    def __init__(self, setting, value, problem):
        self.setting = setting
        super().__init__(setting.name, value, problem)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One declared knob.

    Args:
        name: the one name of the knob: the constructor argument, the key of
            ``gacd_tf.methods.build``, the program flag ``--NAME`` and the
            ``metrics.json`` settings key (e.g. ``"kd_alpha"``).
        default: the default value (``None`` for "derived from another setting").
        help: one line for ``--helpfull``.
        constructor: the class's constructor takes an argument ``NAME``
            (``False``: the class's own hooks use it, e.g. to build its attack).
        kind: "float", "int", "bool", "enum" or "str".
        lower, upper: inclusive bounds for numbers.
        positive: numbers must be > 0.
        choices: the allowed values of an enum.
        step_of: for a step size, ``(steps_setting, fallback_flag)``: a single
            step larger than eps is refused (it would be clipped).
    """

    name: str
    default: object
    help: str
    constructor: bool = True
    kind: str = "float"
    lower: float = None
    upper: float = None
    positive: bool = False
    choices: tuple = ()
    step_of: tuple = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"setting {self.name}: kind must be one of {KINDS}")

    def check(self, value):
        """``value`` if it is valid for this setting, else :class:`SettingError`."""
        if value is None:
            return value
        if self.kind in ("float", "int"):
            if self.kind == "int" and (isinstance(value, bool) or int(value) != value):
                raise SettingError(self, value, "must be a whole number")
            if not math.isfinite(value):
                raise SettingError(self, value, "must be a finite number")
            if self.positive and not value > 0:
                raise SettingError(self, value, "must be > 0")
            if self.lower is not None and value < self.lower:
                raise SettingError(self, value, f"must be >= {self.lower}")
            if self.upper is not None and value > self.upper:
                raise SettingError(self, value, f"must be <= {self.upper}")
        elif self.kind == "enum" and value not in self.choices:
            raise SettingError(self, value, f"must be one of {', '.join(self.choices)}")
        elif self.kind == "bool" and not isinstance(value, bool):
            raise SettingError(self, value, "must be True or False")
        return value
