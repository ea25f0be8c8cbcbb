"""Running an attack only on the rows still robust: gather them, run, scatter back.

AutoAttack's attacks spend their passes on the points not yet broken, as the
reference does (fra31/auto-attack attacks only ``ind_to_fool`` at each target,
restart and Square query): before each run (target or restart) an attack
gathers the rows still robust, and inside a run it drops a row from its
working state as soon as the row is broken (the state is gathered only on
iterations where some row broke). Every row's computation depends on that
row alone (its random draws are keyed per example), so the rows that remain
follow exactly the trajectory they follow in any other company, provided
the model's output for a row does not depend on the rows beside it (true of
a model in inference mode on the CPU; a GPU kernel chosen per batch shape
can change the last bits). The helpers
work on dicts of tensors whose first dimension is the row, eagerly and inside
``tf.function`` / ``tf.while_loop`` (where the row count changes from one
iteration to the next: :func:`row_invariants`).
"""

import tensorflow as tf


def positions(mask):
    """int32 ``[k]``: the positions of the True entries of a bool ``[B]``."""
    return tf.cast(tf.where(mask)[:, 0], tf.int32)


def gather_rows(tensors, rows):
    """Each tensor of a (nested) structure restricted to ``rows`` (None kept as None)."""
    return tf.nest.map_structure(lambda t: None if t is None else tf.gather(t, rows), tensors)


def scatter_rows(full, rows, values):
    """``full`` with its rows ``rows`` replaced by ``values``."""
    return tf.tensor_scatter_nd_update(full, rows[:, None], values)


def keep_rows(state, keep):
    """``state`` (a dict of row tensors) restricted to the rows ``keep`` (bool ``[k]``);
    gathers only when some row is dropped."""

    def compact():
        return gather_rows(state, positions(keep))

    return tf.cond(tf.reduce_all(keep), lambda: dict(state), compact)


def retire_rows(state, done, flags, points, new_points):
    """The rows ``done`` (bool ``[k]``) of the working ``state`` leave it.

    ``state["pos"]`` holds each working row's place in the full results: there
    ``flags`` (bool) is set True and ``points`` takes the row of ``new_points``.
    One ``tf.cond``, taken only when some row is done.

    Returns:
        ``(state, flags, points)``.
    """

    def retire():
        now = positions(done)
        places = tf.gather(state["pos"], now)
        return (gather_rows(state, positions(tf.logical_not(done))),
                scatter_rows(flags, places, tf.ones(tf.shape(places), tf.bool)),
                scatter_rows(points, places, tf.gather(new_points, now)))

    return tf.cond(tf.reduce_any(done), retire, lambda: (dict(state), flags, points))


def row_invariants(state):
    """``tf.while_loop`` shape invariants of ``state``: every entry with any number of rows."""
    return {k: tf.TensorShape([None]).concatenate(tf.convert_to_tensor(v).shape[1:])
            for k, v in state.items()}
