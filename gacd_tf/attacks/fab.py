"""FAB (Fast Adaptive Boundary), l_inf: the minimum-norm attack of AutoAttack.

FAB linearises the decision boundary at the current iterate, projects both the
iterate and the clean image onto that hyperplane (intersected with the [0, 1]
box), and moves to a convex combination of the two projections, biased
towards the clean image so that the perturbation it finds stays small. Every
time an iterate is misclassified it is recorded if it is the smallest found so
far and the iterate steps back towards the clean image.

The targeted version (AutoAttack's "fab-t") linearises only the boundary
between the true class and one target class, so it needs the gradient of
``z_t - z_y`` alone: one backward pass per iteration.
"""

import math

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

_NO_ADVERSARIAL = 1e10


def projection_linf(points, w, b, steps=40):
    """Minimal l_inf step from each point onto a hyperplane, inside the box.

    For each row solves ``min ||d||_inf`` subject to ``<w, t + d> = b`` and
    ``0 <= t + d <= 1``. The optimum moves every coordinate by ``lambda``
    against the sign of the residual (``-lambda sign(w_i)``), clipped where a
    coordinate reaches the box; ``lambda`` is the smallest value for which the
    clipped step reaches the hyperplane. When the hyperplane cannot be reached
    inside the box, every coordinate goes all the way to the box bound that
    brings ``<w, t + d>`` closest to ``b``. Coordinates with ``w_i = 0`` never
    move.

    With ``p_i`` the room coordinate i has to move, the change reached at
    ``lambda`` is ``g(lambda) = sum_i |w_i| min(lambda, p_i)``, non-decreasing.
    The reference sorts ``p`` and bisects over the sorted breakpoints; sorting
    every row (``tf.argsort`` is ``top_k`` with k = D, slow on GPUs) is avoided
    here: ``lambda`` is bisected directly (``steps`` halvings of [0, max p],
    which pins the set of saturated coordinates), then solved in closed form
    on that set, so the result is exact to float precision.

    Args:
        points: ``[N, D]`` float points ``t`` in [0, 1].
        w: ``[N, D]`` hyperplane normals.
        b: ``[N]`` offsets.
        steps: bisection halvings (40 resolve lambda below float32 spacing).

    Returns:
        ``d`` ``[N, D]``, the step (``t + d`` is the projection).

    Example:
    >>> d = projection_linf(tf.constant([[0.5, 0.5]]), tf.constant([[1.0, 1.0]]), tf.constant([0.5]))
    >>> # d == [[-0.25, -0.25]]

    Reference:
        Croce & Hein, "Minimally distorted Adversarial Examples with a Fast
        Adaptive Boundary Attack", ICML 2020 (fra31/auto-attack,
        autoattack/fab_projections.py, projection_linf).
    """
    t = tf.convert_to_tensor(points, tf.float32)
    w = tf.convert_to_tensor(w, tf.float32)
    b = tf.convert_to_tensor(b, tf.float32)
    residual = tf.reduce_sum(w * t, axis=1, keepdims=True) - b[:, None]
    sign = tf.where(residual >= 0, 1.0, -1.0)
    w = w * sign
    needed = residual * sign  # >= 0: how much <w, t + d> must decrease
    # Room to move: down to 0 where w > 0, up to 1 where w < 0.
    room = tf.where(w > 0, t, tf.where(w < 0, 1.0 - t, 0.0))
    weight = tf.abs(w)
    low = tf.zeros_like(needed)
    high = tf.reduce_max(room, axis=1, keepdims=True)
    for _ in range(steps):
        mid = 0.5 * (low + high)
        enough = tf.reduce_sum(weight * tf.minimum(room, mid), axis=1, keepdims=True) >= needed
        low = tf.where(enough, low, mid)
        high = tf.where(enough, mid, high)
    # lambda lies in (low, high]: coordinates with room <= low saturate.
    saturated = room <= low
    saturated_change = tf.reduce_sum(tf.where(saturated, weight * room, 0.0), axis=1, keepdims=True)
    free_weight = tf.reduce_sum(tf.where(saturated, 0.0, weight), axis=1, keepdims=True)
    reachable = tf.reduce_sum(weight * room, axis=1, keepdims=True) >= needed
    feasible = reachable & (free_weight > 0)
    lam = (needed - saturated_change) / tf.where(feasible, free_weight, 1.0)
    lam = tf.where(feasible, tf.maximum(lam, 0.0), float("inf"))
    return tf.where(w > 0, -tf.minimum(lam, t), tf.where(w < 0, tf.minimum(lam, 1.0 - t), 0.0))


# Compiled once for any shape: eagerly the bisection would dispatch ~300 ops per call.
_projection_linf_graph = tf.function(projection_linf, reduce_retracing=True)


def _linf_norm(t):
    return tf.reduce_max(tf.abs(tf.reshape(t, [tf.shape(t)[0], -1])), axis=1)


def _logits(model, x):
    return tf.cast(as_outputs(model(x, training=False))["logits"], tf.float32)


@ATTACKS.register("fab")
class FAB:
    """Untargeted FAB, l_inf: the minimal perturbation over all class boundaries.

    Each iteration linearises every ``z_k - z_y`` (one backward pass per
    class), keeps the boundary closest in l_inf under the linearisation, and
    takes FAB's step towards it. Only clean-correct points are attacked; a
    point is broken when FAB found a misclassified point within ``eps`` of it.
    Each run (restart, or target of FAB-T) attacks only the points no earlier
    run broke, as the reference (:mod:`~gacd_tf.attacks.rows`); within a run
    every point runs all ``n_iter`` iterations (FAB keeps shrinking the
    perturbation it found).
    Restarts after the first start from ``x + eps/2 * u / ||u||_inf``,
    ``u ~ U[-1, 1]`` (clipped to [0, 1]).

    Args:
        eps: l_inf budget: a point counts as broken only if FAB's perturbation
            is within it; also sets the random-start radius (eps / 2).
        norm: "linf" (the only norm implemented).
        seed: int seed of the random restarts, drawn per example from (seed,
            example index, run) (:mod:`~gacd_tf.attacks.keyed_random`; None: 0).
        n_restarts: runs per point (the first from the clean image).
        n_iter: iterations per run.
        alpha_max: largest weight of the clean image's projection in a step.
        eta: overshoot factor of the projections.
        beta: backward step towards the clean image after a success.

    Example:
    >>> attack = FAB(eps=8 / 255, n_restarts=5)
    >>> x_adv, robust = attack.perturb(model, images, labels)  # doctest: +SKIP

    Reference:
        Croce & Hein, "Minimally distorted Adversarial Examples with a Fast
        Adaptive Boundary Attack", ICML 2020; fra31/auto-attack,
        autoattack/fab_base.py and fab_pt.py.
    """

    NORMS = ("linf",)  # the threat models implemented (the reference also has l1, l2)

    name = "fab"
    targeted = False

    def __init__(
        self,
        eps=8 / 255,
        norm="linf",
        seed=None,
        n_restarts=5,
        n_iter=100,
        alpha_max=0.1,
        eta=1.05,
        beta=0.9,
    ):
        check_eps(self.name, eps)
        check_linf_only(self.name, norm)
        check_whole(self.name, n_restarts=n_restarts, n_iter=n_iter)
        require(is_number(alpha_max) and 0 <= alpha_max <= 1, self.name,
                "alpha_max must be in [0, 1]", alpha_max)
        require(is_number(eta) and 1 <= eta < math.inf, self.name,
                "eta (overshoot) must be >= 1", eta)
        require(is_number(beta) and 0 < beta <= 1, self.name,
                "beta (backward step) must be in (0, 1]", beta)
        self.eps = float(eps)
        self.norm = norm
        self.seed = seed
        self.n_restarts = int(n_restarts)
        self.n_iter = int(n_iter)
        self.alpha_max = float(alpha_max)
        self.eta = float(eta)
        self.beta = float(beta)
        self.stream = self.name  # the name of the keyed draws (AutoAttack renames a second copy)

    # -- linearisation -----------------------------------------------------
    def _boundary(self, model, x1, y, target):
        """The linearised boundary ``<w, z> = b`` to step towards, per row."""
        if self.targeted:
            with tf.GradientTape() as tape:
                tape.watch(x1)
                logits = _logits(model, x1)
                diff = tf.gather(logits, target, batch_dims=1) - tf.gather(logits, y, batch_dims=1)
                total = tf.reduce_sum(diff)
            grad = tf.reshape(tape.gradient(total, x1), [tf.shape(x1)[0], -1])
            df = diff
        else:
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(x1)
                logits = _logits(model, x1)
                totals = tf.unstack(tf.reduce_sum(logits, axis=0))
            grads = tf.stack(
                [tf.reshape(tape.gradient(total, x1), [tf.shape(x1)[0], -1]) for total in totals],
                axis=1,
            )  # [B, C, D]
            del tape
            dfs = logits - tf.gather(logits, y, batch_dims=1)[:, None]
            dgs = grads - tf.gather(grads, y, batch_dims=1)[:, None]
            num_classes = logits.shape[-1]
            dfs = tf.where(tf.one_hot(y, num_classes) > 0, _NO_ADVERSARIAL, dfs)
            dist = tf.abs(dfs) / (1e-12 + tf.reduce_sum(tf.abs(dgs), axis=2))
            closest = tf.argmin(dist, axis=1, output_type=tf.int32)
            df = tf.gather(dfs, closest, batch_dims=1)
            grad = tf.gather(dgs, closest, batch_dims=1)
        flat = tf.reshape(x1, [tf.shape(x1)[0], -1])
        return grad, tf.reduce_sum(grad * flat, axis=1) - df

    def _single_run(self, model, x, y, target, random_start, indices, run):
        """One FAB run of ``n_iter`` iterations on every row given; returns the
        smallest misclassified point found and its norm.

        ``random_start`` is a bool tensor: start from a random point of the
        eps/2-ball instead of the clean image, row ``i``'s drawn from (seed,
        ``indices[i]``, ``run``).
        """
        batch = tf.shape(x)[0]
        flat_x = tf.reshape(x, [batch, -1])
        x1 = x
        if self.n_restarts > 1:  # only restarts after the first draw
            keys = keyed_random.example_keys(self.seed, f"{self.stream}/start", indices, run)
            u = 2.0 * keyed_random.uniform(keys, tf.shape(x)[1:]) - 1.0
            u = u / tf.reshape(tf.maximum(_linf_norm(u), 1e-12), [-1, 1, 1, 1])
            x1 = tf.where(random_start, tf.clip_by_value(x + 0.5 * self.eps * u, 0.0, 1.0), x)
        best = x
        best_norm = tf.fill([batch], _NO_ADVERSARIAL)

        def body(i, x1, best, best_norm):
            w, b = self._boundary(model, x1, y, target)
            flat_x1 = tf.reshape(x1, [batch, -1])
            d = _projection_linf_graph(
                tf.concat([flat_x1, flat_x], 0), tf.concat([w, w], 0), tf.concat([b, b], 0)
            )
            size = tf.maximum(tf.reduce_max(tf.abs(d), axis=1), 1e-8)
            d_iter = tf.reshape(d[:batch], tf.shape(x))
            d_clean = tf.reshape(d[batch:], tf.shape(x))
            a_iter, a_clean = size[:batch], size[batch:]
            alpha = tf.clip_by_value(a_iter / (a_iter + a_clean), 0.0, self.alpha_max)
            alpha = tf.reshape(alpha, [-1, 1, 1, 1])
            x1 = tf.clip_by_value(
                (x1 + self.eta * d_iter) * (1.0 - alpha) + (x + self.eta * d_clean) * alpha, 0.0, 1.0
            )
            wrong = tf.argmax(_logits(model, x1), axis=1, output_type=tf.int32) != y
            dist = _linf_norm(x1 - x)
            better = wrong & (dist < best_norm)
            best = tf.where(better[:, None, None, None], x1, best)
            best_norm = tf.where(better, dist, best_norm)
            x1 = tf.where(wrong[:, None, None, None], x + (x1 - x) * self.beta, x1)
            return i + 1, x1, best, best_norm

        _, _, best, best_norm = tf.while_loop(
            lambda i, *_: i < self.n_iter,
            body,
            (tf.constant(0), x1, best, best_norm),
            parallel_iterations=1,
        )
        return best, best_norm

    def _n_targets(self, num_classes):
        if not self.targeted:
            return 1
        return min(self.n_target_classes, num_classes - 1)

    def perturb(self, model, x, y, indices=None):
        """Runs FAB on the clean-correct points of ``x``.

        Args:
            model: callable ``model(x, training=False)`` returning logits (or
                what :func:`as_outputs` accepts).
            x: float32 images in [0, 1], NHWC.
            y: int labels ``[B]``.
            indices: int ``[B]``, each example's index in the evaluated set
                (the key of its random restarts); default: the positions
                ``0..B-1`` of this call.

        Returns:
            ``(x_adv, robust)``: ``robust[i]`` is True when ``x[i]`` is
            classified correctly and no run found a misclassified point within
            ``eps``; for a broken row ``x_adv`` is the smallest misclassified
            point of the first successful run (target, restart), otherwise the
            clean image.
        """
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.cast(tf.convert_to_tensor(y), tf.int32)
        indices = keyed_random.example_indices(x, indices)
        clean_logits = _logits(model, x)
        robust = tf.argmax(clean_logits, axis=1, output_type=tf.int32) == y
        # Classes ranked by clean logit: column k is the target of the k-th target run.
        ranked = tf.cast(tf.argsort(clean_logits, axis=1, direction="DESCENDING", stable=True), tf.int32)
        n_runs = self._n_targets(clean_logits.shape[-1]) * self.n_restarts

        # One loop over (target, restart) runs, so the model is traced once; each
        # run attacks only the rows no earlier run broke (the reference's ind_to_fool).
        def run(r, x_adv, robust):
            pos = rows.positions(robust)
            x_r, y_r, indices_r = rows.gather_rows((x, y, indices), pos)
            target = tf.gather(tf.gather(ranked, 1 + r // self.n_restarts, axis=1), pos) \
                if self.targeted else y_r
            adv, adv_norm = self._single_run(model, x_r, y_r, target, r % self.n_restarts > 0,
                                             indices_r, r)
            still_right = tf.argmax(_logits(model, adv), axis=1, output_type=tf.int32) == y_r
            broken = (adv_norm <= self.eps) & ~still_right
            places = tf.boolean_mask(pos, broken)
            x_adv = rows.scatter_rows(x_adv, places, tf.boolean_mask(adv, broken))
            robust = rows.scatter_rows(robust, places, tf.zeros(tf.shape(places), tf.bool))
            return r + 1, x_adv, robust

        _, x_adv, robust = tf.while_loop(
            lambda r, x_adv, robust: (r < n_runs) & tf.reduce_any(robust), run,
            (tf.constant(0), x, robust), parallel_iterations=1
        )
        return tf.stop_gradient(x_adv), robust

    def __call__(self, model, x, y):
        return self.perturb(model, x, y)[0]

    def seed_generators(self):
        """None to checkpoint: the draws are keyed per example."""
        return {}

    def get_config(self):
        config = {
            "attack": self.name,
            "eps": self.eps,
            "norm": self.norm,
            "seed": self.seed,
            "n_restarts": self.n_restarts,
            "n_iter": self.n_iter,
            "alpha_max": self.alpha_max,
            "eta": self.eta,
            "beta": self.beta,
        }
        if self.targeted:
            config["n_target_classes"] = self.n_target_classes
        return config


@ATTACKS.register("fab-t")
class FABTargeted(FAB):
    """Targeted FAB, l_inf (AutoAttack "fab-t"): one run per target class.

    The targets are the classes with the 2nd, 3rd, ... largest clean logits
    (at most ``num_classes - 1`` of them); each target runs only on the points
    no earlier target broke. Per iteration one backward pass, of
    ``z_t - z_y``. Success is still any misclassification (not necessarily as
    the target), as in the reference.

    Args:
        eps, norm, seed, n_iter, alpha_max, eta, beta: as :class:`FAB`.
        n_target_classes: how many target classes (9 for CIFAR-10).
        n_restarts: runs per target (1 in AutoAttack "standard").

    Example:
    >>> attack = FABTargeted(eps=8 / 255, seed=0)
    >>> x_adv, robust = attack.perturb(model, images, labels)  # doctest: +SKIP

    Reference:
        Croce & Hein, ICML 2020; fra31/auto-attack, autoattack/fab_base.py
        (targeted branch) and autoattack.py (version "standard").
    """

    name = "fab-t"
    targeted = True

    def __init__(
        self,
        eps=8 / 255,
        norm="linf",
        seed=None,
        n_target_classes=9,
        n_restarts=1,
        n_iter=100,
        alpha_max=0.1,
        eta=1.05,
        beta=0.9,
    ):
        check_whole("fab-t", n_target_classes=n_target_classes)
        super().__init__(
            eps=eps, norm=norm, seed=seed, n_restarts=n_restarts, n_iter=n_iter,
            alpha_max=alpha_max, eta=eta, beta=beta,
        )
        self.n_target_classes = int(n_target_classes)
