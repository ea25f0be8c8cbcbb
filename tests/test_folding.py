"""fold_batch_norm: the model's outputs and input gradients, with its batch norms folded.

The reference is the model itself (its own layers, inference mode), with
random batch-norm statistics and affine parameters so a wrong fold (a
missing scale, the mean on the wrong side) shows."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gacd_tf.models import build_model
from gacd_tf.models.folding import FoldedModel, fold_batch_norm


def randomise_batch_norms(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.5, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, c).astype("float32"))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.5, c).astype("float32"))
    return model


def images(n=6, size=32, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype("float32")


def logits_and_gradient(model, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=False)
        loss = tf.reduce_sum(logits * tf.range(1.0, logits.shape[-1] + 1.0))
    return logits.numpy(), tape.gradient(loss, x).numpy()


@pytest.mark.parametrize("arch", ["resnet8", "resnet20"])
def test_a_zoo_resnet_folds_every_conv_batch_norm_pair_and_keeps_its_outputs(arch):
    keras.utils.set_random_seed(0)
    model = randomise_batch_norms(build_model(arch, num_classes=10))
    view = fold_batch_norm(model)
    assert isinstance(view, FoldedModel)
    pairs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
             and any(isinstance(node.operation, keras.layers.BatchNormalization)
                     for node in layer._outbound_nodes)]
    assert pairs and sorted(view.folded) == sorted(pairs)
    x = images()
    want_logits, want_grad = logits_and_gradient(model, x)
    got_logits, got_grad = logits_and_gradient(view, x)
    scale = np.abs(want_logits).max()
    np.testing.assert_allclose(got_logits, want_logits, atol=1e-5 * scale)
    np.testing.assert_allclose(got_grad, want_grad, atol=1e-5 * np.abs(want_grad).max())


def test_the_view_reads_the_live_weights():
    """A change of the model's weights after the view was made shows in the view."""
    model = randomise_batch_norms(build_model("resnet8", num_classes=10))
    view = fold_batch_norm(model)
    call = tf.function(lambda x: view(x, training=False))
    x = images()
    call(x)
    randomise_batch_norms(model, seed=7)
    np.testing.assert_allclose(call(x).numpy(), model(x, training=False).numpy(), atol=1e-4)


def sequential(extra_use=False):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.ZeroPadding2D(1)(inputs)
    conv = keras.layers.Conv2D(4, 3, strides=2, use_bias=False, name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(conv)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if extra_use:  # the convolution's output is also read elsewhere: no fold
        x = keras.layers.Concatenate()([x, keras.layers.GlobalAveragePooling2D()(conv)])
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def test_padding_and_batch_norm_fold_into_one_strided_convolution():
    model = randomise_batch_norms(sequential())
    view = fold_batch_norm(model)
    assert isinstance(view, FoldedModel) and view.folded == ["conv"]
    x = images(5, size=8)
    np.testing.assert_allclose(view(x, training=False).numpy(),
                               model(x, training=False).numpy(), atol=1e-5)


def test_a_keras_sequential_model_folds():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, padding="same"),
                              keras.layers.BatchNormalization(), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    randomise_batch_norms(model)
    view = fold_batch_norm(model)
    assert isinstance(view, FoldedModel) and len(view.folded) == 1
    x = images(5, size=8)
    np.testing.assert_allclose(view(x, training=False).numpy(),
                               model(x, training=False).numpy(), atol=1e-5)


def test_a_convolution_read_elsewhere_is_not_folded_and_other_models_pass_through():
    model = randomise_batch_norms(sequential(extra_use=True))
    view = fold_batch_norm(model)
    # The padding still folds into the convolution; the batch norm does not.
    assert isinstance(view, FoldedModel) and view.folded == []
    x = images(5, size=8)
    np.testing.assert_allclose(view(x, training=False).numpy(),
                               model(x, training=False).numpy(), atol=1e-5)

    def plain(x, training=False):
        return x

    assert fold_batch_norm(plain) is plain
    assert fold_batch_norm(view) is view
