"""Trainers: one ``keras.Model`` per method, each with its own ``train_step``."""

from gacd_tf.trainers.adversarial_trainer import AdversarialTrainer
from gacd_tf.trainers.common import l2_penalty, unpack_batch

__all__ = ["AdversarialTrainer", "l2_penalty", "unpack_batch"]
