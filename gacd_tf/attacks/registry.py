"""The attack registry: the one source of attack names, norms, objectives and
AutoAttack versions.

Each attack, norm and objective registers itself in its own file
(``@ATTACKS.register("name")``, ``@NORMS.register``, ``@OBJECTIVES.register``),
so a new one is one new file with one registry line, plus one import line in
``gacd_tf/attacks/__init__.py``, which loads it. Programs take their
``--attack``, ``--norm``, ``--aa_version`` and ``--aa_attacks`` choices and
their validation from here.

Example:
>>> from gacd_tf.attacks.registry import ATTACKS, build_attack
>>> "pgd" in ATTACKS
True
>>> build_attack("pgd", steps=20).get_config()["steps"]
20
"""

from gacd_tf.errors import ConfigError
from gacd_tf.registry import Registry

ATTACKS = Registry("attack")
NORMS = Registry("attack norm")
OBJECTIVES = Registry("attack objective")
# GACD's optimal-transport objective lives with GACD (a higher package).
OBJECTIVES.registered_by("ot", "gacd_tf.methods.gacd")

# The name of the ensemble in ATTACKS (gacd_tf/attacks/autoattack.py).
AUTOATTACK = "autoattack"
# The norms an attack implements unless it declares NORMS = (...) (FAB and Square: linf).
ALL_NORMS = ("linf", "l2")

# The reference's versions (autoattack.py, set_version and the constructors):
# the attacks in order, and the settings each attack gets in that version.
AA_VERSIONS = {
    "standard": {
        "attacks": ("apgd-ce", "apgd-t", "fab-t", "square"),
        "settings": {
            "apgd-ce": {"n_restarts": 1, "n_iter": 100},
            "apgd-t": {"n_restarts": 1, "n_iter": 100, "n_target_classes": 9},
            "fab-t": {"n_restarts": 1, "n_iter": 100, "n_target_classes": 9},
            "square": {"n_queries": 5000, "p_init": 0.8, "rescale_schedule": False},
        },
    },
    "plus": {
        "attacks": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
        "settings": {
            "apgd-ce": {"n_restarts": 5, "n_iter": 100},
            "apgd-dlr": {"n_restarts": 5, "n_iter": 100},
            "fab": {"n_restarts": 5, "n_iter": 100},
            "square": {"n_queries": 5000, "p_init": 0.8, "rescale_schedule": False},
            "apgd-t": {"n_restarts": 1, "n_iter": 100, "n_target_classes": 9},
            "fab-t": {"n_restarts": 1, "n_iter": 100, "n_target_classes": 9},
        },
    },
    "rand": {
        "attacks": ("apgd-ce", "apgd-dlr"),
        "settings": {
            "apgd-ce": {"n_restarts": 1, "n_iter": 100, "eot_iter": 20},
            "apgd-dlr": {"n_restarts": 1, "n_iter": 100, "eot_iter": 20},
        },
    },
}


def norm_names():
    """The registered threat-model norms ("linf", "l2")."""
    return NORMS.names()


def ensemble_attack_names():
    """Registry names an ensemble can take: every attack but the ensemble itself."""
    return [name for name in ATTACKS.names() if name != AUTOATTACK]


def attack_norms(name):
    """The norms attack ``name`` implements (its ``NORMS``; default every norm)."""
    return tuple(getattr(ATTACKS.get(name), "NORMS", ALL_NORMS))


def needs_gradients(name):
    """False for an attack that only queries the model's outputs (its ``NEEDS_GRADIENTS``;
    default True): the one to run on a model whose gradients are masked (TFLite)."""
    return bool(getattr(ATTACKS.get(name), "NEEDS_GRADIENTS", True))


def autoattack_names(version="standard", attacks=None):
    """The attacks AutoAttack runs: ``attacks`` if given, else the version's."""
    if version not in AA_VERSIONS:
        raise ConfigError(f"unknown AutoAttack version {version!r}; choose one of: "
                          f"{', '.join(AA_VERSIONS)}")
    return list(attacks) if attacks else list(AA_VERSIONS[version]["attacks"])


def unsupported_by_norm(names, norm):
    """The attacks of ``names`` that do not implement ``norm``."""
    return [name for name in names if norm not in attack_norms(name)]


def build_attack(name="pgd", **settings):
    """An attack from the registry by name, e.g. ``build_attack("pgd", steps=20)``."""
    return ATTACKS.get(name)(**settings)
