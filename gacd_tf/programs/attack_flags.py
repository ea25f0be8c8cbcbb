"""The evaluation threat model's flags, shared by every program that attacks.

``--attack`` takes any name of the attack registry (``gacd_tf.attacks.ATTACKS``),
so a new attack is a new file plus one registry line: no list here to edit.
:func:`eval_attack_from_flags` passes each attack only the flags its
constructor takes.
"""

import inspect

from absl import flags

from gacd_tf.programs.common import FLAGS, DEFINE_enum, DEFINE_float, DEFINE_integer


def attack_names():
    from gacd_tf.attacks import ATTACKS

    return ATTACKS.names()


def define_attack_flags():
    """The evaluation threat model (SPEC: PGD-20, eps 8/255, step 2/255, l_inf)."""
    DEFINE_enum("attack", "pgd", attack_names(), "Evaluation attack.")
    DEFINE_integer("attack_steps", 20, "Evaluation PGD steps.", lower_bound=0)
    DEFINE_float("eps", 8 / 255, "Attack radius in [0,1] pixel units.", lower_bound=0.0)
    DEFINE_float("step_size", 2 / 255, "PGD step size.", lower_bound=0.0)
    DEFINE_enum("norm", "linf", ["linf", "l2"], "Threat-model norm.")
    flags.register_validator(
        "step_size", lambda v: v > 0, message="--step_size must be > 0")
    check_one_step_fits("step_size", "attack_steps", attack_flag="attack")


def check_one_step_fits(step_flag, steps_flag, default_flag=None, attack_flag=None):
    """Refuses a one-step PGD whose step is larger than ``--eps`` (it would be clipped).

    ``--step_flag`` (or ``--default_flag`` while it is unset) is the step size
    and ``--steps_flag`` the number of steps; with ``attack_flag``, only
    ``--attack_flag=pgd`` is checked (FGSM has no step size).
    """
    names = ["eps", step_flag, steps_flag] + [n for n in (default_flag, attack_flag) if n]

    def check(values):
        step = values[step_flag]
        if step is None and default_flag:
            step = values[default_flag]
        if (attack_flag and values[attack_flag] != "pgd") or values[steps_flag] != 1 \
                or step is None or step <= values["eps"]:
            return True
        source = f"--{step_flag}" if values[step_flag] is not None else \
            f"--{step_flag} (unset, so --{default_flag})"
        raise flags.ValidationError(
            f"{source}={step:g} is larger than --eps={values['eps']:g} with "
            f"--{steps_flag}=1: the single step would be clipped to eps; use a step size "
            f"<= --eps, or more --{steps_flag}")

    flags.register_multi_flags_validator(names, check)


# Constructor argument -> the flag that sets it, for every attack that takes it.
ATTACK_ARGUMENT_FLAGS = {"eps": "eps", "norm": "norm", "seed": "seed",
                         "step_size": "step_size", "steps": "attack_steps"}


def eval_attack_from_flags():
    """The ``--attack`` of the registry, given the flags its constructor accepts."""
    from gacd_tf.attacks import ATTACKS

    cls = ATTACKS.get(FLAGS.attack)
    accepted = inspect.signature(cls).parameters
    kwargs = {arg: FLAGS[flag].value for arg, flag in ATTACK_ARGUMENT_FLAGS.items()
              if arg in accepted and flag in FLAGS}
    return cls(**kwargs)
