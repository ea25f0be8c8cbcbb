"""SGD with momentum and the learning-rate schedules of the programs and flagfiles."""

import keras

from gacd_tf.errors import ArgumentError
from gacd_tf.training.step_decay import StepDecay
from gacd_tf.training.torch_sgd import TorchSGD

SCHEDULES = ("step", "cosine", "constant")
# "pytorch": torch.optim.SGD's momentum and MultiStepLR's decay step (the default,
# measured by benchmarks/torch_parity.py); "keras": keras.optimizers.SGD and
# PiecewiseConstantDecay (the behaviour before).
SGD_FORMS = ("pytorch", "keras")


def _check_sgd_form(sgd_form):
    if sgd_form not in SGD_FORMS:
        raise ArgumentError("sgd_form", sgd_form, f"must be one of {', '.join(SGD_FORMS)}")
    return sgd_form


def decay_boundaries(decay_epochs, epochs, steps_per_epoch):
    """The optimizer steps at which a step schedule decays.

    Args:
        decay_epochs: epochs (numbers, or strings ``"N"`` / ``"N%"`` of ``epochs``).
        epochs: the training length in epochs (the base of a percentage).
        steps_per_epoch: optimizer steps per epoch.

    Returns:
        increasing int step boundaries.

    Raises:
        ArgumentError (``decay_epochs``): an entry that is not a number or N%,
            or boundaries that do not increase.

    Example:
    >>> decay_boundaries(["50%", "75%"], epochs=8, steps_per_epoch=10)
    [40, 60]
    """
    boundaries = []
    for item in decay_epochs:
        text = str(item)
        try:
            epoch = float(text[:-1]) / 100 * epochs if text.endswith("%") else float(text)
        except ValueError:
            raise ArgumentError("decay_epochs", ",".join(map(str, decay_epochs)),
                                f"entry {text!r} is not a number or N%") from None
        boundaries.append(int(round(epoch * steps_per_epoch)))
    if boundaries != sorted(boundaries):
        raise ArgumentError("decay_epochs", ",".join(map(str, decay_epochs)), "must increase")
    return boundaries


def learning_rate_schedule(learning_rate, steps_per_epoch, epochs, schedule="step",
                           decay_epochs=("50%", "75%"), decay_factor=0.1, sgd_form="pytorch"):
    """The learning rate over ``epochs * steps_per_epoch`` optimizer steps.

    Args:
        learning_rate: the initial rate.
        steps_per_epoch: optimizer steps per epoch.
        epochs: training epochs.
        schedule: ``"step"`` (times ``decay_factor`` at each of ``decay_epochs``),
            ``"cosine"`` (to 0 over the run) or ``"constant"``.
        decay_epochs: the step schedule's epochs, numbers or ``"N%"`` of ``epochs``.
        decay_factor: the step schedule's factor.
        sgd_form: ``"pytorch"`` (default): the step schedule decays *at* its
            boundary step, the first step of the decay epoch, as PyTorch's
            ``MultiStepLR`` and the official loops (:class:`StepDecay`);
            ``"keras"``: ``PiecewiseConstantDecay``, one step later.

    Returns:
        a float or a ``keras.optimizers.schedules.LearningRateSchedule``.

    Example:
    >>> schedule = learning_rate_schedule(0.1, steps_per_epoch=2, epochs=4, decay_epochs=[2])
    >>> [round(float(schedule(step)), 4) for step in range(6)]
    [0.1, 0.1, 0.1, 0.1, 0.01, 0.01]
    """
    _check_sgd_form(sgd_form)
    if schedule not in SCHEDULES:
        raise ArgumentError("schedule", schedule, f"must be one of {', '.join(SCHEDULES)}")
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate,
                                                      decay_steps=epochs * steps_per_epoch)
    if schedule == "step":
        boundaries = decay_boundaries(decay_epochs, epochs, steps_per_epoch)
        if boundaries:
            if sgd_form == "pytorch":
                return StepDecay(learning_rate, boundaries, decay_factor)
            values = [learning_rate * decay_factor**i for i in range(len(boundaries) + 1)]
            return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    return learning_rate


def sgd_optimizer(learning_rate, steps_per_epoch, epochs, schedule="step",
                  decay_epochs=("50%", "75%"), decay_factor=0.1, momentum=0.9,
                  loss_scale=False, sgd_form="pytorch"):
    """SGD with momentum and a :func:`learning_rate_schedule`, stepping as PyTorch's.

    ``sgd_form="pytorch"`` (default): :class:`TorchSGD` (``torch.optim.SGD``'s
    momentum buffer ``buf <- m buf + g``, step ``lr * buf`` at the *current*
    rate) with the step schedule decaying at its boundary step (PyTorch's
    ``MultiStepLR``, :class:`StepDecay`), as the official code of every
    method; ``benchmarks/torch_parity.py`` shows the programs' steps then
    match the official ones to float32 round-off. ``"keras"``:
    ``keras.optimizers.SGD`` (velocity ``v <- m v - lr g``, which keeps the
    old rate across a decay) and ``PiecewiseConstantDecay`` (one step later),
    the behaviour before; at a constant rate the two forms are the same.

    Weight decay is not the optimizer's: the trainers add a coupled
    (PyTorch-style) L2 term themselves.

    Args:
        learning_rate, steps_per_epoch, epochs, schedule, decay_epochs,
            decay_factor: as :func:`learning_rate_schedule`.
        momentum: SGD momentum.
        loss_scale: wrap it in a ``LossScaleOptimizer`` (dynamic loss
            scaling, needed under a float16 policy).
        sgd_form: ``"pytorch"`` or ``"keras"`` (above).

    Raises:
        ArgumentError (``sgd_form``): another value.

    Example:
    >>> optimizer = sgd_optimizer(0.1, steps_per_epoch=390, epochs=100)
    >>> optimizer.learning_rate.numpy().item()  # doctest: +ELLIPSIS
    0.1...
    """
    optimizer_class = TorchSGD if _check_sgd_form(sgd_form) == "pytorch" else keras.optimizers.SGD
    optimizer = optimizer_class(
        learning_rate_schedule(learning_rate, steps_per_epoch, epochs, schedule, decay_epochs,
                               decay_factor, sgd_form), momentum=momentum)
    if loss_scale:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
