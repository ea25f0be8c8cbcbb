"""How many images an attack sent forward and backward through the model.

Attack cost compares badly in seconds (machines, batch sizes and other jobs
differ) and well in passes: :class:`PassCounter` wraps a model and counts, in
two int64 variables, the images forwarded (the rows of every call) and the
images back-propagated through (the rows of every input gradient taken
through the wrapped call). It counts eagerly, inside ``tf.function``, inside
``tf.while_loop`` and ``tf.cond`` bodies (the counting ops are stateful, so
they run wherever the call runs), and under a ``tf.distribute`` strategy:
the variables are created like a Keras metric's (``ON_READ``, ``SUM``), so
each replica adds its own rows and a read outside the replicas sums them.
"""

import tensorflow as tf


class PassCounter:
    """A model wrapper that counts the images it forwards and back-propagates.

    ``counter(x, training=False)`` returns ``model(x, training=False)``
    unchanged (logits, a ``(features, logits)`` pair or a dict, whatever the
    model returns) and adds ``x``'s rows to :attr:`forward`. The input goes
    through an identity whose gradient adds the rows to :attr:`backward`, so
    every gradient taken with respect to the input (or to anything upstream
    of it) through this call counts once per row: one forward pass with an
    input gradient counts one forward and one backward per image; a
    persistent tape taking ``k`` gradients of one forward counts ``k``
    backward per image (FAB's untargeted linearisation: one per class). A
    gradient with respect to the weights only, with the input unwatched,
    counts no backward pass.

    Under a strategy, build the counter inside ``strategy.scope()`` (or
    pass ``strategy``): its variables are then sync-on-read, each replica
    counts its own rows and :meth:`counts` returns their sum (over the
    workers too, with a multi-worker strategy, where every worker must call
    it: it is a collective there). The counts
    are of the images the model saw: AutoAttack's attacks send each point
    only through the runs it is still robust in (and, for APGD and Square,
    only through the iterations or queries before it breaks), whatever its
    batch, but a replica's share padded with copies of a row counts the
    copies.

    Args:
        model: callable ``model(x, training=False)``.
        strategy: a ``tf.distribute.Strategy`` whose scope the variables are
            created in (None: the current one).

    Example:
    >>> counter = PassCounter(model)  # doctest: +SKIP
    >>> x_adv, robust = attack.perturb(counter, x, y)  # doctest: +SKIP
    >>> counter.counts()  # doctest: +SKIP
    {'forward': 1056, 'backward': 1024}
    """

    def __init__(self, model, strategy=None):
        self.model = model
        scope = strategy.scope() if strategy is not None else _no_scope()
        with scope:
            self.forward = _counter_variable("forward_passes")
            self.backward = _counter_variable("backward_passes")

    def __call__(self, x, training=False, **kwargs):
        rows = _rows(x)
        if _is_float(x):
            x = self._count_gradient(tf.convert_to_tensor(x))
        with tf.control_dependencies([self.forward.assign_add(rows)]):
            return self.model(x, training=training, **kwargs)

    def _count_gradient(self, x):
        backward = self.backward

        @tf.custom_gradient
        def mark(x):
            def grad(dy):
                rows = tf.shape(dy, out_type=tf.int64)[0]
                with tf.control_dependencies([backward.assign_add(rows)]):
                    return tf.identity(dy)
            return tf.identity(x), grad

        return mark(x)

    def counts(self):
        """``{"forward": int, "backward": int}``: the images counted so far (summed
        over replicas); call it outside ``tf.function`` and outside ``strategy.run``."""
        return {"forward": int(_read(self.forward)), "backward": int(_read(self.backward))}

    def reset(self):
        """Sets both counts to 0 (outside ``strategy.run``)."""
        for variable in (self.forward, self.backward):
            variable.assign(tf.zeros([], tf.int64))


class _no_scope:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _counter_variable(name):
    return tf.Variable(tf.zeros([], tf.int64), trainable=False, name=name,
                       synchronization=tf.VariableSynchronization.ON_READ,
                       aggregation=tf.VariableAggregation.SUM)


def _read(variable):
    """The variable's value, summed over replicas for a sync-on-read variable."""
    return tf.convert_to_tensor(variable.read_value()).numpy()


def _rows(x):
    first = tf.nest.flatten(x)[0]
    return tf.shape(first, out_type=tf.int64)[0]


def _is_float(x):
    return not tf.nest.is_nested(x) and tf.as_dtype(getattr(x, "dtype", tf.float32)).is_floating
