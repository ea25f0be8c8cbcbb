"""RobustBench-format AutoAttack entries (gacd_tf.evaluation.robustbench_entry)."""

import json

import pytest

from gacd_tf.errors import ArgumentError
from gacd_tf.evaluation import eps_text, robustbench_entry

RESULT = {"natural_accuracy": 0.8125, "robust_accuracy": 0.40625, "num_examples": 32,
          "seconds": 12.345, "robust_accuracy_by_attack": {"apgd-ce": 0.5, "apgd-t": 0.40625},
          "seconds_by_attack": {"apgd-ce": 5.0, "apgd-t": 7.3},
          "attack": {"attack": "autoattack", "version": "standard", "seed": 7,
                     "attacks": ["apgd-ce", "apgd-t"], "eps": 8 / 255, "norm": "linf"}}


@pytest.mark.parametrize("eps, norm, text", [
    (8 / 255, "linf", "8/255"), (4 / 255, "linf", "4/255"), (0.031, "linf", "0.031"),
    (0.5, "l2", "0.5"), (8 / 255, "l2", "0.0313725")])
def test_eps_is_written_as_robustbench_writes_it(eps, norm, text):
    assert eps_text(eps, norm) == text


def test_entry_carries_robustbench_fields_in_percent_and_our_figures():
    entry = robustbench_entry(RESULT, dataset="cifar10", eps=8 / 255, architecture="resnet18")
    assert entry["clean_acc"] == "81.25" and entry["autoattack_acc"] == "40.62"
    assert (entry["dataset"], entry["threat_model"], entry["eps"]) == ("cifar10", "Linf", "8/255")
    assert entry["architecture"] == "resnet18" and entry["number_forward_passes"] == 1
    # Ours: the attack's seed (from its settings), images, seconds, per-attack figures.
    assert entry["seed"] == 7 and entry["num_examples"] == 32 and entry["seconds"] == 12.3
    assert entry["version"] == "standard" and entry["attacks"] == ["apgd-ce", "apgd-t"]
    assert entry["robust_accuracy_by_attack"] == RESULT["robust_accuracy_by_attack"]
    assert entry["seconds_by_attack"] == RESULT["seconds_by_attack"]
    json.dumps(entry)  # JSON-able


def test_entry_leaves_out_an_unknown_architecture_and_names_l2():
    entry = robustbench_entry(RESULT, dataset="cifar100", eps=0.5, norm="l2", seed=1)
    assert "architecture" not in entry and entry["threat_model"] == "L2"
    assert entry["eps"] == "0.5" and entry["seed"] == 1


def test_entry_refuses_a_norm_robustbench_has_no_board_for():
    with pytest.raises(ArgumentError, match="norm=l1"):
        robustbench_entry(RESULT, dataset="cifar10", eps=1.0, norm="l1")
