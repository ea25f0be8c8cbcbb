"""The ``tf.Module`` whose functions become the SavedModel's signatures."""

import numpy as np
import tensorflow as tf

from gacd_tf.errors import ModelError
from gacd_tf.models.interface import features_and_logits


def _image_size(model):
    shape = tuple(model.input_shape[1:]) if hasattr(model, "input_shape") else ()
    if len(shape) != 3 or shape[-1] != 3 or None in shape:
        raise ModelError(
            f"model {model.name!r} takes inputs of shape {shape}; exporting needs a fixed "
            "image size [H, W, 3] (build it with input_shape=(H, W, 3))")
    return int(shape[0]), int(shape[1])

_UINT8_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(255)


class _Untracked:
    """A plain holder, so that tf.Module does not track the Keras model."""

    def __init__(self, network):
        self.network = network


class ServingModule(tf.Module):
    """Wraps a gacd_tf classifier into the functions that are exported.

    All functions run the model in inference mode (``training=False``).
    ``serve``, ``features`` and ``encoded_images`` become the signatures
    ``serving_default``, ``features`` and ``encoded_images``; ``logits``
    (images -> logits) is saved as a plain function for gradient-based
    evaluation of the loaded model. Inputs whose height, width or channel
    count differ from the model's fail with an ``InvalidArgumentError``
    naming the expected shape (an in-graph assertion, so TF Serving's C++
    runtime reports it too: a SavedModel signature does not check shapes by
    itself); a wrong dtype is refused by the signature (``expected to be a
    float tensor``).

    Args:
        model: a Keras classifier following the gacd_tf interface (images
            ``[B, H, W, 3]`` in [0, 1] -> logits, a ``"features"`` layer),
            with a fixed ``H`` and ``W``.

    Example:
    >>> module = ServingModule(build_model("resnet8"))  # doctest: +SKIP
    >>> module.serve(tf.zeros([2, 32, 32, 3]))["class_ids"]  # doctest: +SKIP
    """

    def __init__(self, model):
        super().__init__(name="gacd_serving")
        self.height, self.width = _image_size(model)
        network = features_and_logits(model)
        # Track the plain tf.Variables, not the Keras model: tracking Keras 3
        # layers saves a second, wrapper copy of every variable, and a TF1-style
        # loader (TF Serving, saved_model_cli run) then restores the wrong copy
        # ("Could not find variable ..."). keras.export.ExportArchive does the same.
        self._holder = _Untracked(network)
        self.model_variables = [v.value for v in network.variables]
        self.num_classes = int(network.outputs[1].shape[-1])
        images = tf.TensorSpec([None, self.height, self.width, 3], tf.float32, name="images")
        encoded = tf.TensorSpec([None], tf.string, name="images")
        self.serve = tf.function(self._serve, input_signature=[images])
        self.features = tf.function(self._features, input_signature=[images])
        self.logits = tf.function(self._logits, input_signature=[images])
        self.encoded_images = tf.function(self._encoded_images, input_signature=[encoded])

    @property
    def network(self):
        """The Keras model images -> ``[features, logits]`` (not saved as such)."""
        return self._holder.network

    def signatures(self):
        """The ``signatures`` argument of ``tf.saved_model.save``."""
        return {
            "serving_default": self.serve.get_concrete_function(),
            "features": self.features.get_concrete_function(),
            "encoded_images": self.encoded_images.get_concrete_function(),
        }

    def _checked(self, images):
        shape = tf.shape(images)
        expected = tf.constant([self.height, self.width, 3], tf.int32)
        padded = tf.concat([shape, tf.zeros([4], tf.int32)], axis=0)[1:4]
        fits = tf.logical_and(tf.equal(tf.size(shape), 4),
                              tf.reduce_all(tf.equal(padded, expected)))
        check = tf.debugging.Assert(
            fits,
            [f"images must be float32 [batch, {self.height}, {self.width}, 3] in [0, 1]; "
             "got shape", shape])
        with tf.control_dependencies([check]):
            return tf.identity(images)

    def _outputs(self, logits):
        return {
            "probabilities": tf.nn.softmax(logits, axis=-1),
            "logits": tf.identity(logits),
            "class_ids": tf.argmax(logits, axis=-1, output_type=tf.int64),
        }

    def _serve(self, images):
        _, logits = self.network(self._checked(images), training=False)
        return self._outputs(logits)

    def _features(self, images):
        features, _ = self.network(self._checked(images), training=False)
        return {"features": features}

    def _logits(self, images):
        _, logits = self.network(self._checked(images), training=False)
        return logits

    def decode(self, encoded):
        """PNG/JPEG/BMP/GIF bytes ``[batch]`` -> float32 ``[batch, H, W, 3]`` in [0, 1].

        Each image is decoded to RGB (``channels=3``; grey is repeated, alpha
        dropped), scaled to [0, 1] (k -> k/255) and, unless it already is H x W, resized
        with bilinear interpolation and antialiasing.
        """

        def one(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            # A table of k/255 computed in NumPy: bitwise equal to uint8 / 255 in
            # NumPy (TF rewrites a division by a constant into a multiplication,
            # which is 1 ulp off for some k).
            image = tf.gather(_UINT8_TO_UNIT, tf.cast(image, tf.int32))
            size = tf.shape(image)[:2]
            same = tf.reduce_all(tf.equal(size, [self.height, self.width]))
            image = tf.cond(
                same,
                lambda: image,
                lambda: tf.image.resize(image, [self.height, self.width], "bilinear",
                                        antialias=True))
            return tf.ensure_shape(image, [self.height, self.width, 3])

        return tf.map_fn(one, encoded,
                         fn_output_signature=tf.TensorSpec([self.height, self.width, 3],
                                                           tf.float32))

    def _encoded_images(self, images):
        _, logits = self.network(self.decode(images), training=False)
        return self._outputs(logits)
