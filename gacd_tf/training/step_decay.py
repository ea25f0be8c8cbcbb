"""A step learning-rate schedule that decays at its boundary step, as PyTorch's MultiStepLR."""

import keras
from keras import ops

from gacd_tf.errors import ArgumentError


@keras.saving.register_keras_serializable(package="gacd_tf")
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``initial * factor ** (number of boundaries <= step)``.

    Optimizer step ``step`` (0-based, the optimizer's ``iterations`` before
    the step) runs at the decayed rate from the boundary step on, as
    PyTorch's ``MultiStepLR`` (and the official loops, which decay at an epoch
    boundary: epoch ``e >= D`` runs at the decayed rate). Keras'
    ``PiecewiseConstantDecay`` decays one step later (``step > boundary``).

    Args:
        initial_learning_rate: the rate before the first boundary.
        boundaries: increasing int optimizer steps.
        factor: the decay at each boundary (0.1).

    Raises:
        ArgumentError (``boundaries``): boundaries that do not increase.

    Example:
    >>> schedule = StepDecay(0.1, [2, 4])
    >>> [round(float(schedule(step)), 4) for step in range(6)]
    [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]

    Reference:
        PyTorch ``torch.optim.lr_scheduler.MultiStepLR``.
    """

    def __init__(self, initial_learning_rate, boundaries, factor=0.1):
        boundaries = [int(b) for b in boundaries]
        if boundaries != sorted(boundaries):
            raise ArgumentError("boundaries", ",".join(map(str, boundaries)), "must increase")
        self.initial_learning_rate = float(initial_learning_rate)
        self.boundaries = boundaries
        self.factor = float(factor)

    def __call__(self, step):
        step = ops.cast(step, "int64")
        # float32; float64 where Keras' floatx is (then the rates are exact).
        dtype = "float64" if keras.config.floatx() == "float64" else "float32"
        if not self.boundaries:
            return ops.convert_to_tensor(self.initial_learning_rate, dtype)
        passed = ops.sum(ops.cast(ops.greater_equal(
            step, ops.convert_to_tensor(self.boundaries, "int64")), "int32"))
        # The values as constants (not initial * factor**n computed in float32),
        # so the rates equal those of PiecewiseConstantDecay built from the same floats.
        values = [self.initial_learning_rate * self.factor**i
                  for i in range(len(self.boundaries) + 1)]
        return ops.take(ops.convert_to_tensor(values, dtype), passed)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "boundaries": list(self.boundaries), "factor": self.factor}
