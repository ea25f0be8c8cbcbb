"""Targeted Auto-PGD on the targeted DLR loss: AutoAttack's "apgd-t"."""

import tensorflow as tf

from gacd_tf.attacks.apgd import APGD
from gacd_tf.attacks.arguments import check_whole
from gacd_tf.attacks.dlr import targeted_dlr_loss
from gacd_tf.attacks.registry import ATTACKS
from gacd_tf.errors import ConfigError


@ATTACKS.register("apgd-t")
class APGDTargeted(APGD):
    """APGD on the targeted DLR loss, one target class after another.

    The targets are the classes of the 2nd, 3rd, ... ``(n_target_classes +
    1)``-th largest clean logits (at most ``num_classes - 1`` of them); for
    each target ``n_restarts`` APGD runs ascend
    :func:`~gacd_tf.attacks.dlr.targeted_dlr_loss`, in the reference's order
    (targets outer, restarts inner). Counting as :class:`APGD`: a point is
    broken by any misclassified iterate of any run (not only one classified
    as the target).

    Args:
        eps, norm, seed, n_iter, n_restarts, rho, eot_iter: as :class:`APGD`.
        n_target_classes: how many target classes (AutoAttack: 9 for
            CIFAR-10); the model needs at least 4 classes.

    Example:
    >>> attack = APGDTargeted(eps=8 / 255, n_target_classes=9, seed=0)
    >>> x_adv, robust = attack.perturb(model, images, labels)  # doctest: +SKIP

    Reference:
        Croce and Hein, ICML 2020, section 4; fra31/auto-attack,
        autoattack/autopgd_base.py (APGDAttack_targeted).
    """

    def __init__(self, eps=8 / 255, norm="linf", seed=None, n_target_classes=9, n_iter=100,
                 n_restarts=1, rho=0.75, eot_iter=1):
        check_whole("apgd-t", n_target_classes=n_target_classes)
        self.n_target_classes = int(n_target_classes)
        super().__init__(eps=eps, norm=norm, seed=seed, loss="dlr-targeted", n_iter=n_iter,
                         n_restarts=n_restarts, rho=rho, eot_iter=eot_iter)

    def _registry_name(self, loss):
        return "apgd-t"

    def _loss(self, logits, labels, targets):
        return targeted_dlr_loss(logits, labels, targets)

    def _n_targets(self, clean_logits):
        num_classes = clean_logits.shape[-1]
        if num_classes is None:
            raise ConfigError("apgd-t needs the model's number of classes to be known when "
                              "the attack is traced; give the model a static logits shape")
        return min(self.n_target_classes, num_classes - 1)

    def _num_runs(self, clean_logits):
        return self._n_targets(clean_logits) * self.n_restarts

    def _run_targets(self, clean_logits):
        k = self._n_targets(clean_logits) + 1
        ranked = tf.math.top_k(clean_logits, k=k).indices[:, 1:]  # 2nd..k-th largest

        def targets_of(run):
            return tf.gather(ranked, run // self.n_restarts, axis=1)

        return targets_of

    def get_config(self):
        config = super().get_config()
        del config["loss"]
        config["n_target_classes"] = self.n_target_classes
        return config
