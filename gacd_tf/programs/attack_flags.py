"""The evaluation threat model's flags, shared by every program that attacks.

Every choice comes from the attack registry (:mod:`gacd_tf.attacks.registry`):
``--attack`` takes any registered attack, ``--norm`` any registered norm,
``--aa_version`` any AutoAttack version and ``--aa_attacks`` any attack an
ensemble can run, so a new attack (a new file that registers itself, plus its
import line in ``gacd_tf/attacks/__init__.py``) needs no list here to edit. :func:`attack_from_flags` is the one way a program builds
an attack from flags (``gacd-evaluate``, ``gacd-analyze``, and the training
programs' final AutoAttack, :func:`final_autoattack`); it passes each attack
only the flags its constructor takes.
"""

import inspect
import os

import numpy as np
from absl import flags

from gacd_tf.attacks.registry import (
    AA_VERSIONS,
    ATTACKS,
    AUTOATTACK,
    autoattack_names,
    ensemble_attack_names,
    norm_names,
    unsupported_by_norm,
)
from gacd_tf.errors import ConfigError
from gacd_tf.evaluation import autoattack_test_subset
from gacd_tf.programs import devices
from gacd_tf.programs.flag_core import (
    FLAGS,
    DEFINE_enum,
    DEFINE_float,
    DEFINE_integer,
    DEFINE_list,
    arguments_as_flags,
)


def define_attack_flags():
    """The evaluation threat model (SPEC: PGD-20, eps 8/255, step 2/255, l_inf)."""
    DEFINE_enum("attack", "pgd", ATTACKS.names(), "Evaluation attack.")
    DEFINE_integer("attack_steps", 20, "Evaluation PGD steps.", lower_bound=0)
    DEFINE_float("eps", 8 / 255, "Attack radius in [0,1] pixel units.", lower_bound=0.0)
    DEFINE_float("step_size", 2 / 255, "PGD step size.", lower_bound=0.0)
    DEFINE_enum("norm", "linf", norm_names(), "Threat-model norm.")
    flags.register_validator(
        "step_size", lambda v: v > 0, message="--step_size must be > 0")
    DEFINE_integer("restarts", 1, "Evaluation PGD random starts; an example is robust only if "
                   "no iterate of any start is misclassified.", lower_bound=1)
    DEFINE_enum("aa_version", "standard", list(AA_VERSIONS), "--attack=autoattack: standard "
                "(APGD-CE, APGD-T, FAB-T, Square), plus (more attacks and restarts) or rand "
                "(APGD with EOT, for randomised models), as in the reference AutoAttack.")
    DEFINE_list("aa_attacks", [], "--attack=autoattack: run these attacks in this order "
                "instead of the version's (e.g. apgd-ce,apgd-t,fab-t,square); empty: the "
                "version's list.")
    DEFINE_integer("aa_seed", 0, "--attack=autoattack: seed of every attack's random draws "
                   "(recorded in the results).")
    flags.register_validator("aa_attacks", _check_aa_attacks)
    check_one_step_fits("step_size", "attack_steps", attack_flag="attack")
    _check_autoattack_norm(["attack"], lambda values: values["attack"] == AUTOATTACK)


def _check_autoattack_norm(extra, used):
    """Refuses --norm=l2 when the AutoAttack to run holds l_inf-only attacks.

    ``extra`` are the flags ``used(values)`` reads to tell whether AutoAttack
    runs at all.
    """

    def check(values):
        if values["norm"] != "l2" or not used(values):
            return True
        names = autoattack_names(values["aa_version"], values["aa_attacks"])
        bad = unsupported_by_norm(names, "l2")
        if not bad:
            return True
        keep = [name for name in names if name not in bad] or ["apgd-ce", "apgd-t"]
        raise flags.ValidationError(
            f"--norm=l2: AutoAttack's {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} "
            "implemented for l_inf only; with "
            f"--norm=l2 pass --aa_attacks={','.join(keep)}")

    flags.register_multi_flags_validator(["norm", "aa_version", "aa_attacks"] + extra, check)


def _check_aa_attacks(names):
    valid = ensemble_attack_names()
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise flags.ValidationError(
            f"--aa_attacks has unknown attack(s) {', '.join(unknown)}; choose from "
            f"{', '.join(valid)}")
    return True


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
                         "step_size": "step_size", "steps": "attack_steps",
                         "restarts": "restarts"}
# What differs for one attack (the ensemble has its own seed flag).
ATTACK_ARGUMENT_FLAGS_OF = {AUTOATTACK: {"seed": "aa_seed", "version": "aa_version",
                                         "attacks": "aa_attacks"}}


def attack_from_flags(name=None, where_taken=None, **overrides):
    """The attack ``name`` (default ``--attack``) of the registry, given the flags
    its constructor accepts, then ``overrides`` (e.g. a targeted objective).

    Args:
        name: a registered attack (default ``--attack``).
        where_taken: arguments set only for an attack whose constructor takes them.
        **overrides: arguments the attack must take.

    Raises:
        ConfigError: an override the attack does not take, named with ``--attack``.
    """
    name = name or FLAGS.attack
    cls = ATTACKS.get(name)
    accepted = inspect.signature(cls).parameters
    arguments = dict(ATTACK_ARGUMENT_FLAGS, **ATTACK_ARGUMENT_FLAGS_OF.get(name, {}))
    kwargs = {arg: FLAGS[flag].value for arg, flag in arguments.items()
              if arg in accepted and flag in FLAGS}
    if name == AUTOATTACK:
        kwargs["attacks"] = list(kwargs.get("attacks") or []) or None
        if "pgd" in (kwargs["attacks"] or []):  # PGD in the ensemble: the PGD flags
            kwargs["attack_settings"] = {"pgd": {
                "steps": FLAGS.attack_steps, "step_size": FLAGS.step_size,
                "restarts": FLAGS.restarts}}
    refused = sorted(set(overrides) - set(accepted))
    if refused:
        raise ConfigError(f"--attack={name} takes no {', '.join(refused)}; choose an attack "
                          "that does (e.g. --attack=pgd)")
    kwargs.update({k: v for k, v in (where_taken or {}).items() if k in accepted})
    kwargs.update(overrides)
    return cls(**kwargs)


# The per-example arrays of an evaluation result (evaluate_robustness's return_examples).
EXAMPLE_ARRAYS = ("x_adv", "robust", "clean_correct", "labels", "predictions")


def save_adversarial(path, result):
    """Writes an evaluation's adversarial examples and per-example flags to ``path`` (.npz)."""
    arrays = {key: result[key] for key in EXAMPLE_ARRAYS if key in result}
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{name}")
    with open(tmp, "wb") as f:  # a file object: np.savez adds no second ".npz"
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
    print(f"wrote {len(arrays['labels'])} adversarial examples and flags to {path}")


def define_final_autoattack_flags():
    """``--final_autoattack_examples``: AutoAttack in a training program's final evaluation."""
    DEFINE_integer("final_autoattack_examples", 0, "After training, also evaluate the final "
                   "model with AutoAttack (--aa_version or --aa_attacks, --eps, --norm, "
                   "--aa_seed) on a "
                   "deterministic class-balanced subset of this many test examples, recorded "
                   "under 'autoattack' in metrics.json beside the PGD figures (0: off; the "
                   "whole test split when larger).", lower_bound=0)
    _check_autoattack_norm(["final_autoattack_examples"],
                           lambda values: values["final_autoattack_examples"] > 0)


def final_autoattack(model, dataset_name, data_dir, batch_size, classes=None, verbose=None,
                     progress_file=None, strategy=None):
    """AutoAttack (``--aa_version``, or the ``--aa_attacks`` list) of ``model`` on
    ``--final_autoattack_examples`` test examples.

    Args:
        model: the trained classifier (or probe), ``model(x, training=False)``.
        dataset_name: the dataset of the test split (e.g. "cifar10").
        data_dir: its folder (None: tensorflow-datasets).
        batch_size: points per attack call.
        classes: the transfer task's classes (relabelled 0..k-1), or None.
        verbose: 0 silent, 1 progress bars and lines, 2 one line per attack
            (default: 1 under --verbose=1, else 2).
        progress_file: save the attack's progress there and resume from it
            (a killed run started again does not redo the finished batches);
            under --strategy=multi_worker a path in a worker's stand-in folder
            means the chief's (every worker resumes from the chief's file).
        strategy: the program's ``tf.distribute`` strategy: the batches are
            split between its replicas (None: one device).

    Returns:
        None when the flag is 0 (or absent); else a JSON-able dict with
        ``natural_accuracy``, ``robust_accuracy``, ``robust_accuracy_by_attack``,
        ``num_examples``, ``seconds``, ``seconds_by_attack``, ``warnings`` and
        ``attack`` (settings and seed).
    """
    if "final_autoattack_examples" not in FLAGS or not FLAGS.final_autoattack_examples:
        return None
    chief = devices.is_chief()  # other workers of --strategy=multi_worker evaluate quietly
    if verbose is None:
        verbose = (1 if "verbose" in FLAGS and FLAGS.verbose == 1 else 2) if chief else 0
    # attack_settings=None: a "pgd" in --aa_attacks runs with PGD's own defaults
    # here (as it always has), not with --attack_steps / --step_size / --restarts.
    attack = attack_from_flags(AUTOATTACK, verbose=verbose, attack_settings=None)
    with arguments_as_flags(examples="final_autoattack_examples"):
        result = autoattack_test_subset(
            model, attack, dataset_name, data_dir, FLAGS.final_autoattack_examples, batch_size,
            classes=classes, strategy=strategy,
            progress_file=devices.chief_dir(progress_file) if progress_file else None)
    if chief:
        print(f"autoattack: natural_accuracy={result['natural_accuracy']:.4f} "
              f"robust_accuracy={result['robust_accuracy']:.4f} ({result['num_examples']} "
              "test examples)", flush=True)
    return result
