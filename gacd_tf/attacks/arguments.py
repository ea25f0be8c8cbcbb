"""Argument checks the attacks share; each failure is one ConfigError sentence
naming the attack and the argument (``"square attack p_init must be in (0, 1],
got 2"``)."""

import math
import numbers

from gacd_tf.errors import ConfigError


def is_number(value):
    """A real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_whole(value, low=1):
    """A finite whole number >= ``low``."""
    return is_number(value) and math.isfinite(value) and int(value) == value and value >= low


def require(ok, attack, requirement, value):
    """Raises ``"{attack} attack {requirement}, got {value!r}"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{attack} attack {requirement}, got {value!r}")


def check_eps(attack, eps):
    require(is_number(eps) and 0 <= eps < math.inf, attack, "eps must be a number >= 0", eps)


def check_linf_only(attack, norm):
    require(norm == "linf", attack, "norm must be 'linf' (the only one implemented)", norm)


def check_whole(attack, **values):
    """Each ``name=value`` must be a whole number >= 1."""
    for name, value in values.items():
        require(is_whole(value), attack, f"{name} must be a whole number >= 1", value)
