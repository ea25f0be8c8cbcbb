"""Measuring models: natural and robust accuracy."""

from gacd_tf.evaluation.robustness import evaluate_robustness

__all__ = ["evaluate_robustness"]
