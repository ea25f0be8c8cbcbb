"""The base of KD, ARD and GACD: a student trained against a frozen teacher."""

import tensorflow as tf

from gacd_tf.errors import ModelError
from gacd_tf.models.io import check_outputs_are_logits
from gacd_tf.methods.registry import MethodDeclaration
from gacd_tf.methods.robust_trainer import RobustTrainer


def check_teacher_fits_student(student, teacher):
    """Refuses a teacher whose input shape or class count differs from the student's,
    or whose outputs are probabilities rather than logits."""
    s_in, t_in = tuple(student.input_shape[1:]), tuple(teacher.input_shape[1:])
    if s_in != t_in:
        raise ModelError(f"teacher {teacher.name} takes inputs {t_in} but student "
                         f"{student.name} takes {s_in}; use a teacher built for the same data")
    s_out, t_out = student.output_shape[-1], teacher.output_shape[-1]
    if s_out != t_out:
        raise ModelError(f"teacher {teacher.name} has {t_out} classes but student "
                         f"{student.name} has {s_out}; use a teacher trained on the same dataset")
    check_outputs_are_logits(teacher, "teacher")


class Distiller(MethodDeclaration, RobustTrainer):
    """A :class:`RobustTrainer` whose network is a student taught by a frozen teacher.

    The teacher is set ``trainable = False``, always called with
    ``training=False`` and never in the optimizer's variable list, so its
    weights and batch-norm statistics stay exactly as loaded. ``fit`` trains
    ``self.model`` (the student), which is what the programs save.

    Args:
        student: Keras model, [0,1] images -> logits.
        teacher: Keras model with the same input shape and classes.
        train_metrics: names of the trackers ``train_step`` reports.
        weight_decay: coupled L2 coefficient on the student.
        eval_attack: attack of ``test_step`` (default PGD-10).
        **kwargs: passed to ``keras.Model``.
    """

    def __init__(self, student, teacher, train_metrics, weight_decay=5e-4, eval_attack=None,
                 **kwargs):
        check_teacher_fits_student(student, teacher)
        super().__init__(student, train_metrics, weight_decay=weight_decay,
                         eval_attack=eval_attack, **kwargs)
        teacher.trainable = False
        self.teacher = teacher

    @property
    def student(self):
        return self.model

    def student_and_teacher(self, x, training=False):
        """Both networks' logits on the same ``x`` (the student's as ``logits``): what an
        attack on the teacher-student discrepancy ascends (AdaAD's and IGDM's)."""
        return {"logits": self.student(x, training=training),
                "teacher_logits": self.teacher(x, training=False)}

    @staticmethod
    def teacher_confidence(teacher_logits, labels):
        """w = softmax(teacher logits)[true class], no gradient (GACD's sample weight)."""
        probs = tf.nn.softmax(teacher_logits, axis=-1)
        w = tf.gather(probs, tf.cast(labels, tf.int32), axis=1, batch_dims=1)
        return tf.stop_gradient(w)
