"""gacd_tf: robust image classifiers by Guided Adversarial Contrastive Distillation.

Keras 3 / TensorFlow. See README.md and SPEC (shared/SPEC.md) for the methods.
"""

__version__ = "0.1.0"
