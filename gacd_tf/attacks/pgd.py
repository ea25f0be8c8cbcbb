"""Projected gradient descent (Madry et al. 2018) and FGSM, l_inf and l_2."""

import keras
import tensorflow as tf

from gacd_tf.attacks.norms import get_norm
from gacd_tf.attacks.objectives import get_objective
from gacd_tf.distribute import all_gather, local_rows, num_replicas
from gacd_tf.errors import ConfigError
from gacd_tf.registry import Registry

ATTACKS = Registry("attack")


@ATTACKS.register("pgd")
class PGD:
    """Projected gradient ascent on a pluggable objective inside an eps-ball.

    ``x0 = clip01(x + random point of the ball)`` (if ``random_start``), then
    ``steps`` times ``x <- clip01(x + Proj_eps(x + step_size * dir(grad) - x))``
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
        seed: int seed of the random start (a ``keras.random.SeedGenerator``).

    Example:
    >>> attack = PGD(eps=8 / 255, step_size=2 / 255, steps=10)
    >>> x_adv = attack(model, images, labels)  # doctest: +SKIP

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
    ):
        if not eps >= 0:
            raise ConfigError(f"attack eps must be >= 0, got {eps}")
        if not step_size > 0 and steps > 0:
            raise ConfigError(f"attack step_size must be > 0, got {step_size}")
        if int(steps) != steps or steps < 0:
            raise ConfigError(f"attack steps must be a whole number >= 0, got {steps}")
        self.eps = float(eps)
        self.step_size = float(step_size)
        self.steps = int(steps)
        self.norm = get_norm(norm)
        self.random_start = bool(random_start)
        self.objective = get_objective(objective)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def start(self, x):
        """The starting point: ``x`` or a random point of the ball around it."""
        if not self.random_start or self.eps == 0:
            return x
        # Drawn for the global batch and sliced, so a replica's start equals
        # the single-device start of the same examples.
        delta = self.norm.random_perturbation(all_gather(x), self.eps, self.seed_generator)
        delta = local_rows(delta, tf.shape(x)[0])
        return tf.clip_by_value(x + delta, 0.0, 1.0)

    def project(self, x_adv, x):
        """Back onto the eps-ball around ``x`` and into [0, 1]."""
        delta = self.norm.project(x_adv - x, self.eps)
        return tf.clip_by_value(x + delta, 0.0, 1.0)

    def step(self, x_adv, grad):
        """One unprojected ascent step."""
        return x_adv + self.step_size * self.norm.ascent_direction(grad)

    def gradient(self, model, x_adv, target):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = tf.reduce_sum(self.objective(model(x_adv, training=False), target))
        return tape.gradient(loss, x_adv)

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
        x = tf.convert_to_tensor(x, tf.float32)
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
        return tf.stop_gradient(x_adv)

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
        super().__init__(
            eps=eps, step_size=max(eps, 1e-12), steps=1, norm=norm,
            random_start=False, objective=objective, seed=seed,
        )


def build_attack(name="pgd", **kwargs):
    """An attack from the registry by name, e.g. ``build_attack("pgd", steps=20)``."""
    return ATTACKS.get(name)(**kwargs)
