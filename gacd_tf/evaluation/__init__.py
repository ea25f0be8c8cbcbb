"""Measuring models: natural and robust accuracy, AutoAttack on a test subset,
transfer attacks (made on one model, counted on another), logit class correlations,
RobustBench-format result entries."""

from gacd_tf.evaluation.autoattack_subset import autoattack_test_subset
from gacd_tf.evaluation.logit_correlation import correlation_difference, logit_correlation
from gacd_tf.evaluation.robustbench_result import eps_text, robustbench_entry
from gacd_tf.evaluation.robustness import evaluate_robustness
from gacd_tf.evaluation.transfer import evaluate_transfer, transfer_counts

__all__ = ["autoattack_test_subset", "correlation_difference", "evaluate_robustness",
           "eps_text", "evaluate_transfer", "logit_correlation", "robustbench_entry",
           "transfer_counts"]
