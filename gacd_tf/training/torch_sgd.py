"""SGD with PyTorch's momentum form (``torch.optim.SGD``), as a Keras optimizer."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="gacd_tf")
class TorchSGD(keras.optimizers.SGD):
    """``keras.optimizers.SGD`` stepping as ``torch.optim.SGD`` does.

    PyTorch keeps the momentum buffer in gradient units and multiplies by the
    *current* learning rate when it steps::

        buf <- momentum * buf + g        (buf = g on the first step)
        w   <- w - lr * buf              (nesterov: w - lr * (g + momentum * buf))

    Keras' SGD keeps a velocity in weight units, ``v <- momentum * v - lr * g``
    and ``w <- w + v``: after a learning-rate decay its velocity still carries
    the old rate, so the first steps after the decay are larger than
    PyTorch's (at a x0.1 decay with momentum 0.9 and a steady buffer, the next
    step is about 9 times PyTorch's; the excess decays as 0.9 ** n). At a
    constant rate the two are the same, with ``v = -lr * buf``.
    The official codes of every method here use ``torch.optim.SGD``, so
    :func:`gacd_tf.training.sgd_optimizer` builds this class by default
    (``benchmarks/torch_parity.py`` measures the difference).

    The optimizer's variables are Keras SGD's (one ``momentum`` slot per
    weight, plus the iteration count), so checkpoints save and restore it the
    same way; the slot holds PyTorch's ``buf``, not Keras' ``v``. Weight
    decay stays the trainers' coupled L2 term (PyTorch's ``weight_decay``),
    not this optimizer's; dampening is 0, as in every official code here.

    Args:
        learning_rate: a float or a ``LearningRateSchedule``.
        momentum: the momentum factor, in [0, 1].
        nesterov: Nesterov momentum (PyTorch's form).
        **kwargs: passed to ``keras.optimizers.SGD``.

    Example:
    >>> optimizer = TorchSGD(0.1, momentum=0.9)
    >>> w = keras.Variable([1.0])
    >>> optimizer.apply([ops.convert_to_tensor([0.5])], [w])
    >>> round(float(w.numpy()[0]), 6)  # 1 - 0.1 * 0.5
    0.95

    Reference:
        PyTorch ``torch.optim.SGD`` (its documented update rule); Sutskever
        et al., "On the importance of initialization and momentum in deep
        learning", ICML 2013.
    """

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.momentum == 0:
            self.assign_sub(variable, ops.multiply(gradient, learning_rate))
            return
        buffer = self.momentums[self._get_variable_index(variable)]
        # Converted, not cast: a cast would round the Python float to float32
        # first (0.9 -> 0.89999998) for a float64 variable.
        momentum = ops.convert_to_tensor(self.momentum, variable.dtype)
        self.assign(buffer, ops.add(ops.multiply(buffer, momentum), gradient))
        step = ops.add(gradient, ops.multiply(buffer, momentum)) if self.nesterov else buffer
        self.assign_sub(variable, ops.multiply(step, learning_rate))
