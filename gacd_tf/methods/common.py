"""Pieces shared by every trainer's ``train_step``."""

import keras
import tensorflow as tf

from gacd_tf.losses.distillation_kl import as_float32


def unpack_batch(data):
    """``(images, labels, indices)`` from a batch; indices may be absent (None)."""
    if isinstance(data, dict):
        return data["image"], data["label"], data.get("index")
    if len(data) == 3:
        return data
    if len(data) == 2:
        return data[0], data[1], None
    raise ValueError(f"expected batches of (image, label[, index]), got {len(data)} items")


def l2_penalty(weights, weight_decay):
    """PyTorch-style coupled L2: ``weight_decay / 2 * sum ||w||^2`` over ``weights``.

    Its gradient adds ``weight_decay * w`` to each weight's gradient, exactly
    what PyTorch's SGD ``weight_decay`` does (ARD / RepDistiller setting). Keras'
    own ``weight_decay`` is decoupled and scaled by the learning rate, so we
    use this explicit term instead.
    """
    if not weight_decay:
        return tf.constant(0.0, weights[0].dtype if weights else tf.float32)
    return 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(w)) for w in weights])


def per_example_ce(labels, logits):
    """Cross-entropy per example, in float32 for float16/bfloat16 logits (float64 stays)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32),
                                                          as_float32(logits))


class MeanTrackers:
    """A named set of ``keras.metrics.Mean`` trackers listed in a model's ``metrics``."""

    def __init__(self, names):
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    def update(self, **values):
        for name, value in values.items():
            self.trackers[name].update_state(value)

    def result(self):
        return {name: t.result() for name, t in self.trackers.items()}

    def __iter__(self):
        return iter(self.trackers.values())
