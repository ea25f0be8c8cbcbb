"""A loaded SavedModel seen as a gacd_tf classifier ``model(x, training=False)``."""

import tensorflow as tf

from gacd_tf.errors import ModelError


class ServedModel:
    """Callable images -> logits around a SavedModel loaded with ``tf.saved_model.load``.

    Gradients flow through it (PGD can attack it), so robustness can be
    measured on exactly the artefact that is deployed. It calls the
    SavedModel's ``logits`` function when the export has one (gacd-export
    writes it), otherwise the ``logits`` output of ``serving_default``. The
    input shape and class count come from the ``serving_default`` signature,
    for :func:`gacd_tf.models.io.check_model_fits`.

    Args:
        loaded: the object ``tf.saved_model.load`` returned.
        path: the version folder it came from (for messages).

    Attributes:
        input_shape: ``(None, H, W, 3)``.
        output_shape: ``(None, C)``.
        name: the version folder.

    Raises:
        ModelError: no ``serving_default`` signature with an ``images`` input
            and a ``logits`` output.

    Example:
    >>> model = ServedModel(tf.saved_model.load("exports/resnet8/1"), "exports/resnet8/1")  # doctest: +SKIP
    >>> logits = model(images, training=False)  # doctest: +SKIP
    """

    def __init__(self, loaded, path):
        self.loaded = loaded
        self.path = self.name = str(path)
        signature = loaded.signatures.get("serving_default")
        if signature is None:
            raise ModelError(f"SavedModel {path} has no serving_default signature "
                             f"(it has {sorted(loaded.signatures)}); export it with gacd-export")
        inputs = signature.structured_input_signature[1]
        outputs = signature.structured_outputs
        if set(inputs) != {"images"} or "logits" not in outputs:
            raise ModelError(
                f"the serving_default signature of SavedModel {path} maps {sorted(inputs)} to "
                f"{sorted(outputs)}; gacd_tf needs input 'images' and output 'logits' "
                "(export it with gacd-export)")
        spec = inputs["images"]
        if spec.dtype != tf.float32 or spec.shape.rank != 4:
            raise ModelError(f"SavedModel {path} takes images {spec.dtype.name} "
                             f"{spec.shape}; gacd_tf needs float32 [batch, H, W, 3]")
        self.signature = signature
        self.input_shape = tuple(spec.shape.as_list())
        self.output_shape = tuple(outputs["logits"].shape.as_list())
        function = getattr(loaded, "logits", None)
        self._logits = function if callable(function) else None

    def __call__(self, x, training=False):
        """Logits ``[B, C]`` of float32 images ``x`` ``[B, H, W, 3]`` in [0, 1]."""
        if training:
            raise ModelError(f"SavedModel {self.path} is an inference graph; it cannot run "
                             "with training=True (fine-tune the .keras model instead)")
        x = tf.convert_to_tensor(x, tf.float32)
        if self._logits is not None:
            return self._logits(x)
        return self.signature(images=x)["logits"]
