"""Tiny functional models with the zoo's interface (a "features" layer, logits out)."""

import keras


def tiny(seed, name=None, classes=3, width=4, batch_norm=True):
    """8x8x3 images -> conv -> [synchronized BN] -> ReLU -> "features" -> logits."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3), name="images")
    h = keras.layers.Conv2D(width, 3)(inputs)
    if batch_norm:
        h = keras.layers.BatchNormalization(synchronized=True)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D(name="features")(h)
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(h), name=name)
