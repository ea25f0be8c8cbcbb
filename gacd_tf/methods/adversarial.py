"""Madry PGD adversarial training, with TRADES as an option."""

import tensorflow as tf

from gacd_tf.attacks import PGD, GaussianStartPGD, KLDivergence
from gacd_tf.errors import ConfigError
from gacd_tf.methods.common import per_example_ce, unpack_batch
from gacd_tf.methods.robust_trainer import RobustTrainer, accuracy

TRADES_STARTS = ("gaussian", "attack")


class AdversarialTrainer(RobustTrainer):
    """Trains ``model`` on adversarial examples made inside ``train_step``.

    Madry (default): ``loss = CE(model(x_adv), y)`` with ``x_adv`` = PGD on the
    cross-entropy. TRADES (``trades_beta`` set): ``loss = CE(model(x), y) +
    beta * KL(softmax(model(x)) || softmax(model(x_adv)))`` with ``x_adv`` = PGD
    on that KL. Both add a coupled L2 term (``weight_decay``, PyTorch-style).
    Also used for adversarial fine-tuning (AFT) of distilled students.

    TRADES follows its official code (yaodongyu/TRADES ``trades.py``): the
    inner attack starts from ``x + 0.001 N(0, 1)``, not clipped (:31), with
    ``attack``'s radius, step and step count (``trades_start="attack"``
    keeps ``attack``'s own start instead, for PGD the clipped uniform point
    of the ball); the update runs the network in training mode on ``x``,
    then ``x_adv``, then ``x`` again for the KL's target (:79-82), so the
    batch-norm running statistics move three times per step, as there.

    The attack sees the network in inference mode (the PyTorch codes:
    TRADES ``trades.py:28``, AdaAD ``AT_helper.py`` ``Madry_PGD``).
    ``attack_training_mode=True`` runs it as Madry et al.'s TensorFlow code
    does (MadryLab/cifar10_challenge: ``train.py:41,57`` build the attack on
    the training graph, whose batch norm ``model.py:100-110`` uses batch
    statistics and, with ``updates_collections=None``, moves the running
    statistics at every attack step); ``benchmarks/torch_parity.py`` compares
    that mode with a re-derivation of Madry's step.

    Batches are ``(image, label, index)`` (the index is ignored here). The
    progress bar and TensorBoard show ``loss``, ``adv_accuracy`` (on the
    training adversarial examples) and, for TRADES, ``nat_accuracy``;
    validation reports natural and adversarial accuracy with ``eval_attack``.

    Args:
        model: a Keras model mapping [0,1] images to logits (the zoo's models).
        attack: the training attack (default PGD-10, eps 8/255, step 2/255).
        trades_beta: ``None`` for Madry, or the TRADES beta (6 in the paper).
        weight_decay: coupled L2 coefficient (5e-4).
        eval_attack: attack for ``test_step`` (default: ``attack``).
        trades_start: TRADES' attack start, "gaussian" (the official
            ``x + 0.001 N(0, 1)``) or "attack" (``attack``'s own start).
        attack_training_mode: make the training attack with the network in
            training mode (Madry's TensorFlow code; above).
        **kwargs: passed to ``keras.Model``.

    Raises:
        ConfigError: a negative ``trades_beta`` or an unknown ``trades_start``.

    Example:
    >>> trainer = AdversarialTrainer(build_model("resnet20"))  # doctest: +SKIP
    >>> trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    >>> trainer.fit(train_ds, epochs=1)

    Reference:
        Madry et al., ICLR 2018 (code MadryLab/cifar10_challenge); Zhang et
        al., "Theoretically Principled Trade-off between Robustness and
        Accuracy" (TRADES), ICML 2019 (code yaodongyu/TRADES).
    """

    def __init__(self, model, attack=None, trades_beta=None, weight_decay=5e-4,
                 eval_attack=None, trades_start="gaussian", attack_training_mode=False,
                 **kwargs):
        if trades_beta is not None and trades_beta < 0:
            raise ConfigError(f"trades_beta must be >= 0, got {trades_beta}")
        if trades_start not in TRADES_STARTS:
            raise ConfigError(f"trades_start must be one of {', '.join(TRADES_STARTS)}, "
                              f"got {trades_start!r}")
        attack = attack if attack is not None else PGD(steps=10)
        names = ["loss", "adv_accuracy"] + (["nat_accuracy"] if trades_beta is not None else [])
        # Validation always measures robustness to the CE attack.
        super().__init__(model, names, weight_decay=weight_decay,
                         eval_attack=eval_attack if eval_attack is not None else attack, **kwargs)
        self.trades_beta = trades_beta
        self.trades_start = trades_start
        self.attack_training_mode = bool(attack_training_mode)
        self.attack = attack
        if trades_beta is not None:
            # TRADES ascends KL(p_clean || p_adv) with the same ball and steps.
            options = dict(eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
                           norm=attack.norm, random_start=attack.random_start,
                           objective=KLDivergence(), seed=attack.seed)
            if trades_start == "gaussian":
                self.attack = GaussianStartPGD(start_std=0.001, **options)
            else:
                self.attack = type(attack)(**options)

    def _attacked_model(self, x, training=False):
        """The network as Madry's attack sees it: in training mode."""
        del training
        return self.model(x, training=True)

    def train_step(self, data):
        x, y, _ = unpack_batch(data)
        attacked = self._attacked_model if self.attack_training_mode else self.model
        if self.trades_beta is None:
            x_adv = self.attack(attacked, x, y)
        else:
            p_clean = tf.stop_gradient(tf.nn.softmax(attacked(x, training=False)))
            x_adv = self.attack(attacked, x, p_clean)

        weights = self.model.trainable_weights
        with tf.GradientTape() as tape:
            if self.trades_beta is None:
                logits_adv = self.model(x_adv, training=True)
                loss = tf.reduce_mean(per_example_ce(y, logits_adv))
            else:
                # The official order of training-mode passes (trades.py:79-82).
                logits_nat = self.model(x, training=True)
                logits_adv = self.model(x_adv, training=True)
                target = tf.nn.softmax(self.model(x, training=True))
                kl = KLDivergence()({"logits": logits_adv}, target)
                loss = (tf.reduce_mean(per_example_ce(y, logits_nat))
                        + self.trades_beta * tf.reduce_mean(kl))
        self.apply_update(tape, loss, weights)

        values = {"loss": loss, "adv_accuracy": accuracy(y, logits_adv)}
        if self.trades_beta is not None:
            values["nat_accuracy"] = accuracy(y, logits_nat)
        return self.report(**values)
