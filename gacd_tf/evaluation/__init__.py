"""Measuring models: natural and robust accuracy, AutoAttack on a test subset,
logit class correlations."""

from gacd_tf.evaluation.autoattack_subset import autoattack_test_subset
from gacd_tf.evaluation.logit_correlation import correlation_difference, logit_correlation
from gacd_tf.evaluation.robustness import evaluate_robustness

__all__ = ["autoattack_test_subset", "correlation_difference", "evaluate_robustness",
           "logit_correlation"]
