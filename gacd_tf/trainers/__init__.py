"""Trainers: one ``keras.Model`` per method, each with its own ``train_step``."""

from gacd_tf.trainers.adversarial_trainer import AdversarialTrainer
from gacd_tf.trainers.common import l2_penalty, unpack_batch
from gacd_tf.trainers.robust_trainer import RobustTrainer, accuracy

__all__ = ["AdversarialTrainer", "RobustTrainer", "accuracy", "l2_penalty", "unpack_batch"]
