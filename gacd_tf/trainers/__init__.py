"""Trainers: one ``keras.Model`` per method, each with its own ``train_step``.

``AdversarialTrainer`` (teachers, AFT) and the distillation methods of the
:data:`METHODS` registry (``KDDistiller``, ``ARDDistiller``, ``GACDDistiller``,
...); all are driven by ``compile``/``fit``. ``build_method(name, ...)`` picks a
method by name.
"""

from gacd_tf.trainers.adversarial_trainer import AdversarialTrainer
from gacd_tf.trainers.adaad_distiller import AdaADDistiller  # noqa: F401 (registers "adaad")
from gacd_tf.trainers.ard_distiller import ARDDistiller
from gacd_tf.trainers.common import l2_penalty, unpack_batch
from gacd_tf.trainers.distiller import Distiller, check_teacher_fits_student
from gacd_tf.trainers.epoch_end_logs import EpochEndLogs
from gacd_tf.trainers.fit_resumable import fit_resumable
from gacd_tf.trainers.gacd_distiller import GACDDistiller
from gacd_tf.trainers.kd_distiller import KDDistiller
from gacd_tf.trainers.linear_probe import LinearProbe
from gacd_tf.trainers.memory_bank import MemoryBank
from gacd_tf.trainers.methods import METHODS, MethodContext, build_method
from gacd_tf.trainers.natural_trainer import NaturalTrainer
from gacd_tf.trainers.robust_trainer import RobustTrainer, accuracy
from gacd_tf.trainers.rslad_distiller import RSLADDistiller  # noqa: F401 (registers "rslad")
from gacd_tf.trainers.training_checkpoint import TrainingCheckpoint

__all__ = [
    "EpochEndLogs",
    "AdversarialTrainer", "ARDDistiller", "Distiller", "GACDDistiller", "KDDistiller",
    "MemoryBank", "RobustTrainer", "accuracy", "check_teacher_fits_student", "l2_penalty",
    "unpack_batch", "LinearProbe", "TrainingCheckpoint", "fit_resumable", "METHODS",
    "MethodContext", "build_method", "NaturalTrainer",
]
