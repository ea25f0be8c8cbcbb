"""Square Attack, l_inf: the score-based black-box attack of AutoAttack.

Square needs only the model's logits, never a gradient, so it is immune to
gradient masking; AutoAttack runs it last and warns when it breaks points the
white-box attacks could not.
"""

import math

import numpy as np
import tensorflow as tf

from gacd_tf.attacks import keyed_random, rows
from gacd_tf.attacks.arguments import (
    check_eps,
    check_linf_only,
    check_whole,
    is_number,
    require,
)
from gacd_tf.attacks.objectives import as_outputs
from gacd_tf.attacks.registry import ATTACKS
from gacd_tf.errors import ConfigError

# Reference schedule (for 10,000 queries): p is halved after each of these.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_sizes(n_queries, p_init, height, width, channels, rescale_schedule=True):
    """Side of the square tried at each query, as the reference schedules it.

    The fraction ``p`` of pixels changed starts at ``p_init`` and halves after
    the query counts 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000; with
    ``rescale_schedule`` (the reference's standalone default) these counts are
    those of a 10,000-query budget stretched to ``n_queries``; without it (what
    AutoAttack uses: ``resc_schedule=False``) they are raw query counts. The
    side is ``round(sqrt(p * height * width))``, at least 1, at most the image
    side.

    Returns:
        int32 NumPy array ``[n_queries]``.
    """
    n_features = height * width * channels
    sizes = np.empty([n_queries], np.int32)
    for i in range(n_queries):
        it = int(i / n_queries * 10000) if rescale_schedule else i
        p = p_init / 2 ** sum(it > h for h in _HALVINGS)
        side = max(round(math.sqrt(p * n_features / channels)), 1)
        sizes[i] = min(side, height, width)
    return sizes


def _logits(model, x):
    return tf.cast(as_outputs(model(x, training=False))["logits"], tf.float32)


def _margin(logits, y):
    """``z_y - max_{i != y} z_i`` per row (<= 0 means misclassified)."""
    true = tf.gather(logits, y, batch_dims=1)
    others = tf.where(tf.one_hot(y, tf.shape(logits)[1]) > 0, -np.inf, logits)
    return true - tf.reduce_max(others, axis=1)


@ATTACKS.register("square")
class Square:
    """Square Attack, l_inf, margin loss (AutoAttack's "square").

    Starts from vertical stripes (each column and channel moved by ``+-eps``),
    then each query changes one random ``s x s`` square: every channel of the
    square is set to ``x +- eps`` (a random sign per channel). The new point
    is kept when it lowers the margin ``z_y - max_{i != y} z_i`` or is
    misclassified. Square size follows :func:`square_sizes`. Each query draws,
    per example, one square position and one sign per channel from (seed,
    example index, restart, query) (:mod:`~gacd_tf.attacks.keyed_random`),
    so an example's result does not depend on the batch it is in or on the
    other rows still running. (The reference draws one position and one sign
    per channel per query for the whole batch: there an example's result
    depends on its batch.) Only clean-correct, not yet broken points are
    queried, as in the reference: each restart runs on the points no earlier
    one broke, and a point leaves the run at its first misclassified query
    (:mod:`~gacd_tf.attacks.rows`). No gradients are computed.

    Args:
        eps: l_inf budget.
        norm: "linf" (the only norm implemented).
        seed: int seed of the keyed random draws (None: 0).
        n_queries: queries per restart (5000 in AutoAttack), after the
            starting point's.
        p_init: initial fraction of pixels in the square (0.8).
        n_restarts: runs, each on the points no earlier run broke.

    Example:
    >>> attack = Square(eps=8 / 255, n_queries=5000, seed=0)
    >>> x_adv, robust = attack.perturb(model, images, labels)  # doctest: +SKIP

    Reference:
        Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a
        query-efficient black-box adversarial attack via random search",
        ECCV 2020; fra31/auto-attack, autoattack/square.py.
    """

    NORMS = ("linf",)  # the threat models implemented (the reference also has l2)
    NEEDS_GRADIENTS = False  # score-based: it queries the model's logits only

    name = "square"

    def __init__(self, eps=8 / 255, norm="linf", seed=None, n_queries=5000, p_init=0.8, n_restarts=1,
                 rescale_schedule=True):
        check_eps("square", eps)
        check_linf_only("square", norm)
        check_whole("square", n_queries=n_queries, n_restarts=n_restarts)
        require(is_number(p_init) and 0 < p_init <= 1, "square", "p_init must be in (0, 1]",
                p_init)
        self.eps = float(eps)
        self.norm = norm
        self.seed = seed
        self.n_queries = int(n_queries)
        self.p_init = float(p_init)
        self.n_restarts = int(n_restarts)
        self.rescale_schedule = bool(rescale_schedule)
        self.stream = self.name  # the name of the keyed draws (AutoAttack renames a second copy)

    def _single_run(self, model, x, y, indices, restart):
        """One run (number ``restart``) on rows none of which is broken yet; returns
        (best point, broken) for every row given.

        A row leaves the run's working state at its first misclassified query
        (the state is gathered on the queries where some row broke), so each
        query goes to the rows still robust only, as the reference's
        ``idx_to_fool``.
        """
        _, height, width, channels = x.shape
        if None in (height, width, channels):
            raise ConfigError(f"square attack needs images of known height, width and channels, got {x.shape}")
        # Start: vertical stripes, one sign per (column, channel) and example.
        stripes = keyed_random.uniform(
            keyed_random.example_keys(self.seed, f"{self.stream}/stripes", indices, restart),
            [1, width, channels])
        x_best = tf.clip_by_value(x + self.eps * tf.where(stripes < 0.5, -1.0, 1.0), 0.0, 1.0)
        logits = _logits(model, x_best)
        broken = tf.argmax(logits, axis=1, output_type=tf.int32) != y
        # The run's results, one row per row given (the first misclassified
        # query of a broken row); the working state holds the rows not broken
        # yet, ``pos`` their places among the rows given.
        result = x_best
        state = {
            "pos": tf.range(tf.shape(y)[0]), "y": y,
            "lower": tf.maximum(x - self.eps, 0.0), "upper": tf.minimum(x + self.eps, 1.0),
            "x_best": x_best, "margin_best": _margin(logits, y),
            # Per query and example: square corner (2 uniforms) and channel signs.
            "keys": keyed_random.example_keys(self.seed, f"{self.stream}/query", indices,
                                              restart)}
        state = rows.keep_rows(state, ~broken)

        sizes = tf.constant(square_sizes(self.n_queries, self.p_init, height, width, channels,
                                          self.rescale_schedule))
        row_range = tf.range(height)[None, :]
        col_range = tf.range(width)[None, :]

        def body(i, s, result, broken):
            side = sizes[i]
            draws = keyed_random.uniform(keyed_random.fold(s["keys"], i, 9), [2 + channels])
            # Corner in [0, n - side - 1] (0 when the square fills the side), as the reference.
            top = tf.cast(tf.floor(draws[:, 0] * tf.cast(height - side, tf.float32)), tf.int32)
            left = tf.cast(tf.floor(draws[:, 1] * tf.cast(width - side, tf.float32)), tf.int32)
            # The square of row b: its rows [B, H] times its columns [B, W].
            in_rows = (row_range >= top[:, None]) & (row_range < top[:, None] + side)
            in_cols = (col_range >= left[:, None]) & (col_range < left[:, None] + side)
            inside = tf.cast(in_rows[:, :, None, None] & in_cols[:, None, :, None], tf.float32)
            signs = tf.where(draws[:, 2:] < 0.5, -2.0 * self.eps, 2.0 * self.eps)
            step = inside * signs[:, None, None, :]
            x_new = tf.clip_by_value(s["x_best"] + step, s["lower"], s["upper"])
            logits = _logits(model, x_new)
            margin = _margin(logits, s["y"])
            wrong = tf.argmax(logits, axis=1, output_type=tf.int32) != s["y"]
            take = (margin < s["margin_best"]) | wrong
            s = {**s, "x_best": tf.where(take[:, None, None, None], x_new, s["x_best"]),
                 "margin_best": tf.where(take, margin, s["margin_best"])}
            s, broken, result = rows.retire_rows(s, wrong, broken, result, x_new)
            return i + 1, s, result, broken

        _, state, result, broken = tf.while_loop(
            lambda i, s, result, broken: (i < self.n_queries) & (tf.size(s["pos"]) > 0),
            body,
            (tf.constant(0), state, result, broken),
            shape_invariants=(tf.TensorShape([]), rows.row_invariants(state),
                              result.shape, broken.shape),
            parallel_iterations=1,
        )
        return rows.scatter_rows(result, state["pos"], state["x_best"]), broken

    def perturb(self, model, x, y, indices=None):
        """Runs Square on the clean-correct points of ``x``.

        Args:
            model: callable ``model(x, training=False)`` returning logits (or
                what :func:`as_outputs` accepts).
            x: float32 images in [0, 1], NHWC, static height/width/channels.
            y: int labels ``[B]``.
            indices: int ``[B]``, each example's index in the evaluated set
                (the key of its random draws); default: the positions
                ``0..B-1`` of this call.

        Returns:
            ``(x_adv, robust)``: ``robust[i]`` is True when ``x[i]`` is
            classified correctly and no query was misclassified; ``x_adv`` is
            the first misclassified query for a broken row, the clean image
            for a clean-misclassified row, and the lowest-margin point of the
            last run otherwise.
        """
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.cast(tf.convert_to_tensor(y), tf.int32)
        indices = keyed_random.example_indices(x, indices)
        robust = tf.argmax(_logits(model, x), axis=1, output_type=tf.int32) == y
        x_adv = x
        for restart in range(self.n_restarts):
            # Each restart runs on the rows no earlier one broke.
            def attack(restart=restart, x_adv=x_adv, robust=robust):
                pos = rows.positions(robust)
                x_best, broken = self._single_run(model, *rows.gather_rows((x, y, indices), pos),
                                                  restart)
                return (rows.scatter_rows(x_adv, pos, x_best),
                        rows.scatter_rows(robust, pos, ~broken))

            x_adv, robust = tf.cond(tf.reduce_any(robust), attack, lambda: (x_adv, robust))
        return tf.stop_gradient(x_adv), robust

    def __call__(self, model, x, y):
        return self.perturb(model, x, y)[0]

    def seed_generators(self):
        """None to checkpoint: the draws are keyed per example."""
        return {}

    def get_config(self):
        return {
            "attack": self.name,
            "eps": self.eps,
            "norm": self.norm,
            "seed": self.seed,
            "n_queries": self.n_queries,
            "p_init": self.p_init,
            "n_restarts": self.n_restarts,
            "rescale_schedule": self.rescale_schedule,
        }
