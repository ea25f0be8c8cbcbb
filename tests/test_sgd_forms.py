"""The optimizer's PyTorch form (TorchSGD, StepDecay) against NumPy re-derivations.

``torch.optim.SGD`` (momentum m, dampening 0): buf <- m buf + g (buf = g on the
first step), w <- w - lr buf; nesterov: w <- w - lr (g + m buf). MultiStepLR:
step t runs at lr * factor ** #{boundaries <= t}. Keras SGD: v <- m v - lr g,
w <- w + v; PiecewiseConstantDecay decays at t > boundary.
"""

import keras
import numpy as np
import pytest

from gacd_tf.errors import ArgumentError
from gacd_tf.training import StepDecay, TorchSGD, learning_rate_schedule, sgd_optimizer

GRADS = np.array([[0.5, -1.0], [0.25, 2.0], [-1.5, 0.5], [1.0, 1.0], [0.0, -0.5]], np.float32)


def numpy_torch_sgd(w, grads, rates, momentum, nesterov=False):
    w, buf = np.array(w, np.float64), None
    for g, lr in zip(grads, rates):
        buf = g.astype(np.float64) if buf is None else momentum * buf + g
        w = w - lr * ((g + momentum * buf) if nesterov else buf)
    return w


def numpy_keras_sgd(w, grads, rates, momentum):
    w, v = np.array(w, np.float64), 0.0
    for g, lr in zip(grads, rates):
        v = momentum * v - lr * g
        w = w + v
    return w


def run(optimizer, w0=(1.0, -2.0)):
    w = keras.Variable(np.array(w0, np.float32))
    for g in GRADS:
        optimizer.apply([keras.ops.convert_to_tensor(g)], [w])
    return np.asarray(w.numpy(), np.float64)


@pytest.mark.parametrize("nesterov", [False, True])
def test_torch_sgd_steps_as_pytorch_across_a_decay(nesterov):
    rates = [0.1, 0.1, 0.01, 0.01, 0.001]  # StepDecay(0.1, [2, 4])
    optimizer = TorchSGD(StepDecay(0.1, [2, 4]), momentum=0.9, nesterov=nesterov)
    expected = numpy_torch_sgd([1.0, -2.0], GRADS, rates, 0.9, nesterov)
    np.testing.assert_allclose(run(optimizer), expected, rtol=1e-6)
    # Keras' form keeps the old rate in its velocity: a different point.
    keras_form = numpy_keras_sgd([1.0, -2.0], GRADS, rates, 0.9)
    assert np.max(np.abs(keras_form - expected)) > 1e-2


def test_torch_sgd_without_momentum_and_at_a_constant_rate_equals_keras_sgd():
    np.testing.assert_allclose(run(TorchSGD(0.05, momentum=0.0)),
                               run(keras.optimizers.SGD(0.05, momentum=0.0)), rtol=1e-6)
    np.testing.assert_allclose(run(TorchSGD(0.05, momentum=0.9)),
                               run(keras.optimizers.SGD(0.05, momentum=0.9)), rtol=1e-5)


def test_step_decay_decays_at_the_boundary_step_one_step_before_piecewise_constant():
    schedule = learning_rate_schedule(0.1, steps_per_epoch=3, epochs=4, decay_epochs=[1, "75%"])
    keras_form = learning_rate_schedule(0.1, steps_per_epoch=3, epochs=4,
                                        decay_epochs=[1, "75%"], sgd_form="keras")
    ours = [float(schedule(t)) for t in range(12)]
    theirs = [float(keras_form(t)) for t in range(12)]
    expected = [0.1 * 0.1 ** sum(t >= b for b in (3, 9)) for t in range(12)]
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    np.testing.assert_allclose(theirs, [expected[max(t - 1, 0)] for t in range(12)], rtol=1e-6)
    restored = StepDecay.from_config(schedule.get_config())
    assert [float(restored(t)) for t in range(12)] == ours


def test_sgd_optimizer_passes_its_momentum_and_schedule_to_both_forms():
    # 2 steps per epoch, 4 epochs: decays x0.5 after epoch 1 and at 50 % (steps 2 and 4).
    options = dict(decay_epochs=[1, "50%"], decay_factor=0.5, momentum=0.8)
    torch_form = sgd_optimizer(0.1, 2, 4, **options)
    assert isinstance(torch_form, TorchSGD) and torch_form.momentum == 0.8
    np.testing.assert_allclose(run(torch_form), numpy_torch_sgd(
        [1.0, -2.0], GRADS, [0.1, 0.1, 0.05, 0.05, 0.025], 0.8), rtol=1e-6)
    keras_form = sgd_optimizer(0.1, 2, 4, sgd_form="keras", **options)
    assert keras_form.momentum == 0.8
    np.testing.assert_allclose(run(keras_form), numpy_keras_sgd(  # one step later
        [1.0, -2.0], GRADS, [0.1, 0.1, 0.1, 0.05, 0.05], 0.8), rtol=1e-6)


def test_sgd_optimizer_forms_and_their_refusal():
    assert isinstance(sgd_optimizer(0.1, 10, 2), TorchSGD)
    keras_form = sgd_optimizer(0.1, 10, 2, sgd_form="keras")
    assert type(keras_form) is keras.optimizers.SGD
    assert isinstance(keras_form._learning_rate, keras.optimizers.schedules.PiecewiseConstantDecay)
    with pytest.raises(ArgumentError, match="sgd_form"):
        sgd_optimizer(0.1, 10, 2, sgd_form="torch")
    with pytest.raises(ArgumentError, match="boundaries"):
        StepDecay(0.1, [4, 2])
