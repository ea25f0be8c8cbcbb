"""The base of every trainer: one network trained by a custom ``train_step``."""

import keras
import tensorflow as tf

from gacd_tf.attacks import PGD
from gacd_tf.training.distribute import all_gather, num_replicas
from gacd_tf.losses.distillation_kl import as_float32
from gacd_tf.methods.common import MeanTrackers, l2_penalty, per_example_ce, unpack_batch


def accuracy(labels, logits):
    """Per-example 0/1 correctness of ``argmax(logits)``."""
    predicted = tf.argmax(logits, -1, output_type=tf.int32)
    return tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32)


class RobustTrainer(keras.Model):
    """Shared machinery of the trainers (adversarial training and distillers).

    Subclasses write ``train_step``; this class gives them the network
    ``self.model`` (what ``fit`` trains and what gets saved), the gradient
    update with the coupled L2 term (:meth:`apply_update`), loss trackers
    listed in ``metrics``, and a ``test_step`` reporting natural and
    adversarial accuracy under ``eval_attack`` (PGD on the cross-entropy).

    Args:
        model: the network being trained, [0,1] images -> logits.
        train_metrics: names of the trackers ``train_step`` updates.
        weight_decay: coupled L2 coefficient (PyTorch SGD ``weight_decay``).
        eval_attack: attack of ``test_step`` (default PGD-10, eps 8/255).
        **kwargs: passed to ``keras.Model``.
    """

    def __init__(self, model, train_metrics, weight_decay=5e-4, eval_attack=None, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.weight_decay = weight_decay
        self.eval_attack = eval_attack if eval_attack is not None else PGD(steps=10)
        self._train_trackers = MeanTrackers(train_metrics)
        self._test_trackers = MeanTrackers(["loss", "nat_accuracy", "adv_accuracy"])
        # Every sub-network arrives built (and subclasses build their own parts
        # in __init__), so the trainer can save/load weights before any call.
        self.built = True

    def seed_generators(self):
        """The parts whose random generators are checkpointed, by name.

        The base declares its attacks (``attack`` where a subclass has one,
        and ``eval_attack``); a subclass with other random parts (a negative
        sampler, ...) extends the dict. See
        :func:`gacd_tf.training.training_checkpoint.seed_generators_of`.
        """
        return {"attack": getattr(self, "attack", None), "eval_attack": self.eval_attack}

    @property
    def metrics(self):
        return list(self._train_trackers) + list(self._test_trackers)

    def call(self, x, training=False):
        return self.model(x, training=training)

    def apply_update(self, tape, loss, weights):
        """Adds the coupled L2 term on ``weights``, then one optimizer step.

        ``tape`` must have recorded ``loss``; ``weights`` are all the
        variables to train (the network's, plus e.g. embedding heads, which
        are decayed too, as in RepDistiller). ``loss`` is a mean over this
        replica's examples; under ``tf.distribute`` the optimizer *sums* the
        replicas' gradients, so the loss is divided by the replica count:
        N replicas with global batch B step exactly like one device with B.
        """
        with tape:
            # float32 (float64 when the network computes in float64).
            total = as_float32(loss) + l2_penalty(weights, self.weight_decay)
            total = total / num_replicas()
            # float16 training: the optimizer is a LossScaleOptimizer, which
            # scales the loss here and unscales (or skips) in apply().
            scaled = self.optimizer.scale_loss(total)
        grads = tape.gradient(scaled, weights)
        # A non-finite gradient can leave the loss finite (ReLU maps NaN to 0
        # on oneDNN) while it poisons the weights: report() then logs the
        # step's loss as NaN, so the checkpoint callback stops the run.
        # Combined over replicas, so every replica reports the same verdict.
        # (Under loss scaling, overflowing gradients are the optimizer's
        # business: it skips the step and lowers the scale.)
        loss_scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        checks = [] if loss_scaled else [tf.reduce_all(tf.math.is_finite(g))
                                         for g in grads if g is not None]
        finite = tf.reduce_all(tf.stack(checks + [tf.math.is_finite(total)]))
        # (As int32: collective all-gathers take no booleans.)
        finite = all_gather(tf.reshape(tf.cast(finite, tf.int32), [1]))
        self._update_finite = tf.equal(tf.reduce_min(finite), 1)
        self.optimizer.apply(grads, weights)

    def report(self, **values):
        """Updates the training trackers and returns their results (train_step's return).

        The ``loss`` of a step whose update had a NaN/Inf loss or gradient
        is logged as NaN.
        """
        finite = getattr(self, "_update_finite", None)
        if finite is not None and "loss" in values:
            loss = as_float32(values["loss"])
            values["loss"] = tf.where(finite, loss, tf.constant(float("nan"), loss.dtype))
        self._train_trackers.update(**values)
        return self._train_trackers.result()

    def test_step(self, data):
        x, y, _ = unpack_batch(data)
        logits = self.model(x, training=False)
        x_adv = self.eval_attack(self.model, x, y)
        self._test_trackers.update(
            loss=tf.reduce_mean(per_example_ce(y, logits)),
            nat_accuracy=accuracy(y, logits),
            adv_accuracy=accuracy(y, self.model(x_adv, training=False)),
        )
        return self._test_trackers.result()
