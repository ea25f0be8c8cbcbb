"""Measuring models: natural and robust accuracy, logit class correlations."""

from gacd_tf.evaluation.logit_correlation import correlation_difference, logit_correlation
from gacd_tf.evaluation.robustness import evaluate_robustness

__all__ = ["correlation_difference", "evaluate_robustness", "logit_correlation"]
