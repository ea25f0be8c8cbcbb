"""Madry PGD adversarial training, with TRADES as an option."""

import tensorflow as tf

from gacd_tf.attacks import PGD, KLDivergence
from gacd_tf.errors import ConfigError
from gacd_tf.methods.common import per_example_ce, unpack_batch
from gacd_tf.methods.robust_trainer import RobustTrainer, accuracy


class AdversarialTrainer(RobustTrainer):
    """Trains ``model`` on adversarial examples made inside ``train_step``.

    Madry (default): ``loss = CE(model(x_adv), y)`` with ``x_adv`` = PGD on the
    cross-entropy. TRADES (``trades_beta`` set): ``loss = CE(model(x), y) +
    beta * KL(softmax(model(x)) || softmax(model(x_adv)))`` with ``x_adv`` = PGD
    on that KL. Both add a coupled L2 term (``weight_decay``, PyTorch-style).
    Also used for adversarial fine-tuning (AFT) of distilled students.

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
        **kwargs: passed to ``keras.Model``.

    Example:
    >>> trainer = AdversarialTrainer(build_model("resnet20"))  # doctest: +SKIP
    >>> trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    >>> trainer.fit(train_ds, epochs=1)

    Reference:
        Madry et al., ICLR 2018; Zhang et al., "Theoretically Principled
        Trade-off between Robustness and Accuracy" (TRADES), ICML 2019.
    """

    def __init__(self, model, attack=None, trades_beta=None, weight_decay=5e-4,
                 eval_attack=None, **kwargs):
        if trades_beta is not None and trades_beta < 0:
            raise ConfigError(f"trades_beta must be >= 0, got {trades_beta}")
        attack = attack if attack is not None else PGD(steps=10)
        names = ["loss", "adv_accuracy"] + (["nat_accuracy"] if trades_beta is not None else [])
        # Validation always measures robustness to the CE attack.
        super().__init__(model, names, weight_decay=weight_decay,
                         eval_attack=eval_attack if eval_attack is not None else attack, **kwargs)
        self.trades_beta = trades_beta
        self.attack = attack
        if trades_beta is not None:
            # TRADES ascends KL(p_clean || p_adv) with the same ball and steps.
            self.attack = type(attack)(
                eps=attack.eps, step_size=attack.step_size, steps=attack.steps, norm=attack.norm,
                random_start=attack.random_start, objective=KLDivergence(), seed=attack.seed,
            )

    def train_step(self, data):
        x, y, _ = unpack_batch(data)
        if self.trades_beta is None:
            x_adv = self.attack(self.model, x, y)
        else:
            p_clean = tf.stop_gradient(tf.nn.softmax(self.model(x, training=False)))
            x_adv = self.attack(self.model, x, p_clean)

        weights = self.model.trainable_weights
        with tf.GradientTape() as tape:
            logits_adv = self.model(x_adv, training=True)
            if self.trades_beta is None:
                loss = tf.reduce_mean(per_example_ce(y, logits_adv))
            else:
                logits_nat = self.model(x, training=True)
                kl = KLDivergence()({"logits": logits_adv}, tf.nn.softmax(logits_nat))
                loss = (tf.reduce_mean(per_example_ce(y, logits_nat))
                        + self.trades_beta * tf.reduce_mean(kl))
        self.apply_update(tape, loss, weights)

        values = {"loss": loss, "adv_accuracy": accuracy(y, logits_adv)}
        if self.trades_beta is not None:
            values["nat_accuracy"] = accuracy(y, logits_nat)
        return self.report(**values)
