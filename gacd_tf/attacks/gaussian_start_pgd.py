"""PGD from a small Gaussian perturbation of the clean image (RSLAD, AdaAD)."""

import keras
import tensorflow as tf

from gacd_tf.attacks import keyed_random
from gacd_tf.attacks.pgd import PGD, _training_input
from gacd_tf.training.distribute import all_gather, local_rows
from gacd_tf.errors import ConfigError


class GaussianStartPGD(PGD):
    """PGD whose start is ``x + start_std * N(0, 1)``, not clipped.

    The inner attacks of RSLAD and AdaAD start this way in their official
    code: the first gradient is taken at the unclipped start (whatever
    ``clip_start``), and every
    iterate, like the returned point, is projected onto the eps-ball and
    [0, 1]. The noise is drawn for the global batch and sliced, so a replica
    starts where one device would; :meth:`perturb` (evaluation) draws it per
    example instead (seed, example index, restart), and does not count the
    unclipped start.

    Args:
        start_std: standard deviation of the Gaussian start (0.001).
        **kwargs: passed to :class:`PGD` (``eps``, ``step_size``, ``steps``,
            ``norm``, ``objective``, ``seed``, ``random_start``).

    Example:
    >>> attack = GaussianStartPGD(objective="kl", steps=10, seed=0)
    >>> x_adv = attack(student, x, tf.nn.softmax(teacher(x)))  # doctest: +SKIP

    Reference:
        zibojia/RSLAD (``rslad_inner_loss``); boyellow/AdaAD
        (``adaad_inner_loss``).
    """

    name = "gaussian_start_pgd"

    def __init__(self, start_std=0.001, **kwargs):
        super().__init__(**kwargs)
        if not start_std >= 0:
            raise ConfigError(f"{type(self).__name__} start_std must be >= 0, got {start_std}")
        self.start_std = float(start_std)

    def seed_generators(self):
        return {"seed_generator": self.seed_generator}

    def start(self, x):
        if not self.random_start or self.start_std == 0:
            return x
        noise = keras.random.normal(tf.shape(all_gather(x)), stddev=self.start_std,
                                    seed=self.seed_generator)
        return x + local_rows(noise, tf.shape(x)[0])

    def _start_in_box(self):
        return not self.random_start or self.start_std == 0

    def keyed_start(self, x, indices, restart):
        """:meth:`start` for evaluation, the noise of row ``i`` drawn from (seed,
        ``indices[i]``, ``restart``) only."""
        if self._start_in_box():
            return x
        keys = keyed_random.example_keys(self.seed, f"{self.stream}/start", indices, restart)
        return x + self.start_std * keyed_random.normal(keys, tf.shape(x)[1:])

    def __call__(self, model, x, target=None):
        x = _training_input(x)
        # Projected once more: with steps=0 the unclipped start would come back.
        return tf.stop_gradient(self.project(super().__call__(model, x, target), x))

    def get_config(self):
        return {**super().get_config(), "attack": self.name, "start_std": self.start_std}
