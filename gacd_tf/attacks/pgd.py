"""Projected gradient descent (Madry et al. 2018) and FGSM, l_inf and l_2."""

import keras
import tensorflow as tf

from gacd_tf.attacks import keyed_random
from gacd_tf.attacks.norms import get_norm
from gacd_tf.attacks.objectives import as_outputs, get_objective
from gacd_tf.attacks.registry import ATTACKS
from gacd_tf.errors import ConfigError
from gacd_tf.training.distribute import all_gather, local_rows, num_replicas


@ATTACKS.register("pgd")
class PGD:
    """Projected gradient ascent on a pluggable objective inside an eps-ball.

    ``x0 = clip01(x + random point of the ball)`` (if ``random_start``; with
    ``clip_start=False`` the start is not clipped, so the first gradient is
    taken at ``x + delta`` even where it leaves [0, 1]), then ``steps`` times
    ``x <- clip01(x + Proj_eps(x + step_size * dir(grad) - x))``
    where ``dir`` is ``sign`` for l_inf and ``g / ||g||_2`` for l_2. The model
    is called with ``training=False`` (inference-mode batch norm, no dropout).
    The loop is a ``tf.while_loop``, so the attack runs eagerly, inside
    ``tf.function`` and inside a Keras ``train_step`` (unrolled in Python
    under a multi-replica ``tf.distribute`` strategy, where objectives may
    synchronise replicas).

    Args:
        eps: radius of the ball, in [0, 1] pixel units (l_inf default 8/255).
        step_size: step length alpha (default 2/255).
        steps: number of ascent steps (>= 0; 0 returns the start point).
        norm: "linf" or "l2".
        random_start: start from a uniformly random point of the ball.
        objective: name ("ce", "kl") or an :class:`Objective` instance.
        seed: int seed of the random start. ``__call__`` (training) draws
            from a ``keras.random.SeedGenerator`` of it (checkpointed with
            the trainer); :meth:`perturb` (evaluation) draws per example
            from (seed, example index, restart), see
            :mod:`~gacd_tf.attacks.keyed_random` (None: 0).
        restarts: random starts :meth:`perturb` tries (>= 1); ``__call__``
            (training) always makes one.
        clip_start: clip the random start to [0, 1] before the first
            gradient (True, as Madry et al.'s official PGD, MadryLab
            cifar10_challenge ``pgd_attack.py``, and the SPEC); False takes
            the first gradient at the unclipped start, as ARD's official code
            (goldblum/AdversariallyRobustDistillation, ``main.py``
            ``AttackPGD``) and Feature Scattering's (Haichao-Zhang/
            FeatureScatter, ``attack_methods.py``) do. Every later iterate,
            and the returned point, is in [0, 1] either way; :meth:`perturb`
            does not count an unclipped start (it is not a valid image).

    Calling the attack returns the last iterate of one start (what training
    uses). :meth:`perturb` is the evaluation interface: it follows SPEC
    "Counting" and returns ``(x_adv, robust)``, an example being robust only
    if its clean image is classified correctly and no iterate of any restart
    is misclassified.

    Example:
    >>> attack = PGD(eps=8 / 255, step_size=2 / 255, steps=10)
    >>> x_adv = attack(model, images, labels)  # doctest: +SKIP
    >>> x_adv, robust = PGD(steps=20, restarts=5).perturb(model, images, labels)  # doctest: +SKIP

    Reference:
        Madry et al., "Towards Deep Learning Models Resistant to Adversarial
        Attacks", ICLR 2018.
    """

    def __init__(
        self,
        eps=8 / 255,
        step_size=2 / 255,
        steps=10,
        norm="linf",
        random_start=True,
        objective="ce",
        seed=None,
        restarts=1,
        clip_start=True,
    ):
        if not eps >= 0:
            raise ConfigError(f"attack eps must be >= 0, got {eps}")
        if not step_size > 0 and steps > 0:
            raise ConfigError(f"attack step_size must be > 0, got {step_size}")
        if int(steps) != steps or steps < 0:
            raise ConfigError(f"attack steps must be a whole number >= 0, got {steps}")
        if isinstance(restarts, bool) or int(restarts) != restarts or restarts < 1:
            raise ConfigError(f"attack restarts must be a whole number >= 1, got {restarts}")
        self.eps = float(eps)
        self.step_size = float(step_size)
        self.steps = int(steps)
        self.norm = get_norm(norm)
        self.random_start = bool(random_start)
        self.objective = get_objective(objective)
        self.seed = seed
        self.restarts = int(restarts)
        self.clip_start = bool(clip_start)
        self.seed_generator = keras.random.SeedGenerator(seed)
        # The name of this attack's keyed draws (AutoAttack renames a second copy).
        self.stream = getattr(type(self), "name", "pgd")

    def seed_generators(self):
        """The random generators this attack draws from (for checkpoints)."""
        return {"seed_generator": self.seed_generator}

    def start(self, x):
        """The starting point: ``x`` or a random point of the ball around it."""
        if not self.random_start or self.eps == 0:
            return x
        # Drawn for the global batch and sliced, so a replica's start equals
        # the single-device start of the same examples.
        delta = self.norm.random_perturbation(all_gather(x), self.eps, self.seed_generator)
        delta = local_rows(delta, tf.shape(x)[0])
        return tf.clip_by_value(x + delta, 0.0, 1.0) if self.clip_start else x + delta

    def _start_in_box(self):
        """Whether the start point is a valid image (in [0, 1])."""
        return self.clip_start or not self.random_start or self.eps == 0

    def keyed_start(self, x, indices, restart):
        """:meth:`start` for evaluation: row ``i``'s random point drawn from (seed,
        ``indices[i]``, ``restart``) only (:mod:`~gacd_tf.attacks.keyed_random`)."""
        if not self.random_start or self.eps == 0:
            return x
        keys = keyed_random.example_keys(self.seed, f"{self.stream}/start", indices, restart)
        shape = tf.shape(x)[1:]
        if self.norm.name == "linf":
            delta = (2.0 * keyed_random.uniform(keys, shape) - 1.0) * self.eps
        else:
            direction = keyed_random.normal(keys, shape)
            axes = list(range(1, x.shape.rank))
            size = tf.sqrt(tf.reduce_sum(tf.square(direction), axes, keepdims=True))
            radius = keyed_random.uniform(
                keyed_random.fold(keys, tf.constant(1, tf.int64), 9), [1] * (x.shape.rank - 1))
            delta = direction / (size + 1e-12) * radius * self.eps
        delta = tf.cast(delta, x.dtype)
        return tf.clip_by_value(x + delta, 0.0, 1.0) if self.clip_start else x + delta

    def project(self, x_adv, x):
        """Back onto the eps-ball around ``x`` and into [0, 1]."""
        delta = self.norm.project(x_adv - x, self.eps)
        return tf.clip_by_value(x + delta, 0.0, 1.0)

    def step(self, x_adv, grad):
        """One unprojected ascent step."""
        return x_adv + self.step_size * self.norm.ascent_direction(grad)

    def gradient(self, model, x_adv, target):
        return self._loss_and_gradient(model, x_adv, target)[1]

    def __call__(self, model, x, target):
        """Adversarial examples for the batch ``x``.

        Args:
            model: callable ``model(x, training=False)`` returning logits, a
                ``(features, logits)`` pair or a dict (see ``as_outputs``).
            x: float images in [0, 1], NHWC.
            target: what the objective needs (labels for "ce").

        Returns:
            ``x_adv`` (no gradient flows back through it), same shape as ``x``.
        """
        x = _training_input(x)
        x_adv = self.start(x)

        def body(i, x_adv):
            grad = self.gradient(model, x_adv, target)
            return i + 1, self.project(self.step(x_adv, grad), x)

        if num_replicas() > 1:
            # Under tf.distribute an objective may synchronise replicas (the OT
            # distance gathers the batch), which tf.distribute forbids inside
            # a while_loop: unroll the steps in Python instead.
            for i in range(self.steps):
                _, x_adv = body(i, x_adv)
        elif self.steps > 0:
            _, x_adv = tf.while_loop(
                lambda i, _: i < self.steps,
                body,
                (tf.constant(0), x_adv),
                parallel_iterations=1,
            )
        if self.steps == 0 and not self.clip_start:
            x_adv = self.project(x_adv, x)
        return tf.stop_gradient(x_adv)

    def perturb(self, model, x, y, indices=None):
        """Evaluation under SPEC "Counting": ``(x_adv, robust)`` for labels ``y``.

        Runs ``restarts`` starts of the attack on the whole batch. Every
        iterate (the start point included) is classified; an example is
        robust only if its clean image and every iterate of every restart
        are classified as ``y``. For a non-robust example ``x_adv`` is the
        first misclassified point found (the clean image when that is
        already misclassified); for a robust one, the iterate of highest
        objective value. Runs eagerly and inside ``tf.function``. The
        random starts are keyed per example (seed, index, restart), so an
        example's result does not depend on the batch it is in.

        Args:
            model: as for ``__call__``; only its logits are used to classify.
            x: float images in [0, 1], NHWC.
            y: integer labels ``[B]`` (the objective's target too, e.g. "ce").
            indices: int ``[B]``, each example's index in the evaluated set
                (the key of its random draws); default: the positions
                ``0..B-1`` of this call.

        Returns:
            ``(x_adv, robust)``: float32 images like ``x`` and a bool ``[B]``.
        """
        x = tf.convert_to_tensor(x, tf.float32)
        labels = tf.cast(y, tf.int64)
        indices = keyed_random.example_indices(x, indices)
        rows = tf.concat([tf.shape(x)[:1], tf.ones([x.shape.rank - 1], tf.int32)], 0)
        # An unclipped random start is no image: it is not counted.
        count_start = self._start_in_box()

        def wrong(logits):
            return tf.not_equal(tf.argmax(logits, -1), labels)

        clean_logits = as_outputs(model(x, training=False))["logits"]
        found = wrong(clean_logits)  # an adversarial point is known for these rows
        first = x
        best = x
        best_loss = tf.fill(tf.shape(labels), tf.constant(-float("inf"), tf.float32))

        def visit(x_adv, logits, loss, found, first, best, best_loss, valid=True):
            """Records the iterate ``x_adv`` (classified as ``logits``, objective ``loss``)."""
            miss = tf.logical_and(wrong(logits), valid)
            new = tf.reshape(tf.logical_and(miss, tf.logical_not(found)), rows)
            first = tf.where(new, x_adv, first)
            loss = tf.cast(loss, tf.float32)
            better = tf.logical_and(loss > best_loss, valid)
            best = tf.where(tf.reshape(better, rows), x_adv, best)
            best_loss = tf.where(better, loss, best_loss)
            return tf.logical_or(found, miss), first, best, best_loss

        def body(i, x_adv, found, first, best, best_loss):
            loss, grad, logits = self._loss_and_gradient(model, x_adv, y)
            found, first, best, best_loss = visit(x_adv, logits, loss, found, first, best,
                                                  best_loss, tf.logical_or(i > 0, count_start))
            return i + 1, self.project(self.step(x_adv, grad), x), found, first, best, best_loss

        for restart in range(self.restarts):
            x_adv = self.keyed_start(x, indices, restart)
            state = (tf.constant(0), x_adv, found, first, best, best_loss)
            if num_replicas() > 1:
                for _ in range(self.steps):
                    state = body(*state)
            elif self.steps > 0:
                state = tf.while_loop(lambda i, *_: i < self.steps, body, state,
                                      parallel_iterations=1)
            _, x_adv, found, first, best, best_loss = state
            if self.steps == 0 and not count_start:
                x_adv = self.project(x_adv, x)
            outputs = model(x_adv, training=False)
            found, first, best, best_loss = visit(
                x_adv, as_outputs(outputs)["logits"], self.objective(outputs, y), found, first,
                best, best_loss)
        x_adv = tf.where(tf.reshape(found, rows), first, best)
        return tf.stop_gradient(x_adv), tf.logical_not(found)

    def _loss_and_gradient(self, model, x_adv, target):
        """Per-example objective, its input gradient (as :meth:`gradient`) and the logits."""
        zero = tf.UnconnectedGradients.ZERO
        if not computes_in_float16(model):
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                outputs = model(x_adv, training=False)
                loss = self.objective(outputs, target)
                total = tf.reduce_sum(loss)
            # A model without a gradient path to its input (masked gradients) gets zeros.
            grad = tape.gradient(total, x_adv, unconnected_gradients=zero)
            return loss, grad, as_outputs(outputs)["logits"]
        # A float16 network flushes the small gradients of confident points to
        # zero on their way back to the input (those points could then not be
        # attacked). The objective's gradient at the outputs is taken in
        # float32 and scaled, per example, to a maximum of 1 before it enters
        # the network: in inference mode an example's input gradient depends
        # only on its own outputs, so its direction (all that sign or
        # normalised steps use) is unchanged.
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            outputs = tf.nest.map_structure(lambda t: tf.cast(t, tf.float32),
                                            model(x_adv, training=False))
        flat = tf.nest.flatten(outputs)
        with tf.GradientTape() as inner:
            inner.watch(flat)
            loss = self.objective(tf.nest.pack_sequence_as(outputs, flat), target)
            total = tf.reduce_sum(loss)
        upstream = inner.gradient(total, flat, unconnected_gradients=zero)
        peak = tf.add_n([tf.reduce_max(tf.abs(tf.reshape(g, [tf.shape(g)[0], -1])), 1)
                         for g in upstream])
        upstream = [g / tf.reshape(tf.maximum(peak, 1e-30), [-1] + [1] * (g.shape.rank - 1))
                    for g in upstream]
        grad = tape.gradient(flat, x_adv, output_gradients=upstream, unconnected_gradients=zero)
        return loss, grad, as_outputs(outputs)["logits"]

    def get_config(self):
        return {
            "attack": type(self).__name__.lower(),
            "eps": self.eps,
            "step_size": self.step_size,
            "steps": self.steps,
            "norm": self.norm.name,
            "random_start": self.random_start,
            "objective": type(self.objective).__name__,
            "seed": self.seed,
            "restarts": self.restarts,
            "clip_start": self.clip_start,
        }


@ATTACKS.register("fgsm")
class FGSM(PGD):
    """Fast gradient sign method: one step of size eps, no random start.

    With ``norm="l2"`` this is the fast gradient method (FGM).

    Reference:
        Goodfellow et al., "Explaining and Harnessing Adversarial Examples",
        ICLR 2015.
    """

    def __init__(self, eps=8 / 255, norm="linf", objective="ce", seed=None, **kwargs):
        kwargs.pop("steps", None)
        kwargs.pop("step_size", None)
        kwargs.pop("random_start", None)
        kwargs.pop("restarts", None)  # deterministic: every restart would repeat the first
        super().__init__(
            eps=eps, step_size=max(eps, 1e-12), steps=1, norm=norm,
            random_start=False, objective=objective, seed=seed,
        )


def computes_in_float16(model):
    """True for a network computing in float16 (its ``compute_dtype``, else the
    global Keras policy): its attacks need the scaled gradient path."""
    dtype = getattr(model, "compute_dtype", None) or \
        keras.mixed_precision.global_policy().compute_dtype
    return dtype == "float16"


def _training_input(x):
    """Training batches as float32, but a float64 batch (training in float64:
    ``benchmarks/torch_parity.py --dtype=float64``) keeps its precision."""
    if tf.is_tensor(x) and x.dtype == tf.float64:
        return x
    return tf.convert_to_tensor(x, tf.float32)
