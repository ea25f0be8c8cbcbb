"""Training methods: one module per method, registered by name in :data:`METHODS`.

- ``registry.py``: :data:`METHODS`, :class:`MethodContext`, :func:`build`
  (any registered method by name) and the declarations a method makes;
- ``robust_trainer.py``, ``distiller.py``, ``common.py``: the bases every
  method's ``train_step`` stands on;
- one module per method, its loss beside its trainer: ``natural.py`` (the
  teacher-free control), ``kd.py``, ``ard.py``, ``rslad.py``, ``adaad.py``, ``igdm.py``,
  and the subpackage ``gacd/`` (everything GACD alone uses);
- ``adversarial.py``: :class:`AdversarialTrainer`, PGD-AT / TRADES for
  teachers and adversarial fine-tuning (AFT).

A new method is one new module here plus its ``@METHODS.register("name")``
line and one import line below (which registers it).

Example:
>>> from gacd_tf import methods
>>> kd = methods.build("kd", student, teacher, kd_alpha=0.5)  # doctest: +SKIP
>>> kd.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))  # doctest: +SKIP
"""

from gacd_tf.methods.registry import METHODS, MethodContext, MethodDeclaration, build
from gacd_tf.methods.common import l2_penalty, unpack_batch
from gacd_tf.methods.robust_trainer import RobustTrainer, accuracy
from gacd_tf.methods.distiller import Distiller, check_teacher_fits_student
from gacd_tf.methods.adversarial import AdversarialTrainer

# Importing a method's module registers its name in METHODS.
from gacd_tf.methods.natural import NaturalTrainer
from gacd_tf.methods.kd import KDDistiller, kd_loss
from gacd_tf.methods.ard import ARDDistiller, ard_loss
from gacd_tf.methods.rslad import RSLADDistiller, rslad_loss
from gacd_tf.methods.adaad import AdaADDistiller, adaad_loss
from gacd_tf.methods.gacd import GACDDistiller
from gacd_tf.methods.igdm import IGDMDistiller, igdm_loss

__all__ = [
    "METHODS", "MethodContext", "MethodDeclaration", "build",
    "RobustTrainer", "Distiller", "AdversarialTrainer", "NaturalTrainer", "KDDistiller",
    "ARDDistiller", "RSLADDistiller", "AdaADDistiller", "GACDDistiller", "IGDMDistiller",
    "accuracy", "check_teacher_fits_student", "l2_penalty", "unpack_batch",
    "kd_loss", "ard_loss", "rslad_loss", "adaad_loss", "igdm_loss",
]
