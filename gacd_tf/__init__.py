"""gacd_tf: robust image classifiers by Guided Adversarial Contrastive Distillation.

Keras 3 / TensorFlow. The packages, lowest first (each imports only those
above it in this list):

- :mod:`gacd_tf.errors`, :mod:`gacd_tf.registry`, :mod:`gacd_tf.settings`:
  the one-line errors, the name -> factory registries, declared settings;
- :mod:`gacd_tf.data`: datasets (official binary formats or
  tensorflow-datasets), class-balanced subsets, the validation hold-out,
  ``tf.data`` pipelines with per-sample indices;
- :mod:`gacd_tf.models`: the model zoo (``build_model``) and model files;
- :mod:`gacd_tf.training`: resumable ``fit``, checkpoints, several devices and
  machines, learning-rate schedules;
- :mod:`gacd_tf.attacks`: PGD, FGSM and AutoAttack, with their registry
  (:mod:`gacd_tf.attacks.registry`); :mod:`gacd_tf.losses`: the shared
  distillation KL;
- :mod:`gacd_tf.methods`: the training methods by name
  (``gacd_tf.methods.build("gacd", student, teacher, train_labels=...)``),
  one module each; GACD is :mod:`gacd_tf.methods.gacd`;
- :mod:`gacd_tf.evaluation`: natural, PGD and AutoAttack accuracy;
- :mod:`gacd_tf.analysis` (transfer, correlation and t-SNE maps, reports) and
  :mod:`gacd_tf.serving` (SavedModel and ONNX export);
- :mod:`gacd_tf.programs`: the command lines (``gacd-distill``, ...), which
  translate flags into calls of the packages above.

``import gacd_tf`` is light; each package loads (with TensorFlow) on first use:

Example:
>>> import gacd_tf
>>> sorted(gacd_tf.methods.METHODS.names())  # doctest: +SKIP
['adaad', 'ard', 'gacd', 'kd', 'natural', 'rslad']

See README.md and docs/ for the methods, results and programs.
"""

import importlib

__version__ = "0.1.0"

# The packages ``gacd_tf.NAME`` gives on first use.
PACKAGES = ("analysis", "attacks", "data", "evaluation", "losses", "methods", "models",
            "serving", "training")

__all__ = list(PACKAGES)


def __getattr__(name):
    if name in PACKAGES:
        return importlib.import_module(f"gacd_tf.{name}")
    raise AttributeError(f"module 'gacd_tf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(PACKAGES))
