"""Auto-PGD (APGD), the step-size-free PGD of AutoAttack: "apgd-ce" and "apgd-dlr".

APGD starts at ``x + eps * u / ||u||`` (``u ~ U[-1, 1]`` for l_inf, Gaussian
for l_2, clipped to [0, 1]) with a per-example step of ``2 eps``. Each
iteration takes a projected step ``z = P(x_k + step * dir(grad))`` and mixes
it with the previous move, ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)
(x_k - x_{k-1}))`` with momentum ``a = 0.75`` (``a = 1`` on the first step).
At the checkpoints of :func:`apgd_checkpoints` the step of an example is
halved (:func:`halving_decision`) and that example restarts from its best
point (highest loss so far).

The targeted version ("apgd-t") is :class:`~gacd_tf.attacks.apgd_targeted.APGDTargeted`.
"""

import functools
import math

import tensorflow as tf

from gacd_tf.attacks import keyed_random, rows
from gacd_tf.attacks.arguments import (
    check_eps,
    check_whole,
    is_number,
    is_whole,
    require,
)
from gacd_tf.attacks.dlr import dlr_loss
from gacd_tf.attacks.norms import get_norm
from gacd_tf.attacks.objectives import as_outputs
from gacd_tf.attacks.registry import ATTACKS, NORMS
from gacd_tf.errors import ConfigError

_TINY = 1e-12
_MOMENTUM = 0.75


def apgd_checkpoints(n_iter):
    """The iterations after which APGD decides whether to halve its step.

    The first interval is ``max(int(0.22 n), 1)`` iterations, each next one
    ``max(int(0.03 n), 1)`` shorter but at least ``max(int(0.06 n), 1)``
    (the reference's rounding: Python ``int`` of the float product).

    Args:
        n_iter: iterations of one APGD run (>= 1).

    Returns:
        list of 1-based iteration counts, increasing, all ``<= n_iter``.

    Example:
    >>> apgd_checkpoints(100)
    [22, 41, 57, 70, 80, 87, 93, 99]

    Reference: fra31/auto-attack, autoattack/autopgd_base.py (``n_iter_2``,
    ``n_iter_min``, ``size_decr`` and ``counter3`` in ``attack_single_run``).
    """
    interval = max(int(0.22 * n_iter), 1)
    shortest = max(int(0.06 * n_iter), 1)
    decrease = max(int(0.03 * n_iter), 1)
    points, since = [], 0
    for i in range(n_iter):
        since += 1
        if since == interval:
            points.append(i + 1)
            interval = max(interval - decrease, shortest)
            since = 0
    return points


def halving_decision(increase_count, window, rho, reduced_last_check, best_loss_last_check,
                     best_loss):
    """Per example, whether APGD halves its step at a checkpoint.

    Halve if the loss increased on at most ``rho * window`` of the ``window``
    steps since the last checkpoint (compared in float32, as the reference
    does), or if the step was not halved at the last checkpoint and the best
    loss has not improved since.

    Args:
        increase_count: ``[B]`` how many of the last ``window`` steps raised the loss.
        window: iterations since the last checkpoint (an int or scalar tensor).
        rho: the fraction (0.75 in APGD).
        reduced_last_check: ``[B]`` bool, the decision of the previous
            checkpoint (True before the first one).
        best_loss_last_check: ``[B]`` best loss at the previous checkpoint.
        best_loss: ``[B]`` best loss now.

    Returns:
        ``[B]`` bool tensor.

    Example:
    >>> halving_decision([16, 17], 22, 0.75, [True, False], [1.0, 2.0], [1.5, 2.0])
    >>> # [True, True]: 16 <= 16.5 increases; the second stalled after no halving

    Reference: fra31/auto-attack, autoattack/autopgd_base.py
    (``check_oscillation``, ``fl_reduce_no_impr``).
    """
    count = tf.cast(increase_count, tf.float32)
    threshold = tf.cast(tf.cast(window, tf.float64) * float(rho), tf.float32)
    oscillating = count <= threshold
    best_loss = tf.convert_to_tensor(best_loss, tf.float32)
    stalled = tf.logical_and(
        tf.logical_not(tf.cast(reduced_last_check, tf.bool)),
        tf.convert_to_tensor(best_loss_last_check, tf.float32) >= best_loss)
    return tf.logical_or(oscillating, stalled)


def _per_example_max(t, reduce):
    axes = list(range(1, t.shape.rank))
    return reduce(t, axis=axes, keepdims=True)


@ATTACKS.register("apgd-ce")
class APGD:
    """Auto-PGD on the cross-entropy ("apgd-ce") or DLR loss ("apgd-dlr").

    Runs ``n_restarts`` independent runs of ``n_iter`` iterations, each on
    the points of the batch still robust; see the module docstring for one run. Counting follows SPEC
    "Counting": every iterate (start points included) is classified, a point
    is robust only if its clean image and every iterate are classified
    correctly, and a broken point's ``x_adv`` is its first misclassified
    iterate (the clean image when that is misclassified). A robust point's
    ``x_adv`` is its highest-loss iterate over all runs. Only the points
    still robust are attacked, as in the reference: each run starts on the
    points no earlier run broke, and a point leaves its run at its first
    misclassified iterate (:mod:`~gacd_tf.attacks.rows`), so no pass is spent
    on a broken point and a point's result does not depend on its batch.
    Runs eagerly and inside
    ``tf.function`` (``tf.while_loop`` over runs and iterations: one trace of
    the model's forward and backward pass per EOT pass).

    Args:
        eps: radius of the ball, [0, 1] pixel units.
        norm: "linf" or "l2".
        seed: int seed of the random starts, drawn per example from (seed,
            example index, run) (:mod:`~gacd_tf.attacks.keyed_random`;
            None: 0), so a point's result does not depend on its batch.
        loss: "ce" (cross-entropy) or "dlr" (:func:`~gacd_tf.attacks.dlr.dlr_loss`).
        n_iter: iterations per run (AutoAttack: 100).
        n_restarts: runs, each from a new random start (AutoAttack "standard": 1).
        rho: halve the step when the loss rose on at most this fraction of
            the steps since the last checkpoint (0.75).
        eot_iter: forward-backward passes whose gradients are averaged per
            iteration (Expectation over Transformation, for randomised
            models; AutoAttack "rand": 20). The loss and the classification
            are those of the last pass.

    Example:
    >>> attack = APGD(eps=8 / 255, loss="ce", n_iter=100, seed=0)
    >>> x_adv, robust = attack.perturb(model, images, labels)  # doctest: +SKIP

    Reference:
        Croce and Hein, "Reliable evaluation of adversarial robustness with an
        ensemble of diverse parameter-free attacks", ICML 2020, Algorithm 1;
        fra31/auto-attack, autoattack/autopgd_base.py (APGDAttack).
    """

    def __init__(self, eps=8 / 255, norm="linf", seed=None, loss="ce", n_iter=100,
                 n_restarts=1, rho=0.75, eot_iter=1):
        name = self._registry_name(loss)
        check_eps(name, eps)
        if norm not in NORMS:
            raise ConfigError(f"{name} attack norm={norm!r} is unknown; choose "
                              f"{' or '.join(NORMS.names())}")
        check_whole(name, n_iter=n_iter, n_restarts=n_restarts)
        require(is_number(rho) and 0 <= rho <= 1, name, "rho must be a number in [0, 1]", rho)
        check_whole(name, eot_iter=eot_iter)
        require(seed is None or is_whole(seed, -math.inf), name,
                "seed must be a whole number or None", seed)
        self.name = name
        self.eps = float(eps)
        self.norm = get_norm(norm)
        self.seed = None if seed is None else int(seed)
        self.loss = loss
        self.n_iter = int(n_iter)
        self.n_restarts = int(n_restarts)
        self.rho = float(rho)
        self.eot_iter = int(eot_iter)
        self.stream = name  # the name of the keyed draws (AutoAttack renames a second copy)

    def _registry_name(self, loss):
        if loss not in ("ce", "dlr"):
            raise ConfigError(f"APGD attack loss={loss!r} is unknown; choose ce or dlr "
                              "(the targeted DLR loss is the attack apgd-t)")
        return f"apgd-{loss}"

    # ------------------------------------------------------------------
    # What the subclass (targeted) changes: the loss and the runs.

    def _loss(self, logits, labels, targets):
        """Per-example loss ``[B]`` the attack ascends."""
        if self.loss == "ce":
            return tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.cast(labels, tf.int32), logits=logits)
        return dlr_loss(logits, labels)

    def _num_runs(self, clean_logits):
        return self.n_restarts

    def _run_targets(self, clean_logits):
        """A function run index -> the run's target classes (None: untargeted)."""
        return lambda run: None

    # ------------------------------------------------------------------

    def seed_generators(self):
        """The random generators to checkpoint: none (the draws are keyed per example)."""
        return {}

    def get_config(self):
        return {
            "attack": self.name,
            "eps": self.eps,
            "norm": self.norm.name,
            "seed": self.seed,
            "loss": self.loss,
            "n_iter": self.n_iter,
            "n_restarts": self.n_restarts,
            "rho": self.rho,
            "eot_iter": self.eot_iter,
        }

    def __call__(self, model, x, y):
        return self.perturb(model, x, y)[0]

    def start(self, x, indices=None, run=0):
        """A random point on the surface of the ball around ``x``, clipped to [0, 1].

        Row ``i``'s direction is drawn from (seed, ``indices[i]``, ``run``)
        only; ``indices`` defaults to the positions ``0..B-1``.
        """
        keys = keyed_random.example_keys(self.seed, f"{self.stream}/start",
                                         keyed_random.example_indices(x, indices), run)
        if self.norm.name == "linf":
            u = 2.0 * keyed_random.uniform(keys, tf.shape(x)[1:]) - 1.0
            size = _per_example_max(tf.abs(u), tf.reduce_max)
        else:
            u = keyed_random.normal(keys, tf.shape(x)[1:])
            size = tf.sqrt(_per_example_max(tf.square(u), tf.reduce_sum))
        return tf.clip_by_value(x + self.eps * u / (size + _TINY), 0.0, 1.0)

    def project(self, x_adv, x):
        """Back onto the eps-ball around ``x`` and into [0, 1]."""
        return tf.clip_by_value(x + self.norm.project(x_adv - x, self.eps), 0.0, 1.0)

    def _logits(self, model, x):
        return tf.cast(as_outputs(model(x, training=False))["logits"], tf.float32)

    def _loss_and_gradient(self, model, x_adv, labels, targets):
        """``(loss [B], gradient, logits)``, the gradient averaged over ``eot_iter`` passes."""

        def one_pass():
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                logits = self._logits(model, x_adv)
                loss = self._loss(logits, labels, targets)
                total = tf.reduce_sum(loss)
            grad = tape.gradient(total, x_adv)
            return loss, tf.zeros_like(x_adv) if grad is None else grad, logits

        loss, grad, logits = one_pass()
        if self.eot_iter > 1:
            def body(j, loss, grad_sum, logits):
                loss, grad, logits = one_pass()
                return j + 1, loss, grad_sum + grad, logits

            _, loss, grad, logits = tf.while_loop(
                lambda j, *_: j < self.eot_iter, body, (tf.constant(1), loss, grad, logits),
                parallel_iterations=1)
            grad = grad / float(self.eot_iter)
        return loss, grad, logits

    def _single_run(self, model, x, labels, targets, indices, run):
        """One APGD run (number ``run``) on rows none of which is broken yet.

        A row leaves the run's working state at its first misclassified
        iterate (its later iterates would change nothing), so each pass
        goes to the rows still robust only.

        Returns:
            ``(found, first, x_best, loss_best)`` for every row given:
            whether the run broke it, its first misclassified iterate (the
            clean image if none), and for the rows it did not break the
            highest-loss iterate and its loss (``-inf`` for the others).
        """
        checkpoints = apgd_checkpoints(self.n_iter)
        is_check = [False] * self.n_iter
        window = [0] * self.n_iter
        previous = 0
        for point in checkpoints:
            is_check[point - 1] = True
            window[point - 1] = point - previous
            previous = point
        is_check = tf.constant(is_check)
        window = tf.constant(window, tf.int32)

        def shape_rows(t, like):
            return tf.reshape(t, tf.concat([tf.shape(like)[:1],
                                            tf.ones([like.shape.rank - 1], tf.int32)], 0))

        def miss_of(logits, labels):
            return tf.not_equal(tf.argmax(logits, -1, output_type=tf.int64), labels)

        x_adv = self.start(x, indices, run)
        loss, grad, logits = self._loss_and_gradient(model, x_adv, labels, targets)
        miss = miss_of(logits, labels)
        # The run's results, one row per row given; the working state holds
        # the rows not broken yet, ``pos`` their places among the rows given.
        found = miss
        first = tf.where(shape_rows(miss, x), x_adv, x)
        # The reference compares the first step's loss with a zero-initialised
        # slot (its loss history indexed at -1), or, with one iteration, with itself.
        prev_loss = tf.fill(tf.shape(loss), 0.0 if self.n_iter > 1 else math.inf)
        state = {
            "pos": tf.range(tf.shape(labels)[0]), "x": x, "labels": labels,
            "x_adv": x_adv, "x_old": x_adv, "grad": grad,
            "step": shape_rows(tf.fill(tf.shape(loss), tf.constant(2.0 * self.eps, tf.float32)), x),
            "x_best": x_adv, "loss_best": loss, "grad_best": grad, "prev_loss": prev_loss,
            "increases": tf.zeros(tf.shape(loss), tf.int32),
            "reduced_last": tf.ones(tf.shape(loss), tf.bool), "best_last_check": loss}
        if targets is not None:
            state["targets"] = targets
        state = rows.keep_rows(state, tf.logical_not(miss))

        def cond(i, s, found, first):
            return tf.logical_and(i < self.n_iter, tf.size(s["pos"]) > 0)

        def body(i, s, found, first):
            x_adv, x = s["x_adv"], s["x"]
            a = tf.where(i > 0, _MOMENTUM, 1.0)
            z = self.project(x_adv + s["step"] * self.norm.ascent_direction(s["grad"]), x)
            x_new = self.project(x_adv + (z - x_adv) * a + (x_adv - s["x_old"]) * (1.0 - a), x)
            loss, grad, logits = self._loss_and_gradient(model, x_new, s["labels"],
                                                         s.get("targets"))
            miss = miss_of(logits, s["labels"])
            increases = s["increases"] + tf.cast(loss > s["prev_loss"], tf.int32)
            better = loss > s["loss_best"]
            better_rows = shape_rows(better, x)
            x_best = tf.where(better_rows, x_new, s["x_best"])
            grad_best = tf.where(better_rows, grad, s["grad_best"])
            loss_best = tf.where(better, loss, s["loss_best"])

            check = is_check[i]
            halve = tf.logical_and(check, halving_decision(
                increases, window[i], self.rho, s["reduced_last"], s["best_last_check"],
                loss_best))
            halve_rows = shape_rows(halve, x)
            s = {
                **s,
                "x_adv": tf.where(halve_rows, x_best, x_new),
                "x_old": x_adv,
                "grad": tf.where(halve_rows, grad_best, grad),
                "step": tf.where(halve_rows, s["step"] / 2.0, s["step"]),
                "x_best": x_best, "loss_best": loss_best, "grad_best": grad_best, "prev_loss": loss,
                "increases": tf.where(check, tf.zeros_like(increases), increases),
                "reduced_last": tf.where(check, halve, s["reduced_last"]),
                "best_last_check": tf.where(check, loss_best, s["best_last_check"])}
            s, found, first = rows.retire_rows(s, miss, found, first, x_new)
            return i + 1, s, found, first

        loop_vars = (tf.constant(0), state, found, first)
        _, state, found, first = tf.while_loop(
            cond, body, loop_vars, parallel_iterations=1,
            shape_invariants=(tf.TensorShape([]), rows.row_invariants(state),
                              found.shape, first.shape))
        x_best = rows.scatter_rows(x, state["pos"], state["x_best"])
        loss_best = rows.scatter_rows(tf.fill(tf.shape(labels), -math.inf), state["pos"],
                                      state["loss_best"])
        return found, first, x_best, loss_best

    def perturb(self, model, x, y, indices=None):
        """Evaluation under SPEC "Counting": ``(x_adv, robust)`` for labels ``y``.

        Args:
            model: callable ``model(x, training=False)`` returning logits (or
                what :func:`~gacd_tf.attacks.objectives.as_outputs` accepts).
            x: float images in [0, 1], NHWC.
            y: integer labels ``[B]``.
            indices: int ``[B]``, each example's index in the evaluated set
                (the key of its random starts); default: the positions
                ``0..B-1`` of this call.

        Returns:
            ``(x_adv, robust)``: float32 images like ``x``, each within eps of
            its clean image and in [0, 1], and a bool ``[B]``.
        """
        x = tf.convert_to_tensor(x, tf.float32)
        labels = tf.cast(y, tf.int64)
        indices = keyed_random.example_indices(x, indices)
        row_shape = tf.concat([tf.shape(x)[:1], tf.ones([x.shape.rank - 1], tf.int32)], 0)
        clean_logits = self._logits(model, x)
        found = tf.not_equal(tf.argmax(clean_logits, -1, output_type=tf.int64), labels)
        targets_of = self._run_targets(clean_logits)
        n_runs = self._num_runs(clean_logits)

        def cond(run, found, first, best, best_loss):
            return tf.logical_and(run < n_runs, tf.logical_not(tf.reduce_all(found)))

        def body(run, found, first, best, best_loss):
            # Each run (restart or target) attacks only the rows no earlier run broke.
            pos = rows.positions(tf.logical_not(found))
            targets = targets_of(run)
            run_found, run_first, x_best, loss_best = self._single_run(
                model, *rows.gather_rows((x, labels), pos),
                None if targets is None else tf.gather(targets, pos),
                tf.gather(indices, pos), run)
            found = rows.scatter_rows(found, pos, run_found)
            first = rows.scatter_rows(first, pos, run_first)
            better = loss_best > tf.gather(best_loss, pos)
            best = rows.scatter_rows(best, pos, tf.where(
                tf.reshape(better, tf.concat([tf.shape(pos), row_shape[1:]], 0)),
                x_best, tf.gather(best, pos)))
            best_loss = rows.scatter_rows(best_loss, pos,
                                          tf.where(better, loss_best, tf.gather(best_loss, pos)))
            return run + 1, found, first, best, best_loss

        best_loss = tf.fill(tf.shape(labels), -math.inf)
        _, found, first, best, _ = tf.while_loop(
            cond, body, (tf.constant(0), found, x, x, best_loss), parallel_iterations=1)
        x_adv = tf.where(tf.reshape(found, row_shape), first, best)
        return tf.stop_gradient(x_adv), tf.logical_not(found)


# "apgd-dlr": the same attack on the DLR loss (AutoAttack "plus" and "rand").
ATTACKS.register("apgd-dlr")(functools.partial(APGD, loss="dlr"))
