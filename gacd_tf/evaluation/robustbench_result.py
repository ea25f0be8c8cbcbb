"""An AutoAttack result in the form RobustBench files its models' results."""

import math

from gacd_tf.errors import ArgumentError

THREAT_MODELS = {"linf": "Linf", "l2": "L2"}


def eps_text(eps, norm="linf"):
    """``eps`` as RobustBench writes it: ``"8/255"`` for l_inf, ``"0.5"`` for l_2.

    An l_inf radius that is a whole number of 255ths is written as that
    fraction; any other radius as its decimal value.

    Example:
    >>> eps_text(8 / 255), eps_text(0.5, "l2"), eps_text(0.03)
    ('8/255', '0.5', '0.03')
    """
    steps = eps * 255
    if norm == "linf" and steps > 0 and math.isclose(steps, round(steps), abs_tol=1e-4):
        return f"{round(steps)}/255"
    return f"{eps:.6g}"


def robustbench_entry(result, *, dataset, eps, norm="linf", architecture=None, seed=None,
                      number_forward_passes=1):
    """RobustBench's model-info fields for an AutoAttack ``result``.

    The fields RobustBench's ``model_info/<dataset>/<threat_model>/*.json``
    files carry (accuracies in percent, as strings with two decimals, as
    there), then the figures that make the result reproducible and its cost
    comparable: our seed, the number of images, the seconds, the AutoAttack
    version and attacks, and the robust accuracy after each attack.

    Args:
        result: what :func:`gacd_tf.evaluation.evaluate_robustness` returned
            for an :class:`gacd_tf.attacks.AutoAttack` (``natural_accuracy``,
            ``robust_accuracy``, ``num_examples``, ``seconds``,
            ``robust_accuracy_by_attack``, ``seconds_by_attack``, and the
            attack's settings under ``attack``).
        dataset: the dataset's name (``cifar10``).
        eps: the radius the attack used.
        norm: ``linf`` or ``l2``.
        architecture: the model's architecture, when known (None leaves it out).
        seed: the attack's seed (None: the one in ``result["attack"]``).
        number_forward_passes: forward passes per prediction, RobustBench's
            field: 1 for a deterministic model.

    Returns:
        a dict, ready for ``json.dump``.

    Raises:
        ArgumentError (``norm``): a norm RobustBench has no threat model for.

    Example:
    >>> entry = robustbench_entry({"natural_accuracy": 0.8734, "robust_accuracy": 0.5342,
    ...                            "num_examples": 10000, "seconds": 61.0},
    ...                           dataset="cifar10", eps=8 / 255, architecture="wrn_34_10")
    >>> entry["clean_acc"], entry["autoattack_acc"], entry["eps"], entry["threat_model"]
    ('87.34', '53.42', '8/255', 'Linf')
    """
    if norm not in THREAT_MODELS:
        raise ArgumentError("norm", norm, f"RobustBench's threat models are "
                            f"{', '.join(THREAT_MODELS)}")
    entry = {
        "dataset": dataset,
        "threat_model": THREAT_MODELS[norm],
        "eps": eps_text(eps, norm),
        "clean_acc": f"{100 * result['natural_accuracy']:.2f}",
        "autoattack_acc": f"{100 * result['robust_accuracy']:.2f}",
        "number_forward_passes": number_forward_passes,
    }
    if architecture:
        entry["architecture"] = architecture
    config = result.get("attack") if isinstance(result.get("attack"), dict) else {}
    entry.update(seed=config.get("seed", seed) if seed is None else seed,
                 num_examples=result["num_examples"],
                 seconds=round(float(result.get("seconds", 0.0)), 1))
    for key in ("version", "attacks"):
        if key in config:
            entry[key] = config[key]
    for key in ("robust_accuracy_by_attack", "seconds_by_attack", "passes_by_attack"):
        if key in result:
            entry[key] = result[key]
    return entry
